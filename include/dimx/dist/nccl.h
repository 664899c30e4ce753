#pragma once
/// \file
/// Collectives of CUDA tensors through NCCL (library dimx_dist_nccl, target
/// dimx::dimx_dist_nccl; built where CUDA, NCCL and MPI are found).
///
///   dist::init(argc, argv);
///   const Device dev = Device::cuda(dist::world().rank() % gpu::device_count());
///   dist::Communicator comm = dist::with_nccl(dist::world(), dev);
///   comm.all_reduce(x_on_dev);                    // NCCL; CPU tensors still go through MPI
///   dist::DataParallel dp(params_on_dev, comm);   // gradient buckets summed by NCCL
///
/// Each rank drives one GPU. The agreement before each collective (dtype and Dims, see
/// communicator.h) still runs over MPI. Every NCCL call is ordered after the device's queued
/// work (gpu::synchronize), runs on a stream of its own and is waited for against the
/// communicator's timeout; on timeout, or an asynchronous NCCL error, the NCCL communicator is
/// aborted (ncclCommAbort) and the call throws dimx::Error naming the op and the rank.
#include <dimx/dist/communicator.h>

namespace dimx::dist {

/// A communicator over the ranks of `comm` whose collectives on CUDA tensors of `device` go
/// through NCCL, its unique id created by rank 0 and broadcast over MPI (collective: every rank
/// calls it, each with its own device). Throws dimx::Error ("dist::with_nccl: ...") if
/// `device` is not a CUDA device or NCCL fails to start, naming the rank.
Communicator with_nccl(const Communicator& comm, Device device);

}  // namespace dimx::dist

#pragma once
/// \file
/// Umbrella header of dimx_dist (target dimx::dimx_dist): data-parallel training over MPI.
/// - dist/communicator.h: init(), world(), Communicator (all_reduce, broadcast, all_gather,
///   barrier) with agreement checks and timeouts, abort_on_error();
/// - dist/data_parallel.h: DataParallel, gradients averaged in buckets during backward();
/// - dist/shard.h: shard_indices(), each rank's part of a per-epoch permutation.
/// docs/tutorials/12-data-parallel.md walks through examples/data_parallel.cpp.
#include <dimx/dist/communicator.h>
#include <dimx/dist/data_parallel.h>
#include <dimx/dist/shard.h>

#pragma once
// Internal: the MPI communicator behind dist::Communicator, its deadline-bounded waits and the
// agreement check that precedes each collective.
#include <dimx/dist/communicator.h>

// The C API only (not OpenMPI's deprecated C++ bindings).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace dimx::dist {

// The collectives of device tensors through a device library (NCCL: gpu/nccl_transport.cpp).
// Each call works in place on device memory the caller owns alone, is ordered after the
// device's queued work, and returns once the result is there, or throws dimx::Error after
// `timeout` seconds (having aborted the device communicator).
struct DeviceTransport {
  virtual ~DeviceTransport() = default;
  virtual Device device() const = 0;
  virtual void all_reduce(void* data, size_t count, DType dt, ReduceOp op, double timeout) = 0;
  virtual void broadcast(void* data, size_t bytes, int root, double timeout) = 0;
  virtual void all_gather(const void* send, void* recv, size_t bytes, double timeout) = 0;
  // all_reduce takes sum and max; the started form takes mean as well (the sum divided by the
  // ranks, on the device).
  // The all-reduce started without waiting: queued behind the device's work so far, on a
  // queue of its own, so that it runs while the device goes on with later work. `data` must
  // stay allocated and untouched until wait(ticket) returns; wait polls against `timeout` as
  // above and leaves the result ready for the device's later work.
  virtual uint64_t start_all_reduce(void* data, size_t count, DType dt, ReduceOp op) = 0;
  virtual void wait(uint64_t ticket, double timeout) = 0;
};

struct Communicator::Impl {
  // Two duplicates of the group: `control` carries the agreement messages, `data` the
  // collectives, so that a rank in an agreement never matches a rank in a data collective.
  MPI_Comm control = MPI_COMM_NULL, data = MPI_COMM_NULL;
  int rank = 0, size = 1;
  double timeout = 300;
  int tag_ub = 32767;
  uint64_t seq = 0;  // agreements so far: their tag
  bool broken = false;
  std::string broken_why;
  // Buffers of requests abandoned by a failed wait: MPI may still write into them.
  std::vector<std::shared_ptr<void>> abandoned;
  // Collectives of tensors on device->device() go through it; others through MPI.
  std::shared_ptr<DeviceTransport> device;

  // The transport for tensors on `d`, or null.
  DeviceTransport* transport_for(Device d) const { return device && device->device() == d ? device.get() : nullptr; }
  // Runs a transport call; a failure marks the communicator broken and rethrows with prefix(op).
  template <class F>
  void on_device(const std::string& op, F&& f) {
    try {
      f();
    } catch (const Error& e) {
      fail_broken(op, e.what());
    }
  }

  // Duplicates `comm` twice; collective over comm.
  explicit Impl(MPI_Comm comm);
  ~Impl();
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  // "<op>: rank R of N: " (op as given, e.g. "dist::all_reduce").
  std::string prefix(const std::string& op) const;
  // Throws if broken.
  void check_usable(const std::string& op) const;
  // Polls `reqs` until all complete or timeout seconds pass. On timeout: marks the communicator
  // broken, keeps `keep` alive (MPI may still write into it) and throws prefix(op) + what.
  // `progress`, if given, is called on each poll (nothing else waits meanwhile).
  void wait(const std::string& op, std::span<MPI_Request> reqs, std::shared_ptr<void> keep, const std::string& what);
  // Marks broken with `why` and throws prefix(op) + why.
  [[noreturn]] void fail_broken(const std::string& op, const std::string& why);
  // The agreement: every rank passes its description of the call; throws on every rank if
  // one differs or a rank does not answer (see communicator.h).
  void agree(const std::string& op, const std::string& description);
};

// The MPI datatype of a dtype's elements (bool as unsigned char); half dtypes have none.
MPI_Datatype mpi_type(DType dt);
// The order in which a tensor's values are exchanged: its Dims sorted by name, ties in layout order.
Dims exchange_order(const Tensor& x);
// "f32 {batch:4, time:<=9 (dyn, lengths #1a2b3c4d)}" in exchange order.
std::string describe(const Tensor& x);
// A CPU copy of x's values, row-major in `order`, as bytes.
std::shared_ptr<std::vector<char>> host_bytes(const Tensor& x, const Dims& order);
// Deadline polling helper: seconds since an arbitrary epoch (steady clock).
double now_seconds();
// Sleeps a little between polls: nothing for the first polls, then up to 1 ms.
void poll_pause(int64_t polls);

}  // namespace dimx::dist

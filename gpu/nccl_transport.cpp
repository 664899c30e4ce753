// dist::with_nccl: the device transport of a dist::Communicator over NCCL. The unique id goes
// from rank 0 to every rank through the communicator's MPI broadcast; each call waits for the
// device's queued work, runs on a stream of its own and is polled against the timeout; the
// started all-reduce (DataParallel's buckets) waits for that work on the device instead, so
// the device goes on with the backward while it runs.
#include <dimx/dist/nccl.h>
#include <dimx/gpu/runtime.h>

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "dist/comm_impl.h"

namespace dimx::dist {

namespace {

ncclDataType_t nccl_type(DType dt) {
  switch (dt) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    case DType::boolean: return ncclUint8;
    case DType::f16: return ncclFloat16;
    case DType::bf16: return ncclBfloat16;
  }
  return ncclFloat32;
}

class NcclTransport final : public DeviceTransport {
 public:
  NcclTransport(Device dev, int rank, int size, const ncclUniqueId& id) : dev_(dev), rank_(rank) {
    check_cuda("cudaSetDevice", cudaSetDevice(dev.index));
    check_cuda("cudaStreamCreateWithFlags", cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    check_cuda("cudaEventCreateWithFlags", cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    check("ncclCommInitRank", ncclCommInitRank(&comm_, size, id, rank));
  }
  ~NcclTransport() override {
    if (comm_) {
      if (aborted_) ncclCommAbort(comm_);
      else ncclCommDestroy(comm_);
    }
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
    if (ready_) cudaEventDestroy(ready_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  Device device() const override { return dev_; }

  void all_reduce(void* data, size_t count, DType dt, ReduceOp op, double timeout) override {
    run("ncclAllReduce", timeout, [&] {
      return ncclAllReduce(data, data, count, nccl_type(dt), nccl_op(op), comm_, stream_);
    });
  }
  void broadcast(void* data, size_t bytes, int root, double timeout) override {
    run("ncclBroadcast", timeout, [&] { return ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_); });
  }
  void all_gather(const void* send, void* recv, size_t bytes, double timeout) override {
    run("ncclAllGather", timeout, [&] { return ncclAllGather(send, recv, bytes, ncclUint8, comm_, stream_); });
  }

  uint64_t start_all_reduce(void* data, size_t count, DType dt, ReduceOp op) override {
    const char* what = "ncclAllReduce";
    usable(what);
    check_cuda("cudaSetDevice", cudaSetDevice(dev_.index));
    // Behind dimx's queued work (which wrote `data`) without waiting for it on the host.
    cudaStream_t compute = static_cast<cudaStream_t>(gpu::stream(dev_.index));
    check_cuda("cudaEventRecord", cudaEventRecord(ready_, compute));
    check_cuda("cudaStreamWaitEvent", cudaStreamWaitEvent(stream_, ready_, 0));
    check(what, ncclAllReduce(data, data, count, nccl_type(dt), nccl_op(op), comm_, stream_));
    cudaEvent_t done = take_event();
    check_cuda("cudaEventRecord", cudaEventRecord(done, stream_));
    pending_.emplace_back(++tickets_, done);
    return tickets_;
  }

  void wait(uint64_t ticket, double timeout) override {
    const char* what = "ncclAllReduce";
    auto it = pending_.begin();
    while (it != pending_.end() && it->first != ticket) ++it;
    if (it == pending_.end()) throw Error(std::string(what) + ": wait for an unknown ticket " + std::to_string(ticket));
    const cudaEvent_t done = it->second;
    pending_.erase(it);
    free_events_.push_back(done);
    usable(what);
    poll(what, timeout, [&] { return cudaEventQuery(done); });
    // Complete on the host, so dimx's later work on the result is after it.
  }

 private:
  static ncclRedOp_t nccl_op(ReduceOp op) {
    return op == ReduceOp::max ? ncclMax : op == ReduceOp::mean ? ncclAvg : ncclSum;
  }
  void check(const char* what, ncclResult_t r) {
    if (r != ncclSuccess && r != ncclInProgress)
      throw Error(std::string(what) + " failed on rank " + std::to_string(rank_) + ": " + ncclGetErrorString(r));
  }
  static void check_cuda(const char* what, cudaError_t e) {
    if (e != cudaSuccess) throw Error(std::string(what) + " failed: " + cudaGetErrorString(e));
  }
  void usable(const char* what) const {
    if (aborted_) throw Error(std::string(what) + ": the NCCL communicator was aborted by an earlier failure");
  }
  cudaEvent_t take_event() {
    if (!free_events_.empty()) {
      cudaEvent_t e = free_events_.back();
      free_events_.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    check_cuda("cudaEventCreateWithFlags", cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    events_.push_back(e);
    return e;
  }

  template <class F>
  void run(const char* what, double timeout, F&& launch) {
    usable(what);
    gpu::synchronize(dev_.index);  // the operands are written by the device's queued work
    check_cuda("cudaSetDevice", cudaSetDevice(dev_.index));
    check(what, launch());
    poll(what, timeout, [&] { return cudaStreamQuery(stream_); });
  }

  // Polls `query` (cudaSuccess: done) until done; on an asynchronous NCCL error or after
  // `timeout` seconds aborts the communicator and throws, naming the rank.
  template <class Q>
  void poll(const char* what, double timeout, Q&& query) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout);
    for (int64_t polls = 0;; ++polls) {
      const cudaError_t q = query();
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) check_cuda(what, q);
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        abort();
        throw Error(std::string(what) + " failed on rank " + std::to_string(rank_) + ": " + ncclGetErrorString(async));
      }
      if (std::chrono::steady_clock::now() > deadline) {
        abort();
        char t[32];
        std::snprintf(t, sizeof t, "%g", timeout);
        throw Error(std::string(what) + " did not complete within " + t +
                    " s (DIMX_DIST_TIMEOUT): another rank died, hangs or called a different collective");
      }
      if (polls > 64) std::this_thread::sleep_for(std::chrono::microseconds(polls < 2048 ? 50 : 1000));
    }
  }
  void abort() {
    if (!aborted_ && comm_) ncclCommAbort(comm_);
    aborted_ = true;
    comm_ = nullptr;
  }

  Device dev_;
  int rank_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;          // dimx's stream, where an all-reduce was started
  std::vector<cudaEvent_t> events_;      // every completion event made (destroyed at the end)
  std::vector<cudaEvent_t> free_events_;
  std::vector<std::pair<uint64_t, cudaEvent_t>> pending_;  // started, not yet waited for
  uint64_t tickets_ = 0;
  ncclComm_t comm_ = nullptr;
  bool aborted_ = false;
};

}  // namespace

Communicator with_nccl(const Communicator& comm, Device device) {
  const std::string op = "dist::with_nccl";
  if (device.type != Device::Type::cuda) throw Error(op + ": " + device.str() + " is not a CUDA device");
  Communicator::Impl& c = comm.impl();
  c.check_usable(op);
  // A communicator of its own (MPI duplicates), so the NCCL one is tied to it alone.
  Communicator out = comm.duplicate();
  Communicator::Impl& d = out.impl();
  // Rank 0's unique id, as bytes, to every rank over MPI.
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (d.rank == 0) {
    const ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) throw Error(op + ": rank 0: ncclGetUniqueId failed: " + ncclGetErrorString(r));
  }
  Dim bytes(int64_t(sizeof id.internal), "nccl_unique_id");
  std::vector<int32_t> v(sizeof id.internal);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<unsigned char>(id.internal[i]);
  const std::vector<int32_t> got = out.broadcast(Tensor::from_vector<int32_t>({bytes}, v), 0).to_vector<int32_t>();
  for (size_t i = 0; i < got.size(); ++i) id.internal[i] = static_cast<char>(got[i]);
  try {
    d.device = std::make_shared<NcclTransport>(device, d.rank, d.size, id);
  } catch (const Error& e) {
    throw Error(op + ": rank " + std::to_string(d.rank) + " of " + std::to_string(d.size) + " on " + device.str() +
                ": " + e.what());
  }
  return out;
}

}  // namespace dimx::dist

// The MPI communicator's life, its deadline-bounded waits and the host staging of tensors.
#include "comm_impl.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

namespace dimx::dist {

namespace {

double env_timeout() {
  const char* s = std::getenv("DIMX_DIST_TIMEOUT");
  if (s == nullptr || *s == '\0') return 300;
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  if (end == s || *end != '\0' || !(v > 0))
    throw Error(std::string("dist: DIMX_DIST_TIMEOUT must be a positive number of seconds, got '") + s + "'");
  return v;
}

bool mpi_finalized() {
  int f = 0;
  MPI_Finalized(&f);
  return f != 0;
}

}  // namespace

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void poll_pause(int64_t polls) {
  if (polls < 64) return;
  if (polls < 256) {
    std::this_thread::yield();
    return;
  }
  std::this_thread::sleep_for(std::chrono::microseconds(polls < 2048 ? 50 : 1000));
}

Communicator::Impl::Impl(MPI_Comm comm) {
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  timeout = env_timeout();
  MPI_Comm_dup(comm, &control);
  MPI_Comm_dup(comm, &data);
  // A failing MPI call returns its code instead of aborting, so it becomes a dimx::Error.
  MPI_Comm_set_errhandler(control, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(data, MPI_ERRORS_RETURN);
  int* ub = nullptr;
  int flag = 0;
  MPI_Comm_get_attr(control, MPI_TAG_UB, &ub, &flag);
  if (flag && ub) tag_ub = *ub;
}

Communicator::Impl::~Impl() {
  // A broken communicator may have requests in flight: it is left to MPI_Finalize.
  if (broken || mpi_finalized()) return;
  MPI_Comm_free(&control);
  MPI_Comm_free(&data);
}

std::string Communicator::Impl::prefix(const std::string& op) const {
  return op + ": rank " + std::to_string(rank) + " of " + std::to_string(size) + ": ";
}

void Communicator::Impl::check_usable(const std::string& op) const {
  if (broken)
    throw Error(prefix(op) + "the communicator is broken by an earlier failure (" + broken_why +
                "); end the job (dist::abort_on_error) and restart from a checkpoint");
}

void Communicator::Impl::fail_broken(const std::string& op, const std::string& why) {
  broken = true;
  broken_why = why;
  throw Error(prefix(op) + why);
}

void Communicator::Impl::wait(const std::string& op, std::span<MPI_Request> reqs, std::shared_ptr<void> keep,
                              const std::string& what) {
  const double deadline = now_seconds() + timeout;
  for (int64_t polls = 0;; ++polls) {
    int done = 0;
    const int rc = MPI_Testall(int(reqs.size()), reqs.data(), &done, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) {
      char msg[MPI_MAX_ERROR_STRING];
      int len = 0;
      MPI_Error_string(rc, msg, &len);
      if (keep) abandoned.push_back(std::move(keep));
      fail_broken(op, "MPI failed: " + std::string(msg, size_t(len)));
    }
    if (done) return;
    if (now_seconds() > deadline) {
      if (keep) abandoned.push_back(std::move(keep));
      char t[32];
      std::snprintf(t, sizeof t, "%g", timeout);
      fail_broken(op, what + " did not complete within " + t +
                          " s (DIMX_DIST_TIMEOUT): another rank died, hangs or called a different collective");
    }
    poll_pause(polls);
  }
}

MPI_Datatype mpi_type(DType dt) {
  switch (dt) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::boolean: return MPI_UNSIGNED_CHAR;
    default: return MPI_DATATYPE_NULL;
  }
}

Dims exchange_order(const Tensor& x) {
  Dims order = x.dims();
  std::stable_sort(order.begin(), order.end(), [](const Dim& a, const Dim& b) { return a.name() < b.name(); });
  return order;
}

std::shared_ptr<std::vector<char>> host_bytes(const Tensor& x, const Dims& order) {
  Tensor c = x.transpose_to(order).to(Device::cpu());
  auto buf = std::make_shared<std::vector<char>>(size_t(c.numel()) * dtype_size(c.dtype()));
  if (!buf->empty()) std::memcpy(buf->data(), c.data_ptr(), buf->size());
  return buf;
}

}  // namespace dimx::dist

// all_reduce, broadcast, all_gather and barrier on Tensors: agreement first, then one
// non-blocking MPI collective on the host bytes, waited for against the deadline.
#include <dimx/elementwise.h>

#include <climits>

#include "comm_impl.h"

namespace dimx::dist {

namespace {

// Elements per MPI call (MPI counts are int).
constexpr int64_t kChunk = int64_t(1) << 30;

void check_tensor(const std::string& op, const Tensor& x) {
  if (!x.defined()) throw Error(op + ": undefined tensor");
}

// The compute dtype of an exchange: half dtypes go as f32.
DType wire_dtype(DType dt) { return is_half(dt) ? DType::f32 : dt; }

MPI_Op mpi_op(ReduceOp op, DType dt) {
  if (dt == DType::boolean) return MPI_MAX;
  return op == ReduceOp::max ? MPI_MAX : MPI_SUM;
}

Tensor from_bytes(const Dims& dims, DType dt, const std::vector<char>& b) {
  return Tensor::from_raw(dims, dt, b.data(), b.size() / dtype_size(dt));
}

// A new device tensor over `dims` holding x's values (in dims' order), which the caller owns
// alone and may write in place.
Tensor private_copy(const Tensor& x, const Dims& dims, DType dt) {
  Tensor t = Tensor::zeros(dims, dt, x.device());
  t.copy_from(x);
  return t;
}

void* writable(const Tensor& t) { return const_cast<void*>(t.data_ptr()); }

}  // namespace

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::mean: return "mean";
    case ReduceOp::max: return "max";
  }
  return "?";
}

Communicator::Impl& Communicator::impl() const {
  if (!impl_) throw Error("dist::Communicator: empty handle (use dist::world())");
  return *impl_;
}

int Communicator::rank() const { return impl().rank; }
int Communicator::size() const { return impl().size; }
double Communicator::timeout() const { return impl().timeout; }
bool Communicator::broken() const { return impl().broken; }

void Communicator::set_timeout(double seconds) {
  if (!(seconds > 0)) throw Error("dist::Communicator::set_timeout: seconds must be > 0, got " + std::to_string(seconds));
  impl().timeout = seconds;
}

Tensor Communicator::all_reduce(const Tensor& x, ReduceOp op) const {
  const std::string name = "dist::all_reduce";
  check_tensor(name, x);
  Impl& c = impl();
  c.check_usable(name);
  const DType dt = x.dtype();
  if (op == ReduceOp::mean && !is_float_like(dt))
    throw Error(name + ": mean needs a floating tensor, got " + x.str());
  if (dt == DType::boolean && op != ReduceOp::max)
    throw Error(name + ": a bool tensor reduces with max (logical or) only, got " + reduce_op_name(op) + " for " + x.str());
  c.agree(name, std::string("all_reduce(") + reduce_op_name(op) + ") " + describe(x));
  const DType wdt = wire_dtype(dt);
  const Dims order = exchange_order(x);
  if (DeviceTransport* t = c.transport_for(x.device())) {
    // Device libraries reduce half dtypes themselves; the mean divides afterwards.
    Tensor r = private_copy(x, order, dt);
    c.on_device(name, [&] { t->all_reduce(writable(r), size_t(r.numel()), dt, op == ReduceOp::max ? op : ReduceOp::sum, c.timeout); });
    return op == ReduceOp::mean ? (r * (1.0 / double(c.size))).astype(dt) : r;
  }
  auto buf = host_bytes(x.astype(wdt), order);
  const int64_t n = int64_t(buf->size() / dtype_size(wdt));
  std::vector<MPI_Request> reqs;
  for (int64_t i = 0; i < n; i += kChunk) {
    reqs.emplace_back();
    MPI_Iallreduce(MPI_IN_PLACE, buf->data() + size_t(i) * dtype_size(wdt), int(std::min(kChunk, n - i)), mpi_type(wdt),
                   mpi_op(op, wdt), c.data, &reqs.back());
  }
  c.wait(name, reqs, buf, "all_reduce");
  Tensor r = from_bytes(order, wdt, *buf);
  if (op == ReduceOp::mean) r = r * (1.0 / double(c.size));
  return r.astype(dt).to(x.device());
}

Tensor Communicator::broadcast(const Tensor& x, int root) const {
  const std::string name = "dist::broadcast";
  check_tensor(name, x);
  Impl& c = impl();
  c.check_usable(name);
  if (root < 0 || root >= c.size)
    throw Error(name + ": root " + std::to_string(root) + " is not a rank of this communicator (size " +
                std::to_string(c.size) + ")");
  c.agree(name, "broadcast(root " + std::to_string(root) + ") " + describe(x));
  const Dims order = exchange_order(x);
  if (DeviceTransport* t = c.transport_for(x.device())) {
    Tensor r = private_copy(x, order, x.dtype());
    c.on_device(name, [&] { t->broadcast(writable(r), size_t(r.numel()) * dtype_size(r.dtype()), root, c.timeout); });
    return r;
  }
  auto buf = host_bytes(x, order);
  std::vector<MPI_Request> reqs;
  // As bytes: every dtype travels unchanged.
  const int64_t n = int64_t(buf->size());
  for (int64_t i = 0; i < n; i += kChunk) {
    reqs.emplace_back();
    MPI_Ibcast(buf->data() + i, int(std::min(kChunk, n - i)), MPI_BYTE, root, c.data, &reqs.back());
  }
  c.wait(name, reqs, buf, "broadcast");
  return from_bytes(order, x.dtype(), *buf).to(x.device());
}

Tensor Communicator::all_gather(const Tensor& x, const Dim& ranks) const {
  const std::string name = "dist::all_gather";
  check_tensor(name, x);
  Impl& c = impl();
  c.check_usable(name);
  if (!ranks.is_static() || ranks.size() != c.size)
    throw Error(name + ": the ranks Dim must be static of size " + std::to_string(c.size) + " (the communicator's size), got " +
                ranks.str());
  if (x.has_dim(ranks)) throw Error(name + ": " + x.str() + " already has the ranks Dim " + ranks.str());
  c.agree(name, "all_gather " + describe(x));
  const Dims order = exchange_order(x);
  Dims out{ranks};
  out.insert(out.end(), order.begin(), order.end());
  if (DeviceTransport* t = c.transport_for(x.device())) {
    Tensor s = private_copy(x, order, x.dtype());
    Tensor r = Tensor::zeros(out, x.dtype(), x.device());
    c.on_device(name, [&] { t->all_gather(s.data_ptr(), writable(r), size_t(s.numel()) * dtype_size(s.dtype()), c.timeout); });
    return r;
  }
  auto send = host_bytes(x, order);
  const int64_t n = int64_t(send->size());
  if (n > INT_MAX) throw Error(name + ": " + x.str() + " has more than 2^31 bytes; gather it in parts");
  auto both = std::make_shared<std::pair<std::shared_ptr<std::vector<char>>, std::vector<char>>>(
      send, std::vector<char>(size_t(n) * size_t(c.size)));
  MPI_Request req;
  MPI_Iallgather(send->data(), int(n), MPI_BYTE, both->second.data(), int(n), MPI_BYTE, c.data, &req);
  c.wait(name, std::span<MPI_Request>(&req, 1), both, "all_gather");
  return from_bytes(out, x.dtype(), both->second).to(x.device());
}

void Communicator::barrier() const { impl().agree("dist::barrier", "barrier"); }

Communicator Communicator::duplicate() const {
  Impl& c = impl();
  c.agree("dist::Communicator::duplicate", "duplicate");
  auto d = std::make_shared<Impl>(c.data);
  d->timeout = c.timeout;
  return Communicator(std::move(d));
}

}  // namespace dimx::dist

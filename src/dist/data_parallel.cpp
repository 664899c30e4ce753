// DataParallel: parameters checked and broadcast at construction; gradients packed into
// buckets as backward() finishes them, each bucket's sum over ranks started without waiting,
// everything waited for and averaged at the end of backward().
#include <dimx/dist/data_parallel.h>
#include <dimx/elementwise.h>
#include <dimx/shape.h>

#include <cstring>
#include <optional>

#include "comm_impl.h"

namespace dimx::dist {

namespace {

constexpr const char* kName = "DataParallel";

DType wire_dtype(DType dt) { return is_half(dt) ? DType::f32 : dt; }

struct Param {
  std::string name;
  Tensor* p;
  size_t bucket;
  int64_t offset;  // in elements of the bucket's wire dtype
  int64_t numel;
  Dim flat;  // its elements in a row, inside the bucket of a device transport
};

// x (over the parameter's Dims) as one row over pr.flat, and back.
Tensor to_row(const Tensor& x, const Param& pr) {
  const Dims& d = pr.p->dims();
  if (d.empty()) return expand_dim(x, pr.flat);
  if (d.size() == 1) return replace_dim(x, d[0], pr.flat).first;
  return merge_dims(x, d, pr.flat).first;
}
Tensor from_row(const Tensor& row, const Param& pr) {
  const Dims& d = pr.p->dims();
  if (d.empty()) return squeeze(row, pr.flat);
  if (d.size() == 1) return replace_dim(row, pr.flat, d[0]).first;
  return split_dims(row, pr.flat, d);
}

struct Bucket {
  std::vector<size_t> params;
  DType wire;
  Device device;
  int64_t grad_numel = 0;  // the gradients' elements
  size_t ready = 0;
  bool launched = false;
  // Host bytes: the gradients (unless on a device transport), then one "has a gradient" count
  // per parameter.
  std::shared_ptr<std::vector<char>> buf;
  int64_t flags_at = 0;  // where the counts start in buf, in elements
  // On a device transport: the gradients in a row over flat_dim (wire dtype, on the device),
  // summed in place by the all-reduce started as `ticket`.
  std::optional<Dim> flat_dim;
  Tensor flat;
  uint64_t ticket = 0;
  std::vector<MPI_Request> reqs;
};

}  // namespace

struct DataParallel::Impl {
  Communicator comm;
  DataParallelOptions options;
  std::vector<Param> params;
  std::vector<Bucket> buckets;
  std::vector<char> ready;  // per parameter, this pass
  size_t next_launch = 0;
  int64_t overlapped = 0;  // buckets of the last pass started before its end
  bool in_pass = false;
  bool enabled = true;
  std::vector<HookHandle> hooks;
  HookHandle end_hook;

  void on_ready(size_t i);
  void launch(size_t b);
  void progress();
  void finish();
  void reset_pass();
};

void DataParallel::Impl::on_ready(size_t i) {
  if (!enabled || ready[i]) return;
  in_pass = true;
  ready[i] = 1;
  ++buckets[params[i].bucket].ready;
  // Buckets start strictly in order, so every rank issues the same collectives in the same order.
  while (next_launch < buckets.size() && buckets[next_launch].ready == buckets[next_launch].params.size())
    launch(next_launch++);
  progress();
}

void DataParallel::Impl::launch(size_t b) {
  NoGradGuard ng;
  Bucket& k = buckets[b];
  Communicator::Impl& c = comm.impl();
  c.check_usable(kName);
  DeviceTransport* t = c.transport_for(k.device);
  const size_t es = dtype_size(k.wire);
  k.flags_at = t ? 0 : k.grad_numel;
  const int64_t host_numel = k.flags_at + int64_t(k.params.size());
  k.buf = std::make_shared<std::vector<char>>(size_t(host_numel) * es, 0);
  char* base = k.buf->data();
  std::vector<std::pair<Tensor, Dim>> rows;
  for (size_t j = 0; j < k.params.size(); ++j) {
    const Param& pr = params[k.params[j]];
    Tensor g = pr.p->grad();
    if (t) {
      // A parameter without a gradient on this rank adds zeros.
      rows.emplace_back(to_row(g.defined() ? g.astype(k.wire) : Tensor::zeros(pr.p->dims(), k.wire, k.device), pr),
                        pr.flat);
    } else if (g.defined()) {
      Tensor h = g.astype(k.wire).transpose_to(pr.p->dims()).to(Device::cpu());
      std::memcpy(base + size_t(pr.offset) * es, h.data_ptr(), size_t(pr.numel) * es);
    }
    if (!g.defined()) continue;
    char* flag = base + size_t(k.flags_at + int64_t(j)) * es;
    if (k.wire == DType::f32) {
      const float one = 1;
      std::memcpy(flag, &one, es);
    } else {
      const double one = 1;
      std::memcpy(flag, &one, es);
    }
  }
  if (t) {
    // One all-reduce (the mean over ranks) per bucket over a row of its own (concat copies),
    // started behind the backward's queued work: the device averages it while the backward
    // goes on.
    k.flat = concat(rows, *k.flat_dim).first;
    c.on_device(kName, [&] {
      k.ticket = t->start_all_reduce(const_cast<void*>(k.flat.data_ptr()), size_t(k.grad_numel), k.wire, ReduceOp::mean);
    });
  }
  constexpr int64_t chunk = int64_t(1) << 30;
  k.reqs.clear();
  for (int64_t i = 0; i < host_numel; i += chunk) {
    k.reqs.emplace_back();
    const int rc = MPI_Iallreduce(MPI_IN_PLACE, base + size_t(i) * es, int(std::min(chunk, host_numel - i)),
                                  mpi_type(k.wire), MPI_SUM, c.data, &k.reqs.back());
    if (rc != MPI_SUCCESS) c.fail_broken(kName, "MPI_Iallreduce of bucket " + std::to_string(b) + " failed");
  }
  k.launched = true;
}

void DataParallel::Impl::progress() {
  // MPI advances non-blocking collectives inside MPI calls: testing them here, as the backward
  // goes on, keeps the launched buckets moving.
  for (size_t b = 0; b < next_launch; ++b) {
    Bucket& k = buckets[b];
    if (k.reqs.empty()) continue;
    int done = 0;
    MPI_Testall(int(k.reqs.size()), k.reqs.data(), &done, MPI_STATUSES_IGNORE);
  }
}

void DataParallel::Impl::reset_pass() {
  std::fill(ready.begin(), ready.end(), 0);
  for (Bucket& k : buckets) {
    k.ready = 0;
    k.launched = false;
    k.buf.reset();
    k.reqs.clear();
    k.flat = Tensor();
  }
  next_launch = 0;
  in_pass = false;
}

void DataParallel::Impl::finish() {
  if (!enabled || !in_pass) return;
  NoGradGuard ng;
  Communicator::Impl& c = comm.impl();
  overlapped = int64_t(next_launch);
  while (next_launch < buckets.size()) launch(next_launch++);
  const double inv = 1.0 / double(c.size);
  for (size_t b = 0; b < buckets.size(); ++b) {
    Bucket& k = buckets[b];
    c.wait(kName, k.reqs, k.buf, "the gradient all_reduce of bucket " + std::to_string(b));
    if (k.flat.defined()) {
      DeviceTransport* t = c.transport_for(k.device);
      c.on_device(kName, [&] { t->wait(k.ticket, c.timeout); });
    }
    const size_t es = dtype_size(k.wire);
    for (size_t j = 0; j < k.params.size(); ++j) {
      const Param& pr = params[k.params[j]];
      double count = 0;
      const char* flag = k.buf->data() + size_t(k.flags_at + int64_t(j)) * es;
      if (k.wire == DType::f32) {
        float f;
        std::memcpy(&f, flag, es);
        count = f;
      } else {
        std::memcpy(&count, flag, es);
      }
      if (count == 0) continue;  // no rank has a gradient for it
      if (k.flat.defined()) {
        // Averaged on the device already: the gradient is a view of the bucket's row.
        pr.p->set_grad(from_row(slice(k.flat, *k.flat_dim, pr.offset, pr.offset + pr.numel, 1, pr.flat).first, pr)
                           .astype(pr.p->dtype()));
        continue;
      }
      Tensor sum = Tensor::from_raw(pr.p->dims(), k.wire, k.buf->data() + size_t(pr.offset) * es, size_t(pr.numel));
      pr.p->set_grad((sum * inv).astype(pr.p->dtype()).to(pr.p->device()));
    }
  }
  reset_pass();
}

DataParallel::DataParallel(std::vector<std::pair<std::string, Tensor*>> named, Communicator comm,
                           DataParallelOptions options)
    : impl_(std::make_unique<Impl>()) {
  Impl& d = *impl_;
  d.comm = std::move(comm);
  d.options = options;
  Communicator::Impl& c = d.comm.impl();
  if (named.empty()) throw Error(std::string(kName) + ": no parameters");
  if (options.bucket_bytes <= 0)
    throw Error(std::string(kName) + ": bucket_bytes must be > 0, got " + std::to_string(options.bucket_bytes));
  if (options.root < 0 || options.root >= c.size)
    throw Error(std::string(kName) + ": root " + std::to_string(options.root) + " is not a rank (size " +
                std::to_string(c.size) + ")");
  std::string desc;
  for (const auto& [name, p] : named) {
    if (p == nullptr || !p->defined()) throw Error(std::string(kName) + ": parameter '" + name + "' is undefined");
    if (!p->requires_grad()) throw Error(std::string(kName) + ": parameter '" + name + "' " + p->str() + " does not require grad");
    desc += name + " " + describe(*p) + "; ";
    d.params.push_back({name, p, 0, 0, p->numel(), Dim(p->numel(), "dp_" + name)});
  }
  d.comm.check_same(kName, std::to_string(named.size()) + " parameters: " + desc);
  {
    NoGradGuard ng;
    for (Param& pr : d.params) pr.p->copy_from(d.comm.broadcast(*pr.p, options.root));
  }
  // Buckets in reverse parameter order: about the order in which backward() finishes them.
  for (size_t i = d.params.size(); i-- > 0;) {
    Param& pr = d.params[i];
    const DType w = wire_dtype(pr.p->dtype());
    const Device dev = pr.p->device();
    const int64_t bytes = pr.numel * int64_t(dtype_size(w));
    if (d.buckets.empty() || d.buckets.back().wire != w || !(d.buckets.back().device == dev) ||
        (d.buckets.back().grad_numel > 0 &&
         d.buckets.back().grad_numel * int64_t(dtype_size(w)) + bytes > options.bucket_bytes)) {
      d.buckets.emplace_back();
      d.buckets.back().wire = w;
      d.buckets.back().device = dev;
    }
    Bucket& k = d.buckets.back();
    pr.bucket = d.buckets.size() - 1;
    pr.offset = k.grad_numel;
    k.grad_numel += pr.numel;
    k.params.push_back(i);
  }
  for (Bucket& k : d.buckets) k.flat_dim = Dim(k.grad_numel, "dp_bucket");
  d.ready.assign(d.params.size(), 0);
  for (size_t i = 0; i < d.params.size(); ++i)
    d.hooks.push_back(register_grad_ready_hook(*d.params[i].p, [&d, i](const Tensor&) { d.on_ready(i); }));
  d.end_hook = register_backward_end_hook([&d] { d.finish(); });
}

DataParallel::~DataParallel() = default;

const Communicator& DataParallel::comm() const { return impl_->comm; }

std::vector<std::vector<std::string>> DataParallel::buckets() const {
  std::vector<std::vector<std::string>> out;
  for (const Bucket& k : impl_->buckets) {
    out.emplace_back();
    for (size_t i : k.params) out.back().push_back(impl_->params[i].name);
  }
  return out;
}

void DataParallel::set_enabled(bool on) {
  if (impl_->in_pass) throw Error(std::string(kName) + ": set_enabled during a backward pass");
  impl_->enabled = on;
}

bool DataParallel::enabled() const { return impl_->enabled; }

int64_t DataParallel::overlapped_buckets() const { return impl_->overlapped; }

void DataParallel::broadcast_parameters(int root) {
  NoGradGuard ng;
  for (Param& pr : impl_->params) pr.p->copy_from(impl_->comm.broadcast(*pr.p, root));
}

}  // namespace dimx::dist

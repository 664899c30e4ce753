#include <dimx/tensor.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>
#include <cstring>
#include <sstream>

#include "autograd.h"
#include "backend.h"
#include "tensor_impl.h"

namespace dimx {

namespace {
[[noreturn, gnu::cold, gnu::noinline]] void undefined_tensor(const char* what) {
  throw Error(std::string(what) + ": undefined tensor");
}

inline const TensorImpl& need(const std::shared_ptr<const TensorImpl>& p, const char* what) {
  if (!p) [[unlikely]] undefined_tensor(what);
  return *p;
}
}  // namespace

const TensorImpl& Tensor::impl() const { return need(impl_, "Tensor"); }
const Dims& Tensor::dims() const { return need(impl_, "Tensor::dims").dims; }
DType Tensor::dtype() const { return need(impl_, "Tensor::dtype").dtype; }
Device Tensor::device() const { return need(impl_, "Tensor::device").device(); }
int64_t Tensor::numel() const {
  int64_t n = 1;  // fits: every tensor's element count was checked where it was made
  for (const Dim& d : dims()) n *= d.extent();
  return n;
}
bool Tensor::has_dim(const Dim& d) const { return contains(dims(), d); }
std::span<const int64_t> Tensor::strides() const { return {impl().strides.data(), impl().strides.size()}; }
std::optional<Dim> Tensor::feature_dim() const { return impl().feature_dim; }
std::optional<Dim> Tensor::sparse_dim() const { return impl().sparse_dim; }
const void* Tensor::data_ptr() const { return impl().data(); }

size_t Tensor::axis_of(const Dim& d) const {
  const Dims& ds = dims();
  auto it = std::find(ds.begin(), ds.end(), d);
  if (it == ds.end()) throw Error("axis_of: dim '" + d.str() + "' not in " + dims_str(ds));
  return size_t(it - ds.begin());
}

bool Tensor::is_contiguous() const {
  const TensorImpl& t = impl();
  int64_t expect = 1;
  for (size_t i = t.dims.size(); i-- > 0;) {
    const int64_t e = t.dims[i].extent();
    if (e != 1 && t.strides[i] != expect) return false;
    expect *= e;
  }
  return true;
}

Tensor Tensor::with_feature_dim(std::optional<Dim> d) const {
  if (d && !has_dim(*d)) throw Error("with_feature_dim: dim '" + d->str() + "' not in " + dims_str(dims()));
  auto p = make_pooled<TensorImpl>(impl());
  p->feature_dim = d;
  return Tensor(std::move(p));
}

Tensor Tensor::with_sparse_dim(std::optional<Dim> d) const {
  if (d && !is_integer(dtype()))
    throw Error("with_sparse_dim: sparse_dim needs an integer tensor, got " + str());
  auto p = make_pooled<TensorImpl>(impl());
  p->sparse_dim = d;
  return Tensor(std::move(p));
}

Tensor Tensor::from_raw(Dims dims, DType dtype, const void* data, size_t count) {
  check_unique("Tensor::from_raw", dims);
  int64_t n = numel_of(extents(dims));
  if (int64_t(count) != n)
    throw Error("Tensor::from_raw: " + std::to_string(count) + " values given for dims " + dims_str(dims) +
                " which need " + std::to_string(n));
  Tensor t = empty(std::move(dims), dtype, Device::cpu(), "Tensor::from_raw");
  if (n) std::memcpy(t.impl().data(), data, size_t(n) * dtype_size(dtype));
  return t;
}

// Scalars on a device are filled once per (device, dtype, value) and shared, read-only: the
// scalar operands of elementwise ops (the zeros of the padding masks, a factor 0.5) cost a fill
// launch per op otherwise. A bounded number are kept; the CPU fills its own (cheaper than a lookup).
namespace {
using ConstantKey = std::tuple<int, int, int, uint64_t>;
std::mutex& constants_mu() {
  static std::mutex mu;
  return mu;
}
// Never destroyed (device memory outlives statics); emptied by release_device_constants().
std::map<ConstantKey, Tensor>& constants() {
  static auto* cache = new std::map<ConstantKey, Tensor>;
  return *cache;
}
}  // namespace

void release_device_constants(Device device) {
  std::map<ConstantKey, Tensor> gone;
  std::lock_guard<std::mutex> lk(constants_mu());
  auto& cache = constants();
  for (auto it = cache.begin(); it != cache.end();)
    if (std::get<0>(it->first) == int(device.type) && std::get<1>(it->first) == device.index) {
      gone.insert(cache.extract(it++));
    } else {
      ++it;
    }
}

Tensor constant_scalar(double value, DType dtype, Device device) {
  if (device.is_cpu()) return Tensor::scalar(value, dtype, device);
  using Key = ConstantKey;
  auto& mu = constants_mu();
  auto* cache = &constants();
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const Key key{int(device.type), device.index, int(dtype), bits};
  {
    std::lock_guard<std::mutex> lk(mu);
    auto it = cache->find(key);
    if (it != cache->end()) return it->second;
  }
  Tensor t = Tensor::scalar(value, dtype, device);
  std::lock_guard<std::mutex> lk(mu);
  if (cache->size() < 256) {
    t.impl().storage->read_only = true;
    cache->emplace(key, t);
  }
  return t;
}


Tensor Tensor::full(Dims dims, double value, DType dtype, Device device) {
  check_unique("Tensor::full", dims);
  if (!representable(value, dtype)) {
    std::ostringstream os;
    os.precision(17);
    os << value;
    throw Error("Tensor::full: value " + os.str() + " is not representable in " + dtype_name(dtype) + " for dims " +
                dims_str(dims));
  }
  Tensor t = empty(std::move(dims), dtype, device, "Tensor::full");
  backend::backend_for(device).fill(dtype, t.numel(), t.impl().data(), value);
  return t;
}

Tensor Tensor::transpose_to(const Dims& order) const {
  const TensorImpl& t = impl();
  if (order.size() != t.dims.size() || !contains_all(order, t.dims)) {
    throw Error("transpose_to: order " + dims_str(order) + " is not a permutation of " + dims_str(t.dims));
  }
  check_unique("transpose_to", order);
  if (needs_grad({this})) {
    Tensor y;
    {
      NoGradGuard no_grad;
      y = transpose_to(order);
    }
    return record("transpose_to", y, {*this}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
  }
  Strides s = aligned_strides(t, order);
  Shape shape = extents(order);
  // Already in order (the stride of an extent-1 Dim never matters): a view.
  const Strides c = contiguous_strides(shape);
  bool in_order = true;
  for (size_t i = 0; i < c.size(); ++i) in_order = in_order && (shape[i] == 1 || s[i] == c[i]);
  if (in_order) return make_view(*this, order, c, t.offset);
  Tensor out = empty(order, t.dtype, t.device(), "transpose_to");
  auto p = make_pooled<TensorImpl>(out.impl());
  p->feature_dim = t.feature_dim;
  p->sparse_dim = t.sparse_dim;
  backend::backend_for(t.device()).copy(shape, t.dtype, {t.data(), s}, t.dtype, {p->data(), p->strides});
  return Tensor(std::move(p));
}

Tensor Tensor::astype(DType dt) const {
  const TensorImpl& t = impl();
  if (dt == t.dtype) return *this;
  // Differentiable between floating dtypes (f32, f64, bf16, f16, any direction): the gradient
  // is cast back to the source dtype. A cast to an integer or bool dtype cuts the graph.
  if (is_float_like(dt) && needs_grad({this})) {
    Tensor y;
    {
      NoGradGuard no_grad;
      y = astype(dt);
    }
    DType src = t.dtype;
    return record("astype", y, {*this}, [src](const Tensor& g) { return std::vector<Tensor>{g.astype(src)}; });
  }
  Tensor out = empty(t.dims, dt, t.device(), "astype");
  auto p = make_pooled<TensorImpl>(out.impl());
  p->feature_dim = t.feature_dim;
  if (is_integer(dt)) p->sparse_dim = t.sparse_dim;
  backend::backend_for(t.device()).copy(extents(t.dims), t.dtype, {t.data(), t.strides}, dt, {p->data(), p->strides});
  return Tensor(std::move(p));
}

Tensor Tensor::to(Device dev) const {
  const TensorImpl& t = impl();
  if (dev == t.device()) return *this;
  if (needs_grad({this})) {
    Tensor y;
    {
      NoGradGuard no_grad;
      y = to(dev);
    }
    Device src_dev = t.device();
    return record("to", y, {*this}, [src_dev](const Tensor& g) { return std::vector<Tensor>{g.to(src_dev)}; });
  }
  Tensor src = contiguous();
  Tensor out = empty(t.dims, t.dtype, dev, "to");
  auto p = make_pooled<TensorImpl>(out.impl());
  p->feature_dim = t.feature_dim;
  p->sparse_dim = t.sparse_dim;
  size_t bytes = size_t(numel()) * dtype_size(t.dtype);
  if (t.device().is_cpu()) {
    backend::backend_for(dev).copy_from_host(p->data(), src.impl().data(), bytes);
  } else if (dev.is_cpu()) {
    backend::backend_for(t.device()).copy_to_host(p->data(), src.impl().data(), bytes);
  } else {
    return to(Device::cpu()).to(dev);
  }
  return Tensor(std::move(p));
}

std::string Tensor::str() const {
  if (!impl_) return "Tensor[undefined]";
  std::string s = "Tensor[" + std::string(dtype_name(dtype())) + ", " + device().str() + "]" + dims_str(dims());
  if (impl_->feature_dim) s += " feature=" + impl_->feature_dim->name();
  if (impl_->sparse_dim) s += " sparse=" + impl_->sparse_dim->name();
  return s;
}

namespace {
template <class T>
void print_values(std::ostream& os, const T* p, const Shape& shape, size_t axis, int64_t& budget) {
  if (axis == shape.size()) {
    if constexpr (std::is_same_v<T, bool>) os << (*p ? "true" : "false");
    else os << +*p;
    return;
  }
  int64_t stride = numel_of(Shape(shape.begin() + long(axis) + 1, shape.end()));
  os << "[";
  for (int64_t i = 0; i < shape[axis]; ++i) {
    if (budget <= 0) {
      os << "...";
      break;
    }
    if (i) os << (axis + 1 == shape.size() ? ", " : ",\n" + std::string(axis + 1, ' '));
    if (axis + 1 == shape.size()) --budget;
    print_values(os, p + i * stride, shape, axis + 1, budget);
  }
  os << "]";
}
}  // namespace

std::string Tensor::to_string(size_t max_values) const {
  std::ostringstream os;
  os << str() << "\n";
  if (!impl_) return os.str();
  Tensor c = (is_half(dtype()) ? astype(DType::f32) : *this).contiguous().to(Device::cpu());
  Shape shape = extents(dims());
  int64_t budget = int64_t(max_values);
  const void* p = c.impl().data();
  switch (c.dtype()) {
    case DType::f32: print_values(os, static_cast<const float*>(p), shape, 0, budget); break;
    case DType::f64: print_values(os, static_cast<const double*>(p), shape, 0, budget); break;
    case DType::i32: print_values(os, static_cast<const int32_t*>(p), shape, 0, budget); break;
    case DType::i64: print_values(os, static_cast<const int64_t*>(p), shape, 0, budget); break;
    case DType::boolean: print_values(os, static_cast<const bool*>(p), shape, 0, budget); break;
    default: break;
  }
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

}  // namespace dimx

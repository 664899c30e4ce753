#include <dimx/elementwise.h>
#include <dimx/reduce.h>
#include <dimx/tensor.h>

#include <atomic>
#include <map>
#include <mutex>
#include <sstream>
#include <tuple>

#include "tensor_impl.h"

namespace dimx {

struct DimImpl {
  uint64_t id = 0;
  std::string name;
  int64_t size = -1;  // static size, or -1 for a dynamic Dim
  Tensor lengths;     // dynamic only: i32
  int64_t extent = 0;
  // Derived Dims by (op, other Dim's id or constant): the same expression, the same Dim.
  mutable std::mutex mu;
  mutable std::map<std::tuple<int, uint64_t, int64_t>, Dim> derived;
  mutable std::map<std::pair<int, int>, Tensor> device_lengths;  // (device type, index) -> lengths

  static uint64_t next_id() {
    static std::atomic<uint64_t> counter{1};
    return counter++;
  }
  static Dim make(std::shared_ptr<DimImpl> p) { return Dim(std::shared_ptr<const DimImpl>(std::move(p))); }
  static const DimImpl& of(const Dim& d) { return *d.impl_; }
};

namespace {

std::shared_ptr<DimImpl> new_impl(std::string name) {
  auto p = std::make_shared<DimImpl>();
  p->id = DimImpl::next_id();
  p->name = std::move(name);
  return p;
}

void set_lengths(DimImpl& impl, const Tensor& lengths) {
  if (!lengths.defined()) throw Error("Dim: undefined lengths tensor for dim '" + impl.name + "'");
  if (!is_integer(lengths.dtype()))
    throw Error("Dim: lengths of dim '" + impl.name + "' must be an integer tensor, got " + lengths.str());
  Tensor l = lengths.astype(DType::i32);
  std::vector<int32_t> v = l.to_vector<int32_t>();
  int64_t mx = 0;
  for (int32_t x : v) {
    if (x < 0) throw Error("Dim: negative length " + std::to_string(x) + " for dim '" + impl.name + "'");
    mx = std::max<int64_t>(mx, x);
  }
  // Lengths live on the CPU (they are small); ops move them to their operands' device.
  impl.lengths = l.to(Device::cpu()).detach().with_sparse_dim(std::nullopt).with_feature_dim(std::nullopt);
  impl.extent = mx;
}

// Look up or create a derived Dim of `base`.
template <class Make>
Dim derive(const Dim& base, int op, uint64_t other, int64_t k, Make&& make) {
  const DimImpl& b = DimImpl::of(base);
  std::lock_guard<std::mutex> lock(b.mu);
  auto key = std::make_tuple(op, other, k);
  auto it = b.derived.find(key);
  if (it != b.derived.end()) return it->second;
  Dim d = make();
  b.derived.emplace(key, d);
  return d;
}

Dim from_size_or_lengths(const std::string& name, int64_t size, const Tensor& lengths) {
  if (lengths.defined()) return Dim(lengths, name);
  return Dim(size, name);
}

enum DimOp { kAdd = 1, kSub, kMul, kFloorDiv, kCeilDiv, kAddDim };

}  // namespace

Dim::Dim(int64_t size, std::string name) {
  if (size < 0) throw Error("Dim: negative size " + std::to_string(size) + " for dim '" + name + "'");
  auto p = new_impl(std::move(name));
  p->size = size;
  p->extent = size;
  impl_ = std::move(p);
}

Dim::Dim(const Tensor& lengths, std::string name) {
  auto p = new_impl(std::move(name));
  set_lengths(*p, lengths);
  impl_ = std::move(p);
}

const std::string& Dim::name() const { return impl_->name; }
uint64_t Dim::id() const { return impl_->id; }
bool Dim::is_static() const { return impl_->size >= 0; }

int64_t Dim::size() const {
  if (!is_static()) throw Error("Dim::size: dim '" + str() + "' is dynamic; use extent() or lengths()");
  return impl_->size;
}

int64_t Dim::extent() const { return impl_->extent; }

Tensor Dim::lengths() const {
  if (is_static()) return Tensor::scalar(double(impl_->size), DType::i32);
  return impl_->lengths;
}

Tensor Dim::lengths(Device device) const {
  if (is_static() || device.is_cpu()) return lengths().to(device);
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto key = std::make_pair(int(device.type), device.index);
  auto it = impl_->device_lengths.find(key);
  if (it == impl_->device_lengths.end()) it = impl_->device_lengths.emplace(key, impl_->lengths.to(device)).first;
  return it->second;
}

Dim Dim::copy(std::string name) const {
  if (name.empty()) name = impl_->name;
  return from_size_or_lengths(name, impl_->size, impl_->lengths);
}

std::string Dim::str() const {
  std::string n = impl_->name.empty() ? "dim" + std::to_string(impl_->id) : impl_->name;
  if (is_static()) return n + ":" + std::to_string(impl_->size);
  return n + ":<=" + std::to_string(impl_->extent) + " (dyn)";
}

std::ostream& operator<<(std::ostream& os, const Dim& d) { return os << d.str(); }

std::string dims_str(const Dims& dims) {
  std::string s = "{";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + dims[i].str();
  return s + "}";
}

static std::string label(const Dim& d) { return d.name().empty() ? "dim" + std::to_string(d.id()) : d.name(); }

Dim operator+(const Dim& a, int64_t k) {
  if (k == 0) return a;
  if (k < 0) return a - (-k);
  return derive(a, kAdd, 0, k, [&] {
    std::string n = label(a) + "+" + std::to_string(k);
    if (a.is_static()) return Dim(a.size() + k, n);
    return Dim(a.lengths() + double(k), n);
  });
}

Dim operator-(const Dim& a, int64_t k) {
  if (k == 0) return a;
  if (k < 0) return a + (-k);
  return derive(a, kSub, 0, k, [&] {
    std::string n = label(a) + "-" + std::to_string(k);
    if (a.is_static()) {
      if (a.size() < k) throw Error("Dim arithmetic: " + a.str() + " - " + std::to_string(k) + " is negative");
      return Dim(a.size() - k, n);
    }
    Tensor l = a.lengths() - double(k);
    if (reduce_any(l < 0.0, l.dims()).item<bool>())
      throw Error("Dim arithmetic: " + a.str() + " - " + std::to_string(k) + " has negative lengths");
    return Dim(l, n);
  });
}

Dim operator*(const Dim& a, int64_t k) {
  if (k == 1) return a;
  if (k < 0) throw Error("Dim arithmetic: " + a.str() + " * " + std::to_string(k) + ": negative factor");
  return derive(a, kMul, 0, k, [&] {
    std::string n = std::to_string(k) + "*" + label(a);
    if (a.is_static()) return Dim(a.size() * k, n);
    return Dim(a.lengths() * double(k), n);
  });
}

Dim operator/(const Dim& a, int64_t k) {
  if (k <= 0) throw Error("Dim arithmetic: " + a.str() + " / " + std::to_string(k) + ": divisor must be positive");
  if (k == 1) return a;
  return derive(a, kFloorDiv, 0, k, [&] {
    std::string n = label(a) + "/" + std::to_string(k);
    if (a.is_static()) return Dim(a.size() / k, n);
    return Dim(floordiv(a.lengths(), Tensor::scalar(double(k), DType::i32)), n);
  });
}

Dim ceil_div(const Dim& a, int64_t k) {
  if (k <= 0) throw Error("Dim arithmetic: ceil_div(" + a.str() + ", " + std::to_string(k) + "): divisor must be positive");
  if (k == 1) return a;
  return derive(a, kCeilDiv, 0, k, [&] {
    std::string n = "ceil(" + label(a) + "/" + std::to_string(k) + ")";
    if (a.is_static()) return Dim((a.size() + k - 1) / k, n);
    return Dim(floordiv(a.lengths() + double(k - 1), Tensor::scalar(double(k), DType::i32)), n);
  });
}

Dim operator+(const Dim& a, const Dim& b) {
  return derive(a, kAddDim, b.id(), 0, [&] {
    std::string n = label(a) + "+" + label(b);
    if (a.is_static() && b.is_static()) return Dim(a.size() + b.size(), n);
    return Dim(add(a.lengths(), b.lengths(), /*allow_broadcast_all=*/true), n);
  });
}

}  // namespace dimx

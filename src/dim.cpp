#include <dimx/autograd.h>
#include <dimx/elementwise.h>
#include <dimx/reduce.h>
#include <dimx/shape.h>
#include <dimx/tensor.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>
#include <tuple>

#include "padding.h"
#include "tensor_impl.h"

namespace dimx {

namespace {
constexpr int64_t kMaxLength = std::numeric_limits<int32_t>::max();
}  // namespace

struct DimImpl {
  uint64_t id = 0;
  std::string name;
  int64_t size = -1;  // static size, or -1 for a dynamic Dim
  Tensor lengths;     // dynamic only: i32
  int64_t extent = 0;
  bool padded = false;  // dynamic with some length < extent
  // Derived Dims by (op, other Dim's id or constant): the same expression, the same Dim, for as
  // long as that Dim exists. Held weakly, while each derived Dim holds the Dim it was derived
  // from (`parent`, set once when it is made): a derived Dim whose lengths run over this one,
  // directly or not (batch + time, time's lengths over batch), forms no reference cycle.
  mutable std::mutex mu;
  mutable std::map<std::tuple<int, uint64_t, int64_t>, std::weak_ptr<const DimImpl>> derived;
  mutable std::shared_ptr<const DimImpl> parent;
  // Per (device type, index): the lengths there and valid_frames, the latter over a stand-in
  // Dim for this one (a tensor over this Dim held here would keep it alive forever). Shared
  // with the Dim's copies, which have the same lengths: a copy transfers nothing again.
  struct OnDevice {
    std::mutex mu;
    std::map<std::pair<int, int>, Tensor> lengths, masks;
    std::map<std::pair<int, int>, std::map<std::string, Tensor>> derived;  // derived_from_lengths
  };
  std::shared_ptr<OnDevice> on_device = std::make_shared<OnDevice>();

  static uint64_t next_id() {
    static std::atomic<uint64_t> counter{1};
    return counter++;
  }
  static Dim make(std::shared_ptr<DimImpl> p) { return Dim(std::shared_ptr<const DimImpl>(std::move(p))); }
  static const DimImpl& of(const Dim& d) { return *d.impl_; }
  static const std::shared_ptr<const DimImpl>& ptr(const Dim& d) { return d.impl_; }
  static Dim from(std::shared_ptr<const DimImpl> p) { return Dim(std::move(p)); }
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
  // A private copy, checked in i64 before narrowing: the caller's tensor may change later, and
  // lengths beyond int32 must be refused, not truncated.
  const Tensor src = lengths.detach().to(Device::cpu());
  const std::vector<int64_t> v = src.to_vector<int64_t>();
  std::vector<int32_t> v32(v.size());
  int64_t mx = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const int64_t x = v[i];
    if (x < 0) throw Error("Dim: negative length " + std::to_string(x) + " for dim '" + impl.name + "'");
    if (x > kMaxLength)
      throw Error("Dim: length " + std::to_string(x) + " for dim '" + impl.name + "' exceeds the int32 range of lengths");
    v32[i] = int32_t(x);
    mx = std::max(mx, x);
  }
  Tensor l = Tensor::from_vector<int32_t>(src.dims(), v32);
  // Lengths never change once the Dim exists: no op may write into them.
  l.impl().storage->read_only = true;
  // Lengths live on the CPU (they are small); ops move them to their operands' device.
  impl.lengths = l;
  impl.extent = mx;
  impl.padded = std::any_of(v.begin(), v.end(), [mx](int64_t x) { return x < mx; });
}

// Look up or create a derived Dim of `base`.
template <class Make>
Dim derive(const Dim& base, int op, uint64_t other, int64_t k, Make&& make) {
  const DimImpl& b = DimImpl::of(base);
  std::lock_guard<std::mutex> lock(b.mu);
  auto key = std::make_tuple(op, other, k);
  auto it = b.derived.find(key);
  if (it != b.derived.end())
    if (std::shared_ptr<const DimImpl> p = it->second.lock()) return DimImpl::from(std::move(p));
  Dim d = make();
  DimImpl::of(d).parent = DimImpl::ptr(base);
  std::erase_if(b.derived, [](const auto& e) { return e.second.expired(); });
  b.derived[key] = DimImpl::ptr(d);
  return d;
}

enum DimOp { kAdd = 1, kSub, kMul, kFloorDiv, kCeilDiv, kAddDim };

// The lengths of dynamic `a` mapped by f on the host (exact in int64; the caller has checked
// that the results fit in int32).
template <class F>
Tensor map_lengths(const Dim& a, F&& f) {
  const Tensor l = a.lengths();
  std::vector<int64_t> v = l.to_vector<int64_t>();
  for (int64_t& x : v) x = f(x);
  return Tensor::from_vector<int64_t>(l.dims(), v);
}

// The extent of a derived Dim; throws when it overflows int64 (static) or the int32 range of
// lengths (dynamic).
int64_t derived_extent(const std::string& expr, bool dynamic, int64_t a, int64_t b, bool multiply) {
  int64_t r;
  const bool over = multiply ? __builtin_mul_overflow(a, b, &r) : __builtin_add_overflow(a, b, &r);
  if (over) throw Error("Dim arithmetic: " + expr + " overflows int64");
  if (dynamic && r > kMaxLength)
    throw Error("Dim arithmetic: " + expr + " has lengths up to " + std::to_string(r) +
                ", beyond the int32 range of lengths");
  return r;
}

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
bool Dim::is_padded() const { return impl_->padded; }

Tensor Dim::lengths() const {
  if (is_static()) return Tensor::scalar(double(impl_->size), DType::i32);
  return impl_->lengths;
}

Tensor Dim::lengths(Device device) const {
  if (is_static()) return Tensor::scalar(double(impl_->size), DType::i32, device);  // filled there: no copy
  if (device.is_cpu()) return lengths();
  DimImpl::OnDevice& on = *impl_->on_device;
  std::lock_guard<std::mutex> lock(on.mu);
  auto key = std::make_pair(int(device.type), device.index);
  auto it = on.lengths.find(key);
  if (it == on.lengths.end()) {
    Tensor l = impl_->lengths.to(device);
    l.impl().storage->read_only = true;
    it = on.lengths.emplace(key, l).first;
  }
  return it->second;
}

Tensor valid_frames(const Dim& d, Device device) {
  DimImpl::OnDevice& on = *DimImpl::of(d).on_device;
  const Tensor len = d.lengths(device);
  Tensor m;
  {
    std::lock_guard<std::mutex> lock(on.mu);
    auto key = std::make_pair(int(device.type), device.index);
    auto it = on.masks.find(key);
    if (it == on.masks.end()) {
      NoGradGuard ng;
      const Dim stand_in(d.extent(), d.name());
      Tensor v = less(range_over_dim(stand_in, DType::i32, device).with_sparse_dim(std::nullopt), len, true);
      v.impl().storage->read_only = true;
      it = on.masks.emplace(key, v).first;
    }
    m = it->second;
  }
  // The cached mask with d in place of its stand-in (zero-copy).
  Dims dims = m.dims();
  for (Dim& x : dims)
    if (!contains(len.dims(), x)) x = d;
  return make_view(m, dims, m.impl().strides, m.impl().offset);
}

Tensor derived_from_lengths(const Dim& d, Device device, const std::string& key, const std::function<Tensor()>& make) {
  DimImpl::OnDevice& on = *DimImpl::of(d).on_device;
  const auto dev = std::make_pair(int(device.type), device.index);
  {
    std::lock_guard<std::mutex> lock(on.mu);
    auto& kept = on.derived[dev];
    if (auto it = kept.find(key); it != kept.end()) return it->second;
  }
  Tensor t;
  {
    NoGradGuard ng;
    t = make();  // outside the lock: it may read d's lengths and masks
  }
  std::lock_guard<std::mutex> lock(on.mu);
  auto& kept = on.derived[dev];
  if (kept.size() >= 32) kept.clear();  // a bound for programs that pair one Dim with many others
  return kept.emplace(key, t).first->second;
}

Dim Dim::copy(std::string name) const {
  if (name.empty()) name = impl_->name;
  if (is_static()) return Dim(impl_->size, name);
  // The same lengths (checked and read-only already) and their copies on the devices.
  auto p = new_impl(std::move(name));
  p->lengths = impl_->lengths;
  p->extent = impl_->extent;
  p->padded = impl_->padded;
  p->on_device = impl_->on_device;
  return DimImpl::make(std::move(p));
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
  if (k == std::numeric_limits<int64_t>::min()) throw Error("Dim arithmetic: " + a.str() + " + " + std::to_string(k) + " overflows int64");
  if (k < 0) return a - (-k);
  return derive(a, kAdd, 0, k, [&] {
    std::string n = label(a) + "+" + std::to_string(k);
    const int64_t e = derived_extent(a.str() + " + " + std::to_string(k), a.is_dynamic(), a.extent(), k, false);
    if (a.is_static()) return Dim(e, n);
    return Dim(map_lengths(a, [k](int64_t l) { return l + k; }), n);
  });
}

Dim operator-(const Dim& a, int64_t k) {
  if (k == 0) return a;
  if (k == std::numeric_limits<int64_t>::min()) throw Error("Dim arithmetic: " + a.str() + " - " + std::to_string(k) + " overflows int64");
  if (k < 0) return a + (-k);
  return derive(a, kSub, 0, k, [&] {
    std::string n = label(a) + "-" + std::to_string(k);
    if (a.is_static()) {
      if (a.size() < k) throw Error("Dim arithmetic: " + a.str() + " - " + std::to_string(k) + " is negative");
      return Dim(a.size() - k, n);
    }
    for (int32_t l : a.lengths().to_vector<int32_t>())
      if (l < k) throw Error("Dim arithmetic: " + a.str() + " - " + std::to_string(k) + " has negative lengths");
    return Dim(map_lengths(a, [k](int64_t l) { return l - k; }), n);
  });
}

Dim operator*(const Dim& a, int64_t k) {
  if (k == 1) return a;
  if (k < 0) throw Error("Dim arithmetic: " + a.str() + " * " + std::to_string(k) + ": negative factor");
  return derive(a, kMul, 0, k, [&] {
    std::string n = std::to_string(k) + "*" + label(a);
    const int64_t e = derived_extent(a.str() + " * " + std::to_string(k), a.is_dynamic(), a.extent(), k, true);
    if (a.is_static()) return Dim(e, n);
    return Dim(map_lengths(a, [k](int64_t l) { return l * k; }), n);
  });
}

Dim operator/(const Dim& a, int64_t k) {
  if (k <= 0) throw Error("Dim arithmetic: " + a.str() + " / " + std::to_string(k) + ": divisor must be positive");
  if (k == 1) return a;
  return derive(a, kFloorDiv, 0, k, [&] {
    std::string n = label(a) + "/" + std::to_string(k);
    if (a.is_static()) return Dim(a.size() / k, n);
    return Dim(map_lengths(a, [k](int64_t l) { return l / k; }), n);
  });
}

Dim ceil_div(const Dim& a, int64_t k) {
  if (k <= 0) throw Error("Dim arithmetic: ceil_div(" + a.str() + ", " + std::to_string(k) + "): divisor must be positive");
  if (k == 1) return a;
  return derive(a, kCeilDiv, 0, k, [&] {
    std::string n = "ceil(" + label(a) + "/" + std::to_string(k) + ")";
    if (a.is_static()) return Dim(a.size() / k + (a.size() % k != 0), n);
    return Dim(map_lengths(a, [k](int64_t l) { return l / k + (l % k != 0); }), n);
  });
}

Dim operator+(const Dim& a, const Dim& b) {
  return derive(a, kAddDim, b.id(), 0, [&] {
    std::string n = label(a) + "+" + label(b);
    const int64_t e = derived_extent(a.str() + " + " + b.str(), a.is_dynamic() || b.is_dynamic(), a.extent(),
                                     b.extent(), false);
    if (a.is_static() && b.is_static()) return Dim(e, n);
    return Dim(add(a.lengths(), b.lengths(), /*allow_broadcast_all=*/true), n);
  });
}

}  // namespace dimx

#pragma once
/// \file
/// Dim: an axis identified by object identity, never by size, name or position.
///
/// A Dim is a cheap handle; copies of the handle are the same Dim (an alias). A static Dim
/// has a fixed size. A dynamic Dim carries per-sequence lengths as an integer Tensor over
/// other Dims (usually {batch}); tensors store it padded to its extent, the max length.
/// Arithmetic on Dims is cached: the same expression on the same Dims yields the same Dim (for
/// as long as that Dim exists: the cache does not keep it alive).
#include <dimx/device.h>

#include <boost/container/small_vector.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

namespace dimx {

class Tensor;
struct DimImpl;

/// An axis: a handle compared by identity, static (fixed size) or dynamic (per-sequence lengths).
class Dim {
 public:
  /// A static Dim of `size` (>= 0).
  explicit Dim(int64_t size, std::string name = "");
  /// A dynamic Dim; `lengths` is an integer tensor (any Dims, not this one) with values in
  /// [0, 2^31). The Dim keeps its own copy: changing `lengths` later does not change the Dim.
  explicit Dim(const Tensor& lengths, std::string name = "");

  /// The name given at creation (for messages only; never used to match Dims).
  const std::string& name() const;
  /// A process-unique id, increasing in creation order.
  uint64_t id() const;
  /// True for a Dim with a fixed size.
  bool is_static() const;
  /// True for a Dim with per-sequence lengths.
  bool is_dynamic() const { return !is_static(); }
  /// The static size; throws for a dynamic Dim (use extent() or lengths()).
  int64_t size() const;
  /// The extent a tensor stores: the static size, or the max length of a dynamic Dim.
  int64_t extent() const;
  /// True for a dynamic Dim with a sequence shorter than the extent (a tensor over it has
  /// padded frames); false for static Dims and dynamic ones whose lengths all equal the extent.
  bool is_padded() const;
  /// Per-sequence lengths (i32, read-only: a private copy made when the Dim was, so they never
  /// change). For a static Dim: a scalar tensor holding the size.
  Tensor lengths() const;
  /// lengths() on `device`: copied there once per device and kept with the Dim, so masking the
  /// same Dim again (every layer of a model) costs no host-to-device copy.
  Tensor lengths(Device device) const;
  /// A new Dim with the same size or lengths and a distinct identity (sharing the lengths'
  /// copies on devices: a copy transfers nothing).
  Dim copy(std::string name = "") const;

  /// "time:<=50 (dyn)" or "batch:8".
  std::string str() const;

  /// Same identity (the same Dim or a copy of its handle).
  bool operator==(const Dim& o) const { return impl_ == o.impl_; }
  /// Different identity, even if the sizes are equal.
  bool operator!=(const Dim& o) const { return impl_ != o.impl_; }
  /// Ordered by creation, so containers of Dims iterate deterministically.
  bool operator<(const Dim& o) const { return id() < o.id(); }

  /// Cached Dim arithmetic; dynamic lengths follow elementwise. Division floors.
  friend Dim operator+(const Dim& a, int64_t k);
  /// The same Dim as `a + k`.
  friend Dim operator+(int64_t k, const Dim& a) { return a + k; }
  /// `a` minus `k`; throws if a size or length would become negative.
  friend Dim operator-(const Dim& a, int64_t k);
  /// `a` times `k` (k >= 0).
  friend Dim operator*(const Dim& a, int64_t k);
  /// The same Dim as `a * k`.
  friend Dim operator*(int64_t k, const Dim& a) { return a * k; }
  /// `a` divided by `k` (k > 0), rounded down.
  friend Dim operator/(const Dim& a, int64_t k);
  /// `a` divided by `k` (k > 0), rounded up.
  friend Dim ceil_div(const Dim& a, int64_t k);
  /// The sum of two Dims (sizes, or lengths per sequence; dynamic if either is).
  friend Dim operator+(const Dim& a, const Dim& b);

 private:
  explicit Dim(std::shared_ptr<const DimImpl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const DimImpl> impl_;
  friend struct DimImpl;
};

/// A list of Dims, e.g. a tensor's Dims in storage order. A vector that keeps up to 6 Dims
/// inline (no allocation), with std::vector's interface.
using Dims = boost::container::small_vector<Dim, 6>;

/// Writes d.str().
std::ostream& operator<<(std::ostream& os, const Dim& d);
/// "{batch:8, time:<=50 (dyn)}"
std::string dims_str(const Dims& dims);

}  // namespace dimx

/// \cond
/// Hashes a Dim by its id, for unordered containers.
template <>
struct std::hash<dimx::Dim> {
  size_t operator()(const dimx::Dim& d) const noexcept { return std::hash<uint64_t>()(d.id()); }
};
/// \endcond

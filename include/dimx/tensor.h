#pragma once
/// \file
/// Tensor: an immutable value with an ordered set of distinct Dims, a dtype, a device and
/// shared storage. The Dim order is only the storage layout; results never depend on it.
#include <dimx/device.h>
#include <dimx/dim.h>
#include <dimx/dtype.h>
#include <dimx/error.h>

#include <memory>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <vector>

namespace dimx {

struct TensorImpl;

/// An immutable tensor over Dims; copies share storage (see the file description).
class Tensor {
 public:
  Tensor() = default;  ///< undefined; most calls on it throw
  /// Wraps an implementation object (used by the library itself).
  explicit Tensor(std::shared_ptr<const TensorImpl> impl) : impl_(std::move(impl)) {}

  /// ---- construction (data is row-major over `dims` in the given order)
  static Tensor from_raw(Dims dims, DType dtype, const void* data, size_t count);
  /// A CPU tensor of `dtype_of<T>()` holding a copy of `data` (data.size() must equal the element count).
  template <class T>
  static Tensor from_vector(Dims dims, std::span<const T> data) {
    return from_raw(std::move(dims), dtype_of<T>(), data.data(), data.size());
  }
  /// A CPU tensor of `dtype_of<T>()` holding a copy of `data` (`std::vector<bool>` included).
  template <class T>
  static Tensor from_vector(Dims dims, const std::vector<T>& data) {
    if constexpr (std::is_same_v<T, bool>) {
      std::vector<unsigned char> bytes(data.begin(), data.end());
      return from_raw(std::move(dims), DType::boolean, bytes.data(), bytes.size());
    } else {
      return from_raw(std::move(dims), dtype_of<T>(), data.data(), data.size());
    }
  }
  /// Filled on `device` itself (no host copy).
  static Tensor full(Dims dims, double value, DType dtype = DType::f32, Device device = Device::cpu());
  /// full() with 0.
  static Tensor zeros(Dims dims, DType dtype = DType::f32, Device device = Device::cpu()) {
    return full(std::move(dims), 0, dtype, device);
  }
  /// full() with 1.
  static Tensor ones(Dims dims, DType dtype = DType::f32, Device device = Device::cpu()) {
    return full(std::move(dims), 1, dtype, device);
  }
  /// A tensor with no Dims holding `value`.
  static Tensor scalar(double value, DType dtype = DType::f32, Device device = Device::cpu()) {
    return full({}, value, dtype, device);
  }

  /// ---- metadata
  bool defined() const { return impl_ != nullptr; }
  /// The Dims, in storage-layout order.
  const Dims& dims() const;
  /// The element type.
  DType dtype() const;
  /// Where the storage lives.
  Device device() const;
  /// The number of Dims.
  size_t ndim() const { return dims().size(); }
  /// The element count: the product of the Dims' extents (padded frames included).
  int64_t numel() const;
  /// True if `d` is one of dims().
  bool has_dim(const Dim& d) const;
  /// Position of `d` in the storage layout; throws if absent.
  size_t axis_of(const Dim& d) const;
  std::span<const int64_t> strides() const;  ///< in elements, per Dim in dims() order
  bool is_contiguous() const;                    ///< row-major in dims() order

  /// Optional tags: the feature Dim, and for integer tensors the Dim its values index.
  std::optional<Dim> feature_dim() const;
  /// The Dim this integer tensor's values index, if tagged.
  std::optional<Dim> sparse_dim() const;
  /// The same tensor with feature_dim() set to `d` (one of dims()) or cleared; shares storage.
  Tensor with_feature_dim(std::optional<Dim> d) const;
  /// The same tensor with sparse_dim() set to `d` (integer tensors only) or cleared; shares storage.
  Tensor with_sparse_dim(std::optional<Dim> d) const;

  /// ---- layout and conversion
  /// Same values, stored row-major in `order` (a permutation of dims()); copies only if needed.
  Tensor transpose_to(const Dims& order) const;
  /// Same values, stored row-major in dims() order; copies only if needed.
  Tensor contiguous() const { return transpose_to(dims()); }
  /// The values cast to `dt` (this tensor itself if it already has it); differentiable between
  /// the floating dtypes (f32, f64, bf16, f16) in every direction, the gradient cast back.
  Tensor astype(DType dt) const;
  /// A copy on `dev` (this tensor itself if already there); differentiable.
  Tensor to(Device dev) const;

  /// ---- export: values row-major in `order` (default: dims()).
  template <class T>
  std::vector<T> to_vector(const Dims& order) const {
    Tensor t = transpose_to(order).astype(dtype_of<T>()).to(Device::cpu());
    const T* p = static_cast<const T*>(t.data_ptr());
    return std::vector<T>(p, p + t.numel());
  }
  /// The values row-major in dims() order, cast to T.
  template <class T>
  std::vector<T> to_vector() const { return to_vector<T>(dims()); }
  template <class T>
  T item() const;  ///< the single value of a scalar (or one-element) tensor

  /// ---- autograd (see autograd.h)
  bool requires_grad() const;
  /// A leaf that records gradients (or, with false, a tensor that does not); shares storage.
  /// Floating dtypes only (f32, f64, bf16, f16); a half leaf's gradient is stored in its dtype.
  Tensor with_requires_grad(bool on = true) const;
  /// Same values, cut from the graph.
  Tensor detach() const;
  /// The gradient accumulated by backward() into this leaf (undefined before any).
  Tensor grad() const;
  /// Replaces grad() of this leaf with `g` (same Dims, dtype and device; undefined clears it).
  void set_grad(const Tensor& g) const;
  /// Clears grad() (makes it undefined).
  void zero_grad() const { set_grad(Tensor()); }

  /// In-place overwrite with src's values (same Dims, any layout; cast to this dtype). For
  /// parameter updates and loading: the tensor keeps its identity, grad and optimizer state.
  /// Never use it on a tensor whose old values a recorded graph still needs.
  void copy_from(const Tensor& src) const;

  /// Raw pointer to the first element (CPU tensors; respects strides()).
  const void* data_ptr() const;

  /// "Tensor[f32, cpu]{batch:8, time:<=50 (dyn), feature:512}"
  std::string str() const;
  /// Header plus values (at most `max_values` printed).
  std::string to_string(size_t max_values = 200) const;

  /// The implementation object (used by the library itself); throws if undefined.
  const TensorImpl& impl() const;
  /// The shared implementation pointer (null if undefined).
  const std::shared_ptr<const TensorImpl>& impl_ptr() const { return impl_; }

 private:
  std::shared_ptr<const TensorImpl> impl_;
};

/// Writes t.str().
std::ostream& operator<<(std::ostream& os, const Tensor& t);

}  // namespace dimx

namespace dimx {
template <class T>
T Tensor::item() const {
  if (numel() != 1) throw Error("item: expected one element, got " + str());
  return to_vector<T>()[0];
}
}  // namespace dimx

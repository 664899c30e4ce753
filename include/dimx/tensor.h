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

class Tensor {
 public:
  Tensor() = default;  ///< undefined; most calls on it throw
  explicit Tensor(std::shared_ptr<const TensorImpl> impl) : impl_(std::move(impl)) {}

  /// ---- construction (data is row-major over `dims` in the given order)
  static Tensor from_raw(Dims dims, DType dtype, const void* data, size_t count);
  template <class T>
  static Tensor from_vector(Dims dims, std::span<const T> data) {
    return from_raw(std::move(dims), dtype_of<T>(), data.data(), data.size());
  }
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
  static Tensor zeros(Dims dims, DType dtype = DType::f32, Device device = Device::cpu()) {
    return full(std::move(dims), 0, dtype, device);
  }
  static Tensor ones(Dims dims, DType dtype = DType::f32, Device device = Device::cpu()) {
    return full(std::move(dims), 1, dtype, device);
  }
  static Tensor scalar(double value, DType dtype = DType::f32, Device device = Device::cpu()) {
    return full({}, value, dtype, device);
  }

  /// ---- metadata
  bool defined() const { return impl_ != nullptr; }
  const Dims& dims() const;
  DType dtype() const;
  Device device() const;
  size_t ndim() const { return dims().size(); }
  int64_t numel() const;
  bool has_dim(const Dim& d) const;
  /// Position of `d` in the storage layout; throws if absent.
  size_t axis_of(const Dim& d) const;
  const std::vector<int64_t>& strides() const;  ///< in elements, per Dim in dims() order
  bool is_contiguous() const;                    ///< row-major in dims() order

  /// Optional tags: the feature Dim, and for integer tensors the Dim its values index.
  std::optional<Dim> feature_dim() const;
  std::optional<Dim> sparse_dim() const;
  Tensor with_feature_dim(std::optional<Dim> d) const;
  Tensor with_sparse_dim(std::optional<Dim> d) const;

  /// ---- layout and conversion
  /// Same values, stored row-major in `order` (a permutation of dims()); copies only if needed.
  Tensor transpose_to(const Dims& order) const;
  Tensor contiguous() const { return transpose_to(dims()); }
  Tensor astype(DType dt) const;
  Tensor to(Device dev) const;

  /// ---- export: values row-major in `order` (default: dims()).
  template <class T>
  std::vector<T> to_vector(const Dims& order) const {
    Tensor t = transpose_to(order).astype(dtype_of<T>()).to(Device::cpu());
    const T* p = static_cast<const T*>(t.data_ptr());
    return std::vector<T>(p, p + t.numel());
  }
  template <class T>
  std::vector<T> to_vector() const { return to_vector<T>(dims()); }
  template <class T>
  T item() const;  ///< the single value of a scalar (or one-element) tensor

  /// ---- autograd (see autograd.h)
  bool requires_grad() const;
  /// A leaf that records gradients (or, with false, a tensor that does not); shares storage.
  Tensor with_requires_grad(bool on = true) const;
  /// Same values, cut from the graph.
  Tensor detach() const;
  /// The gradient accumulated by backward() into this leaf (undefined before any).
  Tensor grad() const;
  void set_grad(const Tensor& g) const;
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

  const TensorImpl& impl() const;
  const std::shared_ptr<const TensorImpl>& impl_ptr() const { return impl_; }

 private:
  std::shared_ptr<const TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

}  // namespace dimx

namespace dimx {
template <class T>
T Tensor::item() const {
  if (numel() != 1) throw Error("item: expected one element, got " + str());
  return to_vector<T>()[0];
}
}  // namespace dimx

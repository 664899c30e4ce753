#pragma once
// Internal representation of tensors: Dims with per-Dim strides into shared storage.
#include <dimx/tensor.h>

#include <boost/container/small_vector.hpp>

#include <functional>
#include <memory>
#include <span>

#include "pooled.h"

namespace dimx {

// Extents and strides live inline up to 6 Dims: building one for an op allocates nothing.
using Shape = boost::container::small_vector<int64_t, 6>;
using Strides = boost::container::small_vector<int64_t, 6>;

// A device buffer; freed by the backend that allocated it.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  // Set for storage no op may write in place (a Dim's lengths): copy_from refuses it.
  bool read_only = false;
  std::function<void(void*)> release;
  ~Storage() {
    if (release) release(data);
  }
};

struct AutogradMeta;

struct TensorImpl {
  Dims dims;
  Strides strides;  // elements; 0 for broadcast views
  int64_t offset = 0;
  DType dtype = DType::f32;
  std::shared_ptr<Storage> storage;
  std::optional<Dim> feature_dim;
  std::optional<Dim> sparse_dim;
  std::shared_ptr<AutogradMeta> autograd;  // null: no gradient recorded or wanted

  char* data() const { return static_cast<char*>(storage->data) + offset * int64_t(dtype_size(dtype)); }
  Device device() const { return storage->device; }
};

// Fresh contiguous tensor (uninitialized) on `device`. Throws, naming `op` and the Dims, when
// the element count or the byte size overflows.
Tensor empty(Dims dims, DType dtype, Device device, const char* op);
// Fresh contiguous tensor over x's Dims in x's order, on x's device (its element count is
// known to fit, so only the byte size of `dtype` is checked).
Tensor empty_like(const Tensor& x, DType dtype, const char* op);
// A view of `base`'s storage with new dims/strides/offset; tags are taken from `base` where
// their Dims remain. Its element count must fit in int64 (checked), so every tensor has one.
Tensor make_view(const Tensor& base, Dims dims, Strides strides, int64_t offset);

Shape extents(const Dims& dims);
// Product of the extents; throws dimx::Error on int64 overflow (never wraps).
int64_t numel_of(const Shape& shape);
// The element count of `dims`; throws naming `op` and the Dims on overflow.
int64_t checked_numel(const char* op, const Dims& dims);
// The same for `shape`, the extents of `dims` already at hand.
int64_t checked_numel(const char* op, const Dims& dims, const Shape& shape);
// a * b and a + b for sizes; throw naming `op` and `what` on int64 overflow.
int64_t checked_mul(const char* op, int64_t a, int64_t b, const std::string& what);
int64_t checked_add(const char* op, int64_t a, int64_t b, const std::string& what);
Strides contiguous_strides(const Shape& shape);
// Strides of `t` aligned to `out` (0 where t lacks the Dim). All of t's Dims must be in `out`.
Strides aligned_strides(const TensorImpl& t, const Dims& out);
// Extent and stride of `group` as one row-major index of t (stride 0 where t lacks a Dim);
// false if t's strides do not allow it. Extent-1 Dims are ignored.
bool merged_stride(const Tensor& t, std::span<const Dim> group, int64_t& extent, int64_t& stride);
// The same over a layout given as Dims and their strides.
bool merged_stride(const Dims& dims, std::span<const int64_t> strides, std::span<const Dim> group, int64_t& extent,
                   int64_t& stride);
inline bool merged_stride(const Tensor& t, const Dims& group, int64_t& extent, int64_t& stride) {
  return merged_stride(t, std::span<const Dim>(group.data(), group.size()), extent, stride);
}
// True if every Dim of `sub` is in `dims`.
bool contains_all(const Dims& dims, const Dims& sub);
bool contains(const Dims& dims, const Dim& d);
// Dims of `a` followed by those of `b` not in `a`.
Dims union_dims(const Dims& a, const Dims& b);
// Dims of `a` not in `b`.
Dims minus_dims(const Dims& a, const Dims& b);

// Common checks; each throws dimx::Error naming `op` and the operands' Dims.
void check_defined(const char* op, const Tensor& t);
void check_same_device(const char* op, const Tensor& a, const Tensor& b);
void check_has_dim(const char* op, const Tensor& t, const Dim& d, const char* what = "x");
void check_unique(const char* op, const Dims& dims);
[[noreturn]] void fail(const std::string& msg);
// A scalar operand `v` of `op` must be exactly representable in like's dtype: an integer tensor
// never silently truncates 2.5 to 2, nor wraps 1e10; a bool tensor takes 0 or 1 only.
void check_representable(const char* op, double v, const Tensor& like);
bool representable(double v, DType dt);

// Tensor::scalar(value, dtype, device) for use as an operand only (never written): on a GPU
// one shared read-only tensor per value, filled once.
Tensor constant_scalar(double value, DType dtype, Device device);
// Drops the cached constants of `device` (the CUDA layer's release at exit).
void release_device_constants(Device device);

// j - i + shift for key frame j and query frame i, over {query, key} (i64 on `device`): the
// index of a relative position in a table over relative positions (dot_attention's relative
// bias, BEATs's T5 buckets).
Tensor relative_positions(const Dim& query, const Dim& key, int64_t shift, Device device);

// x broadcast (zero-copy) so it has every Dim of `dims` too; its own Dims stay first.
Tensor broadcast_to_include(const Tensor& x, const Dims& dims);

}  // namespace dimx

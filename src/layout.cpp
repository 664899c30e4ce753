// Helpers shared by the frontend ops: layouts, Dim set algebra, and the common checks.
#include <dimx/reduce.h>

#include "autograd.h"
#include "backend.h"
#include "padding.h"
#include "tensor_impl.h"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace dimx {

Shape extents(const Dims& dims) {
  Shape s;
  s.reserve(dims.size());
  for (const Dim& d : dims) s.push_back(d.extent());
  return s;
}

namespace {
std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// The product of the extents, and whether the product of the non-zero ones overflows: a
// zero-size tensor with a huge shape is refused too, since reducing its empty Dim away
// would leave an element count that does not fit.
bool product(const Shape& shape, int64_t& n) {
  int64_t nonzero = 1;
  bool zero = false;
  for (int64_t e : shape) {
    if (e == 0) zero = true;
    else if (__builtin_mul_overflow(nonzero, e, &nonzero)) return false;
  }
  n = zero ? 0 : nonzero;
  return true;
}
}  // namespace

int64_t numel_of(const Shape& shape) {
  int64_t n;
  if (!product(shape, n)) fail("size overflow: the extents " + shape_str(shape) + " have more than 2^63 elements");
  return n;
}

int64_t checked_numel(const char* op, const Dims& dims) { return checked_numel(op, dims, extents(dims)); }

int64_t checked_numel(const char* op, const Dims& dims, const Shape& shape) {
  int64_t n;
  if (!product(shape, n)) fail(std::string(op) + ": the element count of " + dims_str(dims) + " overflows int64");
  return n;
}

int64_t checked_mul(const char* op, int64_t a, int64_t b, const std::string& what) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) fail(std::string(op) + ": " + what + " overflows int64");
  return r;
}

int64_t checked_add(const char* op, int64_t a, int64_t b, const std::string& what) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) fail(std::string(op) + ": " + what + " overflows int64");
  return r;
}

bool merged_stride(const Dims& dims, std::span<const int64_t> strides, std::span<const Dim> group, int64_t& extent,
                   int64_t& stride) {
  extent = 1;
  stride = 0;
  int64_t expect = -1;
  for (size_t i = group.size(); i-- > 0;) {
    const int64_t e = group[i].extent();
    extent *= e;
    if (e == 1) continue;
    const auto it = std::find(dims.begin(), dims.end(), group[i]);
    const int64_t s = it == dims.end() ? 0 : strides[size_t(it - dims.begin())];
    if (expect < 0) stride = s;
    else if (s != expect) return false;
    expect = s * e;
  }
  return true;
}

bool merged_stride(const Tensor& t, std::span<const Dim> group, int64_t& extent, int64_t& stride) {
  const TensorImpl& ti = t.impl();
  return merged_stride(ti.dims, {ti.strides.data(), ti.strides.size()}, group, extent, stride);
}

Strides contiguous_strides(const Shape& shape) {
  Strides s(shape.size());
  int64_t acc = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

bool contains(const Dims& dims, const Dim& d) { return std::find(dims.begin(), dims.end(), d) != dims.end(); }

bool contains_all(const Dims& dims, const Dims& sub) {
  for (const Dim& d : sub)
    if (!contains(dims, d)) return false;
  return true;
}

Dims union_dims(const Dims& a, const Dims& b) {
  Dims out = a;
  for (const Dim& d : b)
    if (!contains(out, d)) out.push_back(d);
  return out;
}

Dims minus_dims(const Dims& a, const Dims& b) {
  Dims out;
  for (const Dim& d : a)
    if (!contains(b, d)) out.push_back(d);
  return out;
}

Strides aligned_strides(const TensorImpl& t, const Dims& out) {
  if (t.dims == out) return t.strides;  // already aligned (an extent-1 Dim's stride never matters)
  Strides s(out.size(), 0);
  for (size_t i = 0; i < t.dims.size(); ++i) {
    auto it = std::find(out.begin(), out.end(), t.dims[i]);
    if (it == out.end()) fail("internal: dim " + t.dims[i].str() + " missing in " + dims_str(out));
    if (t.dims[i].extent() != 1) s[size_t(it - out.begin())] = t.strides[i];
  }
  return s;
}

void fail(const std::string& msg) { throw Error(msg); }

bool representable(double v, DType dt) {
  switch (dt) {
    case DType::i32: return v == std::floor(v) && v >= -2147483648.0 && v <= 2147483647.0;
    // 2^63 itself is out of range; every double below it is an exact int64.
    case DType::i64: return v == std::floor(v) && v >= -9223372036854775808.0 && v < 9223372036854775808.0;
    case DType::boolean: return v == 0 || v == 1;
    default: return true;  // floating: rounding to the dtype is the usual IEEE conversion
  }
}

void check_representable(const char* op, double v, const Tensor& like) {
  if (representable(v, like.dtype())) return;
  std::ostringstream os;
  os.precision(17);
  os << v;
  fail(std::string(op) + ": the scalar " + os.str() + " is not representable in " + dtype_name(like.dtype()) +
       " (x = " + like.str() + "); astype() to a floating dtype first");
}

void check_defined(const char* op, const Tensor& t) {
  if (!t.defined()) fail(std::string(op) + ": got an undefined tensor");
}

void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  if (!(a.device() == b.device()))
    fail(std::string(op) + ": operands on different devices: " + a.str() + " vs " + b.str());
}

void check_has_dim(const char* op, const Tensor& t, const Dim& d, const char* what) {
  if (t.has_dim(d)) return;
  std::string hint;
  for (const Dim& o : t.dims())
    if (o.name() == d.name() && !d.name().empty())
      hint = " (it has a different Dim also named '" + d.name() + "': Dims match by identity, not by name)";
  fail(std::string(op) + ": dim '" + d.str() + "' not in " + what + " = " + dims_str(t.dims()) + hint);
}

void check_unique(const char* op, const Dims& dims) {
  for (size_t i = 0; i < dims.size(); ++i)
    for (size_t j = i + 1; j < dims.size(); ++j)
      if (dims[i] == dims[j]) fail(std::string(op) + ": dim '" + dims[i].str() + "' given twice in " + dims_str(dims));
}

Tensor empty(Dims dims, DType dtype, Device device, const char* op) {
  auto impl = make_pooled<TensorImpl>();
  // Strides and the element count in one pass; the full check (with its message) only where
  // the running product might have overflowed or a Dim is empty.
  impl->strides.resize(dims.size());
  int64_t n = 1;
  bool exact = true;
  for (size_t i = dims.size(); i-- > 0;) {
    impl->strides[i] = n;
    const int64_t e = dims[i].extent();
    if (e == 0 || __builtin_mul_overflow(n, e, &n)) exact = false;
  }
  if (!exact) {
    n = checked_numel(op, dims);
    impl->strides = contiguous_strides(extents(dims));
  }
  int64_t bytes;
  if (__builtin_mul_overflow(n, int64_t(dtype_size(dtype)), &bytes))
    fail(std::string(op) + ": the byte size of " + dims_str(dims) + " (" + dtype_name(dtype) + ") overflows int64");
  impl->dims = std::move(dims);
  impl->dtype = dtype;
  impl->storage = backend::backend_for(device).allocate(size_t(bytes));
  return Tensor(std::move(impl));
}

Tensor empty_like(const Tensor& x, DType dtype, const char* op) {
  const TensorImpl& t = x.impl();
  auto impl = make_pooled<TensorImpl>();
  impl->dims = t.dims;
  impl->strides.resize(t.dims.size());
  int64_t n = 1;
  for (size_t i = t.dims.size(); i-- > 0;) {
    impl->strides[i] = n;
    n *= t.dims[i].extent();
  }
  int64_t bytes;
  if (__builtin_mul_overflow(n, int64_t(dtype_size(dtype)), &bytes))
    fail(std::string(op) + ": the byte size of " + dims_str(t.dims) + " (" + dtype_name(dtype) + ") overflows int64");
  impl->dtype = dtype;
  impl->storage = backend::backend_for(t.device()).allocate(size_t(bytes));
  return Tensor(std::move(impl));
}

Tensor make_view(const Tensor& base, Dims dims, Strides strides, int64_t offset) {
  const TensorImpl& b = base.impl();
  checked_numel("view", dims);
  auto impl = make_pooled<TensorImpl>();
  impl->dims = std::move(dims);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = b.dtype;
  impl->storage = b.storage;
  if (b.feature_dim && contains(impl->dims, *b.feature_dim)) impl->feature_dim = b.feature_dim;
  impl->sparse_dim = b.sparse_dim;
  return Tensor(std::move(impl));
}

Tensor broadcast_to_include(const Tensor& x, const Dims& dims) {
  Dims missing = minus_dims(dims, x.dims());
  if (missing.empty()) return x;
  checked_numel("broadcast", union_dims(x.dims(), missing));
  Dims nd = x.dims();
  Strides ns = x.impl().strides;
  for (const Dim& d : missing) {
    nd.push_back(d);
    ns.push_back(0);
  }
  return record("broadcast", make_view(x, nd, ns, x.impl().offset), {x}, [missing](const Tensor& g) {
    return std::vector<Tensor>{sum_over(g, missing)};
  });
}

}  // namespace dimx

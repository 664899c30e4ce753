// XPOS: the positions (r, m) of each sequence's frames come from a few dimx ops on tiny f64
// tensors over the axis and the Dims of its lengths and of the offset (on x's device, no host
// round trip); the backend computes the angles and scales per pair and rotates x in one pass,
// reading x in place where its feature Dim is contiguous. The gradient is the inverse rotation.
#include "xpos.h"

#include <dimx/autograd.h>
#include <dimx/elementwise.h>
#include <dimx/reduce.h>
#include <dimx/shape.h>

#include <cmath>

#include "autograd.h"
#include "backend.h"

namespace dimx {

namespace {

// g (any layout, any dtype) with `rows` outermost and `feature` innermost and contiguous.
Tensor rows_then_feature(const Tensor& t, const Dims& rows, const Dim& feature) {
  if (t.strides()[t.axis_of(feature)] == 1) return t;
  Dims order = rows;
  order.push_back(feature);
  return t.transpose_to(order);
}

// t's strides over `rows` (0 where t lacks a Dim); t's other Dim (the feature) is left out.
Strides row_strides(const Tensor& t, const Dims& rows) {
  Strides s;
  for (const Dim& d : rows) s.push_back(t.has_dim(d) ? t.strides()[t.axis_of(d)] : 0);
  return s;
}

}  // namespace

Tensor xpos_rotate(const char* op, const Tensor& x, const Dim& axis, const Dim& feature, const Tensor& offset,
                   bool downscale, double scale_base, const Tensor& zeta, bool check_offset) {
  check_defined(op, x);
  check_has_dim(op, x, axis);
  check_has_dim(op, x, feature);
  if (feature.is_dynamic() || feature.size() % 2 != 0)
    fail(std::string(op) + ": xpos needs an even, static feature Dim, got '" + feature.str() + "' in x = " + x.str());
  if (!(scale_base > 0) || !std::isfinite(scale_base))
    fail(std::string(op) + ": xpos scale_base must be positive and finite, got " + std::to_string(scale_base));
  if (!is_floating(x.dtype()) && !is_half(x.dtype())) fail(std::string(op) + ": xpos needs a floating x, got " + x.str());
  const int64_t pairs = feature.size() / 2;
  if (zeta.defined() && zeta.numel() != pairs)
    fail(std::string(op) + ": xpos scale " + zeta.str() + " must have feature / 2 = " + std::to_string(pairs) +
         " entries (x = " + x.str() + ")");
  const Device dev = x.device();
  const DType dt = x.dtype();

  // Row r = offset + l and its position m = floor(-n / 2) + r, n = the sequence's length + offset.
  Tensor r, m, log_zeta;
  {
    NoGradGuard ng;
    Tensor off;
    if (offset.defined()) {
      if (!is_integer(offset.dtype())) fail(std::string(op) + ": xpos offset must be integer, got " + offset.str());
      for (const Dim& d : offset.dims())
        if (!x.has_dim(d) || d == axis || d == feature)
          fail(std::string(op) + ": xpos offset " + offset.str() + " must be over batch Dims of x = " + x.str());
      if (check_offset && reduce_min(offset, offset.dims()).to(Device::cpu()).item<int64_t>() < 0)
        fail(std::string(op) + ": xpos offset must be >= 0, got " + offset.str());
      off = offset.with_sparse_dim(std::nullopt).astype(DType::f64).to(dev);
    }
    const Tensor l = range_over_dim(axis, DType::f64, dev).with_sparse_dim(std::nullopt);
    r = off.defined() ? add(l, off, true) : l;
    if (axis.is_static() && !off.defined()) {
      m = r + std::floor(double(axis.size()) * -0.5);
    } else {
      Tensor n = axis.lengths(dev).astype(DType::f64);
      if (off.defined()) n = add(n, off, true);
      m = add(floor(n * -0.5), r, true);
    }
    if (zeta.defined()) log_zeta = log(zeta.detach().to(dev).astype(DType::f64)).contiguous();
  }

  // x with every Dim of the positions (lengths may live on Dims x lacks: then the result gains
  // them), its feature Dim innermost and contiguous.
  Tensor xs = x.detach();
  const Dims extra = minus_dims(union_dims(r.dims(), m.dims()), xs.dims());
  if (!extra.empty()) xs = broadcast_to_include(xs, extra);
  const Dims rows = minus_dims(xs.dims(), {feature});
  xs = rows_then_feature(xs, rows, feature);
  Dims out_dims = rows;
  out_dims.push_back(feature);
  Tensor y = empty(out_dims, dt, dev, op);

  backend::Xpos a;
  a.shape = extents(rows);
  a.x_strides = row_strides(xs, rows);
  a.y_strides = row_strides(y, rows);
  a.r_strides = row_strides(r, rows);
  a.m_strides = row_strides(m, rows);
  a.pairs = pairs;
  a.x = xs.impl().data();
  a.y = y.impl().data();
  a.r = static_cast<const double*>(r.data_ptr());
  a.m = static_cast<const double*>(m.data_ptr());
  a.log_zeta = log_zeta.defined() ? static_cast<const double*>(log_zeta.data_ptr()) : nullptr;
  a.scale_base = scale_base;
  a.downscale = downscale;
  if (y.numel() > 0) backend::backend_for(dev).xpos(dt, a);
  if (!needs_grad({&x})) return y;
  return record("xpos", y, {x}, [=](const Tensor& g) {
    // The inverse rotation (theta negated, the same scale) on the output's gradient.
    const Tensor gs = rows_then_feature(g.astype(dt), rows, feature);
    Tensor dx = empty(out_dims, dt, dev, "xpos");
    backend::Xpos b = a;
    b.x = gs.impl().data();
    b.x_strides = row_strides(gs, rows);
    b.y = dx.impl().data();
    b.r = static_cast<const double*>(r.data_ptr());  // keeps the tables alive with the closure
    b.m = static_cast<const double*>(m.data_ptr());
    b.log_zeta = log_zeta.defined() ? static_cast<const double*>(log_zeta.data_ptr()) : nullptr;
    b.inverse = true;
    if (dx.numel() > 0) backend::backend_for(dev).xpos(dt, b);
    return std::vector<Tensor>{sum_to(dx, x)};
  });
}

}  // namespace dimx

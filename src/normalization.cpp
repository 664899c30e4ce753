// layer_norm: x as a contiguous [A, N, B] block with the feature Dim in the middle (in x's own
// Dim order), one fused backend primitive each way; the backward's weight and bias sums leave
// out the rows that are padding of x's dynamic Dims.
#include <dimx/normalization.h>

#include <dimx/elementwise.h>
#include <dimx/shape.h>

#include <cmath>

#include "autocast.h"
#include "autograd.h"
#include "backend.h"
#include "block.h"
#include "tensor_impl.h"

namespace dimx {

namespace {

constexpr const char* kOp = "layer_norm";

void check_param(const Tensor& x, const Tensor& p, const char* what, const Dim& feature) {
  if (!p.defined()) return;
  if (!(p.ndim() == 1 && p.has_dim(feature)))
    fail(std::string(kOp) + ": " + what + " must have exactly the feature Dim {" + feature.str() + "}, got " +
         dims_str(p.dims()) + " (x = " + x.str() + ")");
  if (p.dtype() != x.dtype())
    fail(std::string(kOp) + ": dtype mismatch, " + what + " = " + p.str() + " vs x = " + x.str() + "; cast with astype()");
  check_same_device(kOp, x, p);
}

const void* ptr(const Tensor& t) { return t.defined() ? t.impl().data() : nullptr; }

// True for the rows of block `b` ([A, B] over its outer Dims) that are no padding frame of any
// dynamic Dim among them (whose lengths the block has); undefined when every row is valid.
Tensor valid_rows(const Block& b) {
  const Dims outer = b.outer();
  const Device dev = b.x.device();
  Dims padded;
  for (const Dim& d : outer)
    if (d.is_padded() && contains_all(outer, d.lengths().dims())) padded.push_back(d);
  if (padded.empty()) return Tensor();
  return broadcast_to_include(sequence_mask(padded, dev), outer).transpose_to(outer);
}

}  // namespace

Tensor layer_norm(const Tensor& x, const Dim& feature, const Tensor& weight, const Tensor& bias, double eps) {
  if (autocast_widens({&x, &weight, &bias}))
    return layer_norm(autocast_f32(x), feature, autocast_f32(weight), autocast_f32(bias), eps);
  check_defined(kOp, x);
  check_has_dim(kOp, x, feature);
  if (feature.is_dynamic()) fail(std::string(kOp) + ": the feature Dim must be static, got '" + feature.str() + "' in x = " + x.str());
  if (!is_floating(x.dtype()) && !is_half(x.dtype()))
    fail(std::string(kOp) + ": needs a floating x (f32, f64, bf16, f16), got x = " + x.str());
  if (!(eps >= 0) || !std::isfinite(eps))
    fail(std::string(kOp) + ": eps must be >= 0 and finite, got " + std::to_string(eps) + " (x = " + x.str() + ")");
  check_param(x, weight, "weight", feature);
  check_param(x, bias, "bias", feature);

  const DType dt = x.dtype(), sdt = dt == DType::f64 ? DType::f64 : DType::f32;
  const Device dev = x.device();
  // In x's own Dim order: a view when x is contiguous, else one copy.
  const Block b = as_block(x.detach().contiguous(), feature);
  const Tensor w = weight.defined() ? weight.detach().contiguous() : Tensor();
  const Tensor bi = bias.defined() ? bias.detach().contiguous() : Tensor();
  const bool grad = needs_grad({&x, &weight, &bias});
  Tensor y = empty_like(b.x, dt, kOp);
  Tensor mean = grad ? empty(b.outer(), sdt, dev, kOp) : Tensor();
  Tensor rstd = grad ? empty(b.outer(), sdt, dev, kOp) : Tensor();
  const backend::LayerNorm a{b.A, b.N, b.B, eps, ptr(b.x), ptr(w), ptr(bi)};
  backend::backend_for(dev).layer_norm(dt, a, y.impl().data(), grad ? mean.impl().data() : nullptr,
                                       grad ? rstd.impl().data() : nullptr);
  if (x.feature_dim()) y = y.with_feature_dim(x.feature_dim());
  if (!grad) return y;
  return record(kOp, y, {x, weight, bias}, [=](const Tensor& g) {
    const bool want_x = x.requires_grad();
    const bool want_w = weight.defined() && weight.requires_grad();
    const bool want_b = bias.defined() && bias.requires_grad();
    const Tensor gb = g.astype(dt).transpose_to(b.x.dims());
    Tensor dx = want_x ? empty_like(b.x, dt, kOp) : Tensor();
    Tensor dw = want_w ? empty({feature}, dt, dev, kOp) : Tensor();
    Tensor db = want_b ? empty({feature}, dt, dev, kOp) : Tensor();
    const Tensor mask = want_w || want_b ? valid_rows(b) : Tensor();
    backend::LayerNorm ab = a;
    ab.x = ptr(b.x);  // keeps b.x, w and bi alive with the closure
    ab.weight = ptr(w);
    ab.bias = ptr(bi);
    backend::backend_for(dev).layer_norm_backward(
        dt, ab, mean.impl().data(), rstd.impl().data(), gb.impl().data(), static_cast<const bool*>(ptr(mask)),
        want_x ? dx.impl().data() : nullptr, want_w ? dw.impl().data() : nullptr, want_b ? db.impl().data() : nullptr);
    return std::vector<Tensor>{dx, dw, db};
  });
}

}  // namespace dimx

#include <dimx/softmax.h>

#include <dimx/elementwise.h>
#include <dimx/reduce.h>
#include <dimx/shape.h>

#include "autocast.h"
#include "autograd.h"
#include "backend.h"
#include "block.h"
#include "half_compute.h"
#include "softmax_grad.h"
#include "tensor_impl.h"

namespace dimx {

namespace {

Tensor softmax_impl(bool log, const Tensor& x0, const Dim& axis, bool use_mask) {
  if (autocast_widens({&x0})) return softmax_impl(log, autocast_f32(x0), axis, use_mask);
  const char* op = log ? "log_softmax" : "softmax";
  check_defined(op, x0);
  check_has_dim(op, x0, axis);
  if (!is_float_like(x0.dtype())) fail(std::string(op) + ": needs a floating dtype, got x = " + x0.str());
  if (is_half(x0.dtype())) return round_to(softmax_impl(log, widen_half(x0), axis, use_mask), x0.dtype());
  bool masked = use_mask && axis.is_dynamic();
  Tensor xb;  // x0 over the Dims of axis's lengths too, where they are needed
  if (masked) xb = broadcast_to_include(x0, axis.lengths().dims());
  const Tensor& x = masked ? xb : x0;
  Block b = as_block(x, axis);
  Tensor len = masked ? block_lengths(b, axis) : Tensor();
  Tensor y = empty_like(b.x, x.dtype(), op);
  backend::backend_for(x.device())
      .softmax(log, x.dtype(), b.A, b.N, b.B, b.x.impl().data(),
               masked ? static_cast<const int64_t*>(len.data_ptr()) : nullptr, y.impl().data());
  if (x.feature_dim()) y = y.with_feature_dim(x.feature_dim());
  if (!needs_grad({&x0})) return y;
  return record(op, y, {x0}, [log, x0, axis, use_mask, y](const Tensor& g) {
    return std::vector<Tensor>{sum_to(softmax_backward(log, y, g, axis, use_mask), x0)};
  });
}

}  // namespace

Tensor softmax_backward(bool log, const Tensor& y, const Tensor& g, const Dim& axis, bool use_mask) {
  if (is_half(y.dtype()))
    return round_to(softmax_backward(log, widen_half(y), widen_half(g), axis, use_mask), y.dtype());
  // One fused primitive over y as a contiguous block with `axis` in the middle, g laid out like it.
  const bool masked = use_mask && axis.is_dynamic();
  Block b = as_block(y, axis);
  Tensor gy = g.transpose_to(b.x.dims());
  Tensor len = masked ? block_lengths(b, axis) : Tensor();
  Tensor gx = empty_like(b.x, y.dtype(), log ? "log_softmax" : "softmax");
  backend::backend_for(y.device())
      .softmax_backward(log, y.dtype(), b.A, b.N, b.B, b.x.impl().data(), gy.impl().data(),
                        masked ? static_cast<const int64_t*>(len.data_ptr()) : nullptr, gx.impl().data());
  return gx;
}

Tensor softmax(const Tensor& x, const Dim& axis, bool use_mask) { return softmax_impl(false, x, axis, use_mask); }
Tensor log_softmax(const Tensor& x, const Dim& axis, bool use_mask) { return softmax_impl(true, x, axis, use_mask); }

}  // namespace dimx

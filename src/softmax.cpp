#include <dimx/softmax.h>

#include <dimx/elementwise.h>
#include <dimx/reduce.h>
#include <dimx/shape.h>

#include "autograd.h"
#include "backend.h"
#include "block.h"
#include "tensor_impl.h"

namespace dimx {

namespace {

Tensor softmax_impl(bool log, const Tensor& x0, const Dim& axis, bool use_mask) {
  const char* op = log ? "log_softmax" : "softmax";
  check_defined(op, x0);
  check_has_dim(op, x0, axis);
  if (!is_floating(x0.dtype())) fail(std::string(op) + ": needs a floating dtype, got x = " + x0.str());
  bool masked = use_mask && axis.is_dynamic();
  Tensor x = masked ? broadcast_to_include(x0, axis.lengths().dims()) : x0;
  Block b = as_block(x, {axis});
  Tensor len = masked ? block_lengths(b, axis) : Tensor();
  Tensor y = empty(b.x.dims(), x.dtype(), x.device(), op);
  backend::backend_for(x.device())
      .softmax(log, x.dtype(), b.A, b.N, b.B, b.x.impl().data(),
               masked ? static_cast<const int64_t*>(len.data_ptr()) : nullptr, y.impl().data());
  if (x.feature_dim()) y = y.with_feature_dim(x.feature_dim());
  if (!needs_grad({&x0})) return y;
  return record(op, y, {x0}, [op, log, x0, axis, masked, y](const Tensor& g) {
    // One fused primitive: d/dx softmax = y (g - sum(g y)), d/dx log_softmax = g - exp(y) sum(g),
    // sums over the valid frames and 0 on the padding. y is a contiguous block with `axis` in
    // the middle, and g is laid out like it.
    Block b = as_block(y, {axis});
    Tensor gy = g.transpose_to(y.dims());
    Tensor len = masked ? block_lengths(b, axis) : Tensor();
    Tensor gx = empty(y.dims(), y.dtype(), y.device(), op);
    backend::backend_for(y.device())
        .softmax_backward(log, y.dtype(), b.A, b.N, b.B, y.impl().data(), gy.impl().data(),
                          masked ? static_cast<const int64_t*>(len.data_ptr()) : nullptr, gx.impl().data());
    return std::vector<Tensor>{sum_to(gx, x0)};
  });
}

}  // namespace

Tensor softmax(const Tensor& x, const Dim& axis, bool use_mask) { return softmax_impl(false, x, axis, use_mask); }
Tensor log_softmax(const Tensor& x, const Dim& axis, bool use_mask) { return softmax_impl(true, x, axis, use_mask); }

}  // namespace dimx

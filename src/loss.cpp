// cross_entropy: lays logits out as a contiguous [A, N, B] block with the class Dim in the
// middle, targets and the valid-frame mask as [A, B], and calls the backend's fused primitive
// for the per-frame losses; the reductions are the public (masked) reduce ops.
#include <dimx/loss.h>

#include <dimx/elementwise.h>
#include <dimx/reduce.h>
#include <dimx/shape.h>

#include "autocast.h"
#include "autograd.h"
#include "backend.h"
#include "block.h"
#include "tensor_impl.h"

namespace dimx {

namespace {

constexpr const char* kOp = "cross_entropy";

bool same_dim_set(const Dims& a, const Dims& b) { return a.size() == b.size() && contains_all(a, b); }

void check_operands(const Tensor& logits, const Tensor& targets, const Dim& axis) {
  check_defined(kOp, logits);
  check_defined(kOp, targets);
  check_has_dim(kOp, logits, axis, "logits");
  if (axis.is_dynamic())
    fail(std::string(kOp) + ": the class Dim '" + axis.str() + "' must be static, got logits = " + logits.str());
  if (!is_floating(logits.dtype()) && !is_half(logits.dtype()))
    fail(std::string(kOp) + ": logits must be floating (f32, f64, bf16, f16), got logits = " + logits.str());
  if (!is_integer(targets.dtype()))
    fail(std::string(kOp) + ": targets must be integer class indices, got targets = " + targets.str());
  if (targets.sparse_dim() != std::optional<Dim>(axis))
    fail(std::string(kOp) + ": targets must index the class Dim '" + axis.str() + "' (sparse_dim), got targets = " +
         targets.str() + (targets.sparse_dim() ? " with sparse_dim '" + targets.sparse_dim()->str() + "'" : " with no sparse_dim"));
  const Dims frame = minus_dims(logits.dims(), {axis});
  if (!same_dim_set(targets.dims(), frame))
    fail(std::string(kOp) + ": targets must have exactly the Dims of logits other than '" + axis.str() + "', " +
         dims_str(frame) + ", got targets = " + targets.str() + ", logits = " + logits.str());
  check_same_device(kOp, logits, targets);
  for (const Dim& d : frame)
    if (d.is_dynamic() && (!contains_all(logits.dims(), d.lengths().dims()) || contains(d.lengths().dims(), axis)))
      fail(std::string(kOp) + ": the lengths of dynamic Dim '" + d.str() + "' are over " + dims_str(d.lengths().dims()) +
           ", which must be Dims of logits = " + logits.str() + " other than the class Dim '" + axis.str() + "'");
}

const bool* bool_ptr(const Tensor& t) { return t.defined() ? static_cast<const bool*>(t.data_ptr()) : nullptr; }

// The per-frame losses over `outer` (the block's Dims other than the class Dim) in the compute
// type, 0 on padded frames; recorded so that logits get their gradient.
Tensor frame_losses(const Tensor& logits, const Tensor& targets, const Dim& axis) {
  const DType dt = logits.dtype();
  const DType ct = dt == DType::f64 ? DType::f64 : DType::f32;
  const Device dev = logits.device();
  const Block b = as_block(logits, axis);
  const Dims outer = b.outer();
  const Tensor tgt = targets.with_sparse_dim(std::nullopt).astype(DType::i64).transpose_to(outer).contiguous();
  Dims dynamic;
  for (const Dim& d : outer)
    if (d.is_padded()) dynamic.push_back(d);
  // Valid frames as bool [A, B]; none when nothing is padded.
  const Tensor valid =
      dynamic.empty() ? Tensor()
                      : broadcast_to_include(sequence_mask(dynamic, dev), outer).transpose_to(outer).contiguous();
  Tensor loss = empty(outer, ct, dev, kOp), lse = empty(outer, ct, dev, kOp);
  const bool ok = backend::backend_for(dev).cross_entropy(
      dt, b.A, b.N, b.B, b.x.impl().data(), static_cast<const int64_t*>(tgt.data_ptr()), bool_ptr(valid),
      loss.impl().data(), lse.impl().data());
  if (!ok)
    fail(std::string(kOp) + ": a target on a valid frame is outside [0, " + std::to_string(axis.extent()) +
         ") for class Dim '" + axis.str() + "', logits = " + logits.str() + ", targets = " + targets.str());
  if (!needs_grad({&logits})) return loss;
  const Tensor x = b.x;
  const int64_t A = b.A, N = b.N, B = b.B;
  return record(kOp, loss, {logits}, [=](const Tensor& g0) {
    // g over the frames in the compute type; its padded entries are never used.
    const Tensor g = broadcast_to_include(g0.astype(ct), outer).transpose_to(outer).contiguous();
    Tensor dx = empty_like(x, dt, kOp);
    backend::backend_for(dev).cross_entropy_backward(dt, A, N, B, x.impl().data(),
                                                     static_cast<const int64_t*>(tgt.data_ptr()), bool_ptr(valid),
                                                     lse.impl().data(), g.impl().data(), dx.impl().data());
    return std::vector<Tensor>{dx};
  });
}

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, const Dim& axis, Reduction reduction) {
  if (autocast_widens({&logits})) return cross_entropy(autocast_f32(logits), targets, axis, reduction);
  check_operands(logits, targets, axis);
  Tensor loss = frame_losses(logits, targets, axis);
  const Dims frames = loss.dims();
  switch (reduction) {
    case Reduction::none: break;
    // Masked like every reduction (padded losses are 0 anyway); the mean of no frame is 0.
    case Reduction::sum: loss = frames.empty() ? loss : reduce_sum(loss, frames); break;
    case Reduction::mean: loss = frames.empty() ? loss : reduce_mean(loss, frames); break;
  }
  return loss;
}

}  // namespace dimx

#pragma once
/// \file
/// Fused, masked cross-entropy over a class Dim.
///
///   loss(frame) = logsumexp_axis(logits) - logits[axis = target]
///
/// computed in one pass over the logits (a stable log-sum-exp with the row maximum
/// subtracted; f32 for f32, bf16 and f16 logits, f64 for f64), without a log_softmax tensor.
/// A frame is one position of the Dims of logits other than `axis`; frames beyond the lengths
/// of a dynamic Dim are padding: their logits and targets are never used (NaN or any index
/// there changes nothing), their loss is 0 and their logits get a zero gradient. The
/// gradient, d loss / d logits = g * (softmax - onehot(target)), is recomputed from the saved
/// log-sum-exp, so neither the softmax nor a one-hot is materialized.
#include <dimx/tensor.h>

namespace dimx {

/// How cross_entropy() combines the per-frame losses.
enum class Reduction {
  none,  ///< one loss per frame, over the Dims of targets (0 on padded frames)
  sum,   ///< the sum over the valid frames (a scalar)
  mean   ///< the sum over the valid frames divided by their number; 0 when there is none
};

/// Cross-entropy of `logits` against the class indices `targets` along the class Dim `axis`.
///
/// Contract:
/// - logits: floating (f32, f64, bf16, f16), with the static Dim `axis` and any other Dims;
/// - targets: integer, with sparse_dim() == axis and exactly the Dims of logits other than
///   `axis` (in any order; nothing is broadcast), on the same device;
/// - the lengths of every dynamic Dim of logits must live on Dims of logits other than `axis`;
/// - a target outside [0, axis size) on a valid frame throws dimx::Error naming the op.
///
/// The result is f32, or f64 for f64 logits (bf16 and f16 logits give an f32 loss). It is
/// differentiable in logits (targets get no gradient); the gradient has no gradient of its own.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, const Dim& axis,
                     Reduction reduction = Reduction::mean);

}  // namespace dimx

#pragma once
/// \file
/// Contraction by Dim identity: Dims in `reduce` are summed over; Dims in both operands and
/// not reduced are batch Dims; the rest come from one side. Output layout: batch Dims (a's
/// order), a's own Dims, b's own Dims. Lowers to one batched GEMM; operands are copied only
/// where their strides cannot be expressed as a GEMM. Padded frames of a dynamic reduce Dim
/// never reach the result, whatever they hold (NaN, inf): the GEMM skips them where the Dims
/// their lengths run over are contracted too and K is laid out with the padded Dim innermost
/// (a weight gradient over {batch, time}), else they are selected out of both operands;
/// use_mask=false contracts them as stored. Gradients follow the same rule.
/// Floating dtypes (f32, f64; bf16 and f16 with f32 accumulation). Under autocast
/// (dimx/autocast.h) f32 operands are cast to the low dtype first, so the result is in it.
#include <dimx/tensor.h>

namespace dimx {

/// Contracts a and b over the Dims in `reduce` (see the file description).
Tensor matmul(const Tensor& a, const Tensor& b, const Dims& reduce, bool use_mask = true);
/// Contracts a and b over the single Dim `reduce`.
inline Tensor matmul(const Tensor& a, const Tensor& b, const Dim& reduce, bool use_mask = true) {
  return matmul(a, b, Dims{reduce}, use_mask);
}

/// matmul(a, b, reduce) + bias, with the bias added inside the GEMM (rounded once) where it
/// lies along b's own Dims only (a Linear's bias: {out} for x {..., in} and w {out, in}), has
/// the operands' dtype and no padded frame is masked; otherwise the same sum in two passes.
/// The bias broadcasts over the result's other Dims; its gradient is the sum over them, padded
/// frames left out. Under autocast all three are cast to the low dtype.
Tensor matmul_add(const Tensor& a, const Tensor& b, const Dims& reduce, const Tensor& bias, bool use_mask = true);
/// matmul_add over the single Dim `reduce`.
inline Tensor matmul_add(const Tensor& a, const Tensor& b, const Dim& reduce, const Tensor& bias,
                         bool use_mask = true) {
  return matmul_add(a, b, Dims{reduce}, bias, use_mask);
}

/// TF32 for f32 matmuls on GPUs that have it (10-bit mantissa products, f32 accumulation):
/// off by default, so f32 results match the CPU to f32 rounding. A process-wide switch.
void set_allow_tf32(bool on);
/// Whether TF32 is allowed (see set_allow_tf32()).
bool allow_tf32();

}  // namespace dimx

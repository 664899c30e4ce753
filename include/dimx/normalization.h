#pragma once
/// \file
/// Layer normalization over one Dim, a differentiable primitive (one fused kernel each way).
///
///   y = (x - mean) / sqrt(var + eps) * weight + bias
///
/// mean and the biased variance (divided by N, as torch.nn.functional.layer_norm) are taken over
/// `feature` only, for every index of x's other Dims (any number, any layout, padded or not:
/// each row is normalized on its own, so padded frames never change valid outputs). weight and
/// bias are optional, each over exactly {feature} with x's dtype and device. The result has x's
/// Dims in x's order. dtypes: f32 and f64, and bf16/f16 (computed in f32, stored in their dtype,
/// gradients too). Gradients flow to x, weight and bias (first
/// order); the weight and bias gradients leave out the padded frames of x's dynamic Dims and are
/// summed in a fixed order, so they are the same on every run.
#include <dimx/tensor.h>

namespace dimx {

/// x normalized over `feature` (static), then scaled by weight and shifted by bias where given
/// (see the file comment); eps >= 0 is added to the variance.
Tensor layer_norm(const Tensor& x, const Dim& feature, const Tensor& weight = {}, const Tensor& bias = {},
                  double eps = 1e-5);

}  // namespace dimx

#pragma once
/// \file
/// LayerNorm over one Dim (torch.nn.LayerNorm with normalized_shape = [feature]).
///
///   y = (x - mean) / sqrt(var + eps) * weight + bias
/// mean and the biased variance (divided by N, not N - 1) are taken over `feature` only; x may
/// have any other Dims in any layout. Parameters (elementwise_affine): weight {feature} = 1,
/// bias {feature} = 0 (bias = false leaves it empty, like PyTorch's bias=False). `feature` must
/// be static. The result has x's Dims and layout. The module calls dimx::layer_norm (one fused
/// primitive each way; dimx/normalization.h).
#include <dimx/nn/module.h>

namespace dimx::nn {

/// Layer normalization over `feature` (see the file comment).
struct LayerNorm : Module {
  Dim feature;  ///< the normalized Dim
  double eps;   ///< added to the variance before the square root
  /// Parameters: weight and bias {feature}, both empty without elementwise_affine.
  BOOST_HANA_DEFINE_STRUCT(LayerNorm, (std::optional<Tensor>, weight), (std::optional<Tensor>, bias));

  /// feature must be static, eps >= 0 and dtype floating; bias = false leaves bias empty.
  explicit LayerNorm(Dim feature, double eps = 1e-5, bool elementwise_affine = true, bool bias = true,
                     DType dtype = DType::f32);

  /// weight = 1, bias = 0 (the generator is not used).
  void reset_parameters(Generator& gen);
  /// x normalized over `feature`, with x's Dims and layout.
  Tensor operator()(const Tensor& x) const;
  /// "feature=..., eps=..., affine=true|false", for describe().
  std::string extra_repr() const;
};

}  // namespace dimx::nn

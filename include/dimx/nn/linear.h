#pragma once
/// \file
/// Linear: y = x W^T + b, contracting `in_dim` (PyTorch's nn.Linear, by Dim).
///
/// Parameters (PyTorch names and layout):
///   weight  {out_dim, in_dim}   row-major [out, in], as in a PyTorch state_dict
///   bias    {out_dim}           optional (bias = false leaves it empty)
/// Init (reset_parameters, as PyTorch): weight and bias ~ U(-1/sqrt(in), 1/sqrt(in)), which is
/// kaiming_uniform(a = sqrt(5)) for the weight.
/// Forward: x must have in_dim (static) and must not have out_dim; the result has x's other
/// Dims plus out_dim (layout: x's Dims, then out_dim). Batch Dims are any Dims of x; the input
/// layout never changes the result. Errors name the op and the Dims involved.
/// Under autocast (dimx/autocast.h) x, weight and bias are cast to the low dtype (the weight's
/// cast once per outermost guard) and so is the result, as PyTorch's F.linear.
#include <dimx/nn/module.h>

namespace dimx::nn {

/// An affine map from `in_dim` to `out_dim` (see the file comment).
struct Linear : Module {
  Dim in_dim;   ///< the input features, contracted
  Dim out_dim;  ///< the output features
  /// Parameters: weight {out_dim, in_dim} and the optional bias {out_dim}.
  BOOST_HANA_DEFINE_STRUCT(Linear, (Tensor, weight), (std::optional<Tensor>, bias));

  /// in_dim and out_dim must be static and distinct, dtype f32 or f64 (autocast gives bf16 / f16 compute).
  Linear(Dim in_dim, Dim out_dim, Generator& gen, bool bias = true, DType dtype = DType::f32);

  /// Redraws weight and bias in place (identity and grad slots are kept).
  void reset_parameters(Generator& gen);
  /// x W^T + b: x {..., in_dim} -> {..., out_dim}.
  Tensor operator()(const Tensor& x) const;
  /// "in=..., out=..., bias=true|false", for describe().
  std::string extra_repr() const;
};

}  // namespace dimx::nn

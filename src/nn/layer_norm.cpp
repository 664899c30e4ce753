#include <dimx/autograd.h>
#include <dimx/nn/layer_norm.h>
#include <dimx/normalization.h>

#include <sstream>

namespace dimx::nn {

LayerNorm::LayerNorm(Dim f, double eps_, bool elementwise_affine, bool with_bias, DType dtype)
    : feature(std::move(f)), eps(eps_) {
  if (feature.is_dynamic()) throw Error("LayerNorm: feature Dim must be static, got " + feature.str());
  if (!(eps >= 0)) throw Error("LayerNorm: eps must be >= 0, got " + std::to_string(eps));
  if (!is_floating(dtype)) throw Error(std::string("LayerNorm: parameters must be f32 or f64 (bf16 / f16 compute comes from autocast), got ") + dtype_name(dtype));
  if (elementwise_affine) {
    weight = Tensor::ones({feature}, dtype).with_requires_grad();
    if (with_bias) bias = Tensor::zeros({feature}, dtype).with_requires_grad();
  }
}

void LayerNorm::reset_parameters(Generator&) {
  NoGradGuard no_grad;
  if (weight) weight->copy_from(Tensor::ones({feature}, weight->dtype()));
  if (bias) bias->copy_from(Tensor::zeros({feature}, bias->dtype()));
}

Tensor LayerNorm::operator()(const Tensor& x) const {
  if (!x.defined()) throw Error("LayerNorm: undefined input (feature " + feature.str() + ")");
  if (!x.has_dim(feature))
    throw Error("LayerNorm: input " + dims_str(x.dims()) + " lacks feature Dim '" + feature.str() + "'");
  if (!is_floating(x.dtype()) && !is_half(x.dtype())) throw Error("LayerNorm: input must be floating, got " + x.str());
  return layer_norm(x, feature, weight ? *weight : Tensor(), bias ? *bias : Tensor(), eps);
}

std::string LayerNorm::extra_repr() const {
  std::ostringstream os;
  os << "feature=" << feature.str() << ", eps=" << eps << ", affine=" << (weight ? "true" : "false");
  return os.str();
}

}  // namespace dimx::nn

#include <dimx/autograd.h>
#include <dimx/elementwise.h>
#include <dimx/matmul.h>
#include <dimx/nn/linear.h>

#include <cmath>


namespace dimx::nn {

Linear::Linear(Dim in, Dim out, Generator& gen, bool with_bias, DType dtype)
    : in_dim(std::move(in)), out_dim(std::move(out)) {
  if (in_dim.is_dynamic() || out_dim.is_dynamic())
    throw Error("Linear: in_dim and out_dim must be static, got in_dim " + in_dim.str() + ", out_dim " + out_dim.str());
  if (in_dim == out_dim)
    throw Error("Linear: in_dim and out_dim must be distinct Dims, got " + in_dim.str() +
                " for both (use out_dim = in_dim.copy())");
  if (!is_floating(dtype)) throw Error(std::string("Linear: parameters must be f32 or f64 (bf16 / f16 compute comes from autocast), got ") + dtype_name(dtype));
  weight = Tensor::zeros({out_dim, in_dim}, dtype).with_requires_grad();
  if (with_bias) bias = Tensor::zeros({out_dim}, dtype).with_requires_grad();
  reset_parameters(gen);
}

void Linear::reset_parameters(Generator& gen) {
  NoGradGuard no_grad;
  const int64_t fan_in = in_dim.size();
  const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
  weight.copy_from(random_uniform({out_dim, in_dim}, gen, -bound, bound, weight.dtype()));
  if (bias) bias->copy_from(random_uniform({out_dim}, gen, -bound, bound, bias->dtype()));
}

Tensor Linear::operator()(const Tensor& x) const {
  if (!x.defined()) throw Error("Linear: undefined input (weight " + dims_str(weight.dims()) + ")");
  if (!x.has_dim(in_dim))
    throw Error("Linear: input " + dims_str(x.dims()) + " lacks in_dim '" + in_dim.str() + "' (weight " +
                dims_str(weight.dims()) + ")");
  if (x.has_dim(out_dim))
    throw Error("Linear: input " + dims_str(x.dims()) + " already has out_dim '" + out_dim.str() + "' (weight " +
                dims_str(weight.dims()) + ")");
  // Under autocast the bias joins matmul's low dtype, as in PyTorch; it is added in the GEMM.
  return bias ? matmul_add(x, weight, in_dim, *bias) : matmul(x, weight, in_dim);
}

std::string Linear::extra_repr() const {
  return "in=" + in_dim.str() + ", out=" + out_dim.str() + ", bias=" + (bias ? "true" : "false");
}

}  // namespace dimx::nn

#include <dimx/autograd.h>
#include <dimx/conv.h>
#include <dimx/ema.h>
#include <dimx/elementwise.h>
#include <dimx/nn/attention.h>
#include <dimx/nn/mega.h>
#include <dimx/random.h>
#include <dimx/reduce.h>
#include <dimx/shape.h>

#include <cmath>

#include "tensor_impl.h"

namespace dimx::nn::mega {

namespace {

constexpr const char* kOp = "mega::MultiHeadDampedEMA";

Tensor activate(Activation a, const Tensor& x) { return a == Activation::relu ? relu(x) : silu(x); }

}  // namespace

MultiHeadDampedEMA::MultiHeadDampedEMA(Dim size_, Generator& gen, const Options& o)
    : size(size_),
      heads(o.num_heads > 0 ? o.num_heads : 1, "heads"),
      options(o),
      scaling(std::sqrt(1.0 / double(o.num_heads > 0 ? o.num_heads : 1))) {
  if (o.num_heads <= 0) fail(std::string(kOp) + ": num_heads must be positive, got " + std::to_string(o.num_heads));
  if (size.is_dynamic()) fail(std::string(kOp) + ": size must be static, got '" + size.str() + "'");
  if (o.truncation_length && *o.truncation_length < 1)
    fail(std::string(kOp) + ": truncation_length must be >= 1, got " + std::to_string(*o.truncation_length));
  if (o.dtype != DType::f32 && o.dtype != DType::f64)
    fail(std::string(kOp) + ": parameters must be f32 or f64, got " + dtype_name(o.dtype));
  for (Tensor* t : {&damping_factor, &decay_factor, &ema_expansion_matrix})
    *t = Tensor::zeros({size, heads, one}, o.dtype).with_requires_grad();
  kernel_projection_matrix = Tensor::zeros({size, heads}, o.dtype).with_requires_grad();
  residual_weight = Tensor::zeros({size}, o.dtype).with_requires_grad();
  reset_parameters(gen);
}

void MultiHeadDampedEMA::reset_parameters(Generator& gen, double val, double std1, double std2) {
  NoGradGuard ng;
  auto normal = [&](const Tensor& t, double std) {
    return random_normal(t.dims(), gen, val, std, t.dtype(), t.device());
  };
  damping_factor.copy_from(normal(damping_factor, std1));
  decay_factor.copy_from(normal(decay_factor, std1));
  // + (1, -1, 1, -1, ...) over the heads.
  std::vector<double> sign(static_cast<size_t>(heads.size()));
  for (size_t i = 0; i < sign.size(); ++i) sign[i] = i % 2 ? -1.0 : 1.0;
  Tensor alt = Tensor::from_vector<double>({heads}, sign).astype(ema_expansion_matrix.dtype()).to(ema_expansion_matrix.device());
  ema_expansion_matrix.copy_from(add(normal(ema_expansion_matrix, 0.02), alt));
  kernel_projection_matrix.copy_from(normal(kernel_projection_matrix, std2));
  residual_weight.copy_from(normal(residual_weight, std2));
}

Coefficients MultiHeadDampedEMA::compute_ema_coefficients() const {
  Tensor p = sigmoid(squeeze(damping_factor, one));
  Tensor q = 1.0 - p * sigmoid(squeeze(decay_factor, one));
  return {p, q};
}

Tensor MultiHeadDampedEMA::compute_ema_kernel(const Dim& length) const {
  if (length.is_dynamic()) fail(std::string(kOp) + ": the kernel length '" + length.str() + "' must be static");
  auto [p, q] = compute_ema_coefficients();
  // q^l as exp(l log q) over {size, heads, length}, weighted by p beta gamma / sqrt(heads).
  const Tensor l = range_over_dim(length, q.dtype(), q.device());
  const Tensor weight = p * squeeze(ema_expansion_matrix, one) * kernel_projection_matrix * scaling;
  return reduce_sum(mul(exp(mul(l, log(q), true)), weight, true), {heads});
}

std::pair<Tensor, Tensor> MultiHeadDampedEMA::ema_one_step(const Tensor& x, const Tensor& state) const {
  check_defined(kOp, x);
  check_has_dim(kOp, x, size, "x");
  auto [p, q] = compute_ema_coefficients();
  Tensor h = mul(x, p * squeeze(ema_expansion_matrix, one), true);
  if (state.defined()) {
    check_has_dim(kOp, state, heads, "state");
    check_has_dim(kOp, state, size, "state");
    const Dims want = union_dims(x.dims(), {heads});
    if (state.ndim() != want.size() || !contains_all(state.dims(), want))
      fail(std::string(kOp) + ": the state " + dims_str(state.dims()) + " does not fit x " + dims_str(x.dims()) +
           " (it must be x's Dims plus '" + heads.str() + "')");
    h = add(h, mul(state, q, true), true);
  }
  Tensor y = reduce_sum(h * (kernel_projection_matrix * scaling), {heads});
  return {y, h};
}

Tensor MultiHeadDampedEMA::initial_state(const Dims& batch, Device device) const {
  Dims d = batch;
  d.insert(d.end(), {size, heads});
  return Tensor::zeros(d, damping_factor.dtype(), device);
}

std::pair<Tensor, std::optional<Tensor>> MultiHeadDampedEMA::operator()(const Tensor& x, const Dim& axis,
                                                                        const Tensor& mask,
                                                                        const std::optional<Tensor>& state) const {
  check_defined(kOp, x);
  check_has_dim(kOp, x, size, "x");
  if (x.has_dim(heads)) fail(std::string(kOp) + ": x = " + x.str() + " already has the heads Dim '" + heads.str() + "'");
  const bool step = axis == single_step_dim();
  if (!step) check_has_dim(kOp, x, axis, "x");
  // The EMA reads x with its padded and masked frames zeroed; the residual reads x as given.
  Tensor xe = x;
  if (mask.defined()) {
    if (mask.dtype() != DType::boolean) fail(std::string(kOp) + ": mask must be bool (true = pad), got " + mask.str());
    for (const Dim& d : mask.dims())
      if (!x.has_dim(d)) fail(std::string(kOp) + ": mask " + mask.str() + " has '" + d.str() + "', which x = " + x.str() + " lacks");
    xe = where(mask.to(x.device()), 0.0, xe);
  }
  const Tensor residual = x * residual_weight;

  if (step) {
    auto [y, h] = ema_one_step(xe, state ? *state : Tensor());
    return {activate(options.activation, y + residual), state ? std::optional<Tensor>(h) : std::nullopt};
  }
  const int64_t L = axis.extent();
  if (!state && options.truncation_length && *options.truncation_length < L) {
    // The truncated kernel: a convolution (padded frames zeroed first).
    const Dim taps(*options.truncation_length, "ema_taps");
    const Tensor y = causal_conv(copy_masked(xe, {axis}), compute_ema_kernel(taps), axis, taps);
    return {activate(options.activation, y + residual), std::nullopt};
  }
  // The untruncated EMA, from zeros or from the given state, as the recurrence itself:
  // s_t = q s_{t-1} + (p beta) x_t, y_t = sum_h gamma sqrt(1 / heads) s_t.
  auto [p, q] = compute_ema_coefficients();
  const Tensor gain = p * squeeze(ema_expansion_matrix, one);
  const Tensor weight = kernel_projection_matrix * scaling;
  if (state) {
    check_defined(kOp, *state);
    const Dims want = union_dims(minus_dims(x.dims(), {axis}), {heads});
    if (state->ndim() != want.size() || !contains_all(state->dims(), want))
      fail(std::string(kOp) + ": the state " + dims_str(state->dims()) + " does not fit x " + dims_str(x.dims()) +
           " (it must be x's Dims without '" + axis.str() + "', plus '" + heads.str() + "')");
  }
  EmaResult r = ema(xe, gain, q, weight, axis, heads, state ? *state : Tensor());
  return {activate(options.activation, r.y + residual), state ? std::optional<Tensor>(r.state) : std::nullopt};
}

std::string MultiHeadDampedEMA::extra_repr() const {
  std::string s = "size=" + size.str() + ", heads=" + std::to_string(heads.size()) + ", activation=" +
                  (options.activation == Activation::relu ? "relu" : "silu");
  if (options.truncation_length) s += ", truncation_length=" + std::to_string(*options.truncation_length);
  return s;
}

}  // namespace dimx::nn::mega

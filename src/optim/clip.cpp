#include <dimx/autograd.h>
#include <dimx/elementwise.h>
#include <dimx/optim/clip.h>
#include <dimx/reduce.h>

#include <cmath>
#include <string>

#include "optim_util.h"

namespace dimx::optim {

namespace {

Tensor reduce_all_dims(const Tensor& x, ReduceOp op) { return x.ndim() == 0 ? x : reduce(x, op, x.dims()); }

}  // namespace

double clip_grad_norm(const NamedParameters& params, double max_norm, double norm_type, bool error_if_nonfinite) {
  using detail::format_double;
  if (std::isnan(max_norm) || max_norm < 0)
    throw Error("clip_grad_norm: max_norm must be >= 0, got " + format_double(max_norm));
  if (!(norm_type > 0)) throw Error("clip_grad_norm: norm_type must be > 0 or inf, got " + format_double(norm_type));
  NoGradGuard no_grad;
  const bool inf = std::isinf(norm_type);
  std::vector<std::pair<Tensor*, Tensor>> grads;
  double acc = 0;  // sum of |g|^p, or the max for inf
  for (const auto& [name, p] : params) {
    if (p == nullptr || !p->defined()) throw Error("clip_grad_norm: parameter '" + name + "' is undefined");
    Tensor g = p->grad();
    if (!g.defined()) continue;
    grads.emplace_back(p, g);
    if (g.numel() == 0) continue;
    double n;
    if (inf) {
      n = reduce_all_dims(abs(g), ReduceOp::max).item<double>();
      acc = std::isnan(n) || std::isnan(acc) ? NAN : std::max(acc, n);
    } else if (norm_type == 2) {
      n = std::sqrt(reduce_all_dims(square(g), ReduceOp::sum).item<double>());
      acc += n * n;
    } else if (norm_type == 1) {
      acc += reduce_all_dims(abs(g), ReduceOp::sum).item<double>();
    } else {
      n = std::pow(reduce_all_dims(pow(abs(g), Tensor::scalar(norm_type, g.dtype(), g.device())), ReduceOp::sum)
                       .item<double>(),
                   1 / norm_type);
      acc += std::pow(n, norm_type);
    }
  }
  double total = inf ? acc : (norm_type == 2 ? std::sqrt(acc) : norm_type == 1 ? acc : std::pow(acc, 1 / norm_type));
  if (grads.empty()) return 0;
  if (!std::isfinite(total) && error_if_nonfinite)
    throw Error("clip_grad_norm: the total norm of order " + format_double(norm_type) + " of the gradients is " +
                format_double(total) + "; the gradients cannot be clipped (error_if_nonfinite)");
  double coef = max_norm / (total + 1e-6);
  if (coef < 1 || std::isnan(coef)) {
    for (const auto& [p, g] : grads) p->set_grad(g * coef);
  }
  return total;
}

double clip_grad_norm(const std::vector<Tensor*>& params, double max_norm, double norm_type, bool error_if_nonfinite) {
  return clip_grad_norm(number_parameters(params), max_norm, norm_type, error_if_nonfinite);
}

void clip_grad_value(const NamedParameters& params, double clip_value) {
  if (std::isnan(clip_value) || clip_value < 0)
    throw Error("clip_grad_value: clip_value must be >= 0, got " + detail::format_double(clip_value));
  NoGradGuard no_grad;
  for (const auto& [name, p] : params) {
    if (p == nullptr || !p->defined()) throw Error("clip_grad_value: parameter '" + name + "' is undefined");
    Tensor g = p->grad();
    if (g.defined()) p->set_grad(clip(g, -clip_value, clip_value));
  }
}

void clip_grad_value(const std::vector<Tensor*>& params, double clip_value) {
  clip_grad_value(number_parameters(params), clip_value);
}

}  // namespace dimx::optim

#include <dimx/elementwise.h>
#include <dimx/optim/adam.h>

#include <cmath>

#include "optim/fused_step.h"
#include "optim_util.h"

namespace dimx::optim {

namespace {
std::string num(double v) { return detail::format_double(v); }

AdamOptions from_w(const AdamWOptions& o) {
  return {o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.amsgrad, o.maximize, o.fused};
}
}  // namespace

Adam::Adam(std::string kind, NamedParameters params, AdamOptions options, bool decoupled)
    : Optimizer(std::move(kind), std::move(params)), opt_(options), decoupled_(decoupled) {
  validate(opt_);
}

Adam::Adam(NamedParameters params, AdamOptions options) : Adam("Adam", std::move(params), options, false) {}
Adam::Adam(const std::vector<Tensor*>& params, AdamOptions options)
    : Adam("Adam", number_parameters(params), options, false) {}

AdamW::AdamW(NamedParameters params, AdamWOptions options) : Adam("AdamW", std::move(params), from_w(options), true) {}
AdamW::AdamW(const std::vector<Tensor*>& params, AdamWOptions options)
    : Adam("AdamW", number_parameters(params), from_w(options), true) {}

void Adam::validate(const AdamOptions& o) const {
  if (!(o.lr >= 0) || std::isinf(o.lr)) fail("invalid learning rate lr = " + num(o.lr) + " (must be >= 0)");
  if (!(o.eps >= 0) || std::isinf(o.eps)) fail("invalid eps " + num(o.eps) + " (must be >= 0)");
  if (!(o.beta1 >= 0 && o.beta1 < 1)) fail("invalid beta1 " + num(o.beta1) + " (must be in [0, 1))");
  if (!(o.beta2 >= 0 && o.beta2 < 1)) fail("invalid beta2 " + num(o.beta2) + " (must be in [0, 1))");
  if (!(o.weight_decay >= 0) || std::isinf(o.weight_decay))
    fail("invalid weight_decay " + num(o.weight_decay) + " (must be >= 0)");
}

void Adam::set_lr(double lr) {
  AdamOptions o = opt_;
  o.lr = lr;
  validate(o);
  opt_ = o;
}

std::map<std::string, std::string> Adam::options_map() const {
  return {{"lr", num(opt_.lr)},
          {"beta1", num(opt_.beta1)},
          {"beta2", num(opt_.beta2)},
          {"eps", num(opt_.eps)},
          {"weight_decay", num(opt_.weight_decay)},
          {"amsgrad", opt_.amsgrad ? "true" : "false"},
          {"maximize", opt_.maximize ? "true" : "false"}};
}

void Adam::set_options_map(const std::map<std::string, std::string>& m) {
  auto bad = [&](const std::string& msg) { fail("options: " + msg); };
  detail::check_option_keys(m, {"lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad", "maximize"}, bad);
  AdamOptions o;
  o.lr = detail::parse_double(m.at("lr"), bad);
  o.beta1 = detail::parse_double(m.at("beta1"), bad);
  o.beta2 = detail::parse_double(m.at("beta2"), bad);
  o.eps = detail::parse_double(m.at("eps"), bad);
  o.weight_decay = detail::parse_double(m.at("weight_decay"), bad);
  o.amsgrad = detail::parse_bool(m.at("amsgrad"), bad);
  o.maximize = detail::parse_bool(m.at("maximize"), bad);
  o.fused = opt_.fused;  // how to run, not what to compute: not in the file
  validate(o);
  opt_ = o;
}

std::vector<std::string> Adam::buffer_names() const {
  if (opt_.amsgrad) return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
  return {"exp_avg", "exp_avg_sq"};
}

void Adam::update_all(const std::vector<Update>& updates) {
  if (!opt_.fused) return Optimizer::update_all(updates);
  const AdamOptions& o = opt_;
  backend::OptimStep a;
  a.kind = backend::OptimStep::Kind::adam;
  a.lr = o.lr;
  a.weight_decay = o.weight_decay;
  a.maximize = o.maximize;
  a.beta1 = o.beta1;
  a.beta2 = o.beta2;
  a.eps = o.eps;
  a.decoupled = decoupled_;
  a.amsgrad = o.amsgrad;
  std::vector<Update> rest = detail::fused_step(updates, a, buffer_names(), [&](const Update& u, backend::OptimStep::Item& it) {
    const double t = double(u.state->step + 1);
    it.bc1 = 1 - std::pow(o.beta1, t);
    it.bc2 = 1 - std::pow(o.beta2, t);
  });
  Optimizer::update_all(rest);
}

void Adam::update(const std::string& name, const Tensor& p, const Tensor& grad, ParamState& st) {
  const AdamOptions& o = opt_;
  Tensor g = o.maximize ? neg(grad) : grad;
  if (st.step == 0) {
    Tensor z = Tensor::zeros(p.dims(), p.dtype(), p.device());
    st.buffers["exp_avg"] = z;
    st.buffers["exp_avg_sq"] = z;
    if (o.amsgrad) st.buffers["max_exp_avg_sq"] = z;
  }
  const double t = static_cast<double>(st.step + 1);
  Tensor param = p;
  if (decoupled_) {
    if (o.weight_decay != 0) param = param * (1 - o.lr * o.weight_decay);
  } else if (o.weight_decay != 0) {
    g = g + o.weight_decay * param;
  }
  Tensor m = st.buffers.at("exp_avg") * o.beta1 + (1 - o.beta1) * g;
  Tensor v = st.buffers.at("exp_avg_sq") * o.beta2 + ((1 - o.beta2) * g) * g;
  const double bias_correction1 = 1 - std::pow(o.beta1, t);
  const double bias_correction2 = 1 - std::pow(o.beta2, t);
  const double step_size = o.lr / bias_correction1;
  Tensor vmax = v;
  if (o.amsgrad) {
    vmax = maximum(st.buffers.at("max_exp_avg_sq"), v);
    st.buffers["max_exp_avg_sq"] = vmax;
  }
  Tensor denom = sqrt(vmax) / std::sqrt(bias_correction2) + o.eps;
  p.copy_from(param + ((-step_size) * m) / denom);
  st.buffers["exp_avg"] = m;
  st.buffers["exp_avg_sq"] = v;
  st.step += 1;
}

}  // namespace dimx::optim

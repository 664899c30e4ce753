#include <dimx/elementwise.h>
#include <dimx/optim/sgd.h>

#include <cmath>

#include "optim/fused_step.h"
#include "optim_util.h"

namespace dimx::optim {

namespace {
std::string num(double v) { return detail::format_double(v); }
}  // namespace

SGD::SGD(NamedParameters params, SGDOptions options) : Optimizer("SGD", std::move(params)), opt_(options) {
  validate(opt_);
}

SGD::SGD(const std::vector<Tensor*>& params, SGDOptions options) : SGD(number_parameters(params), options) {}

void SGD::validate(const SGDOptions& o) const {
  if (std::isnan(o.lr)) fail("lr is required (SGDOptions{.lr = ...})");
  if (!(o.lr >= 0) || std::isinf(o.lr)) fail("invalid learning rate lr = " + num(o.lr) + " (must be >= 0)");
  if (!(o.momentum >= 0) || std::isinf(o.momentum)) fail("invalid momentum " + num(o.momentum) + " (must be >= 0)");
  if (!std::isfinite(o.dampening)) fail("invalid dampening " + num(o.dampening));
  if (!(o.weight_decay >= 0) || std::isinf(o.weight_decay))
    fail("invalid weight_decay " + num(o.weight_decay) + " (must be >= 0)");
  if (o.nesterov && (o.momentum <= 0 || o.dampening != 0))
    fail("nesterov momentum requires momentum > 0 and dampening = 0 (got momentum " + num(o.momentum) +
         ", dampening " + num(o.dampening) + ")");
}

void SGD::set_lr(double lr) {
  SGDOptions o = opt_;
  o.lr = lr;
  validate(o);
  opt_ = o;
}

std::map<std::string, std::string> SGD::options_map() const {
  return {{"lr", num(opt_.lr)},
          {"momentum", num(opt_.momentum)},
          {"dampening", num(opt_.dampening)},
          {"weight_decay", num(opt_.weight_decay)},
          {"nesterov", opt_.nesterov ? "true" : "false"},
          {"maximize", opt_.maximize ? "true" : "false"}};
}

void SGD::set_options_map(const std::map<std::string, std::string>& m) {
  auto bad = [&](const std::string& msg) { fail("options: " + msg); };
  detail::check_option_keys(m, {"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"}, bad);
  SGDOptions o;
  o.lr = detail::parse_double(m.at("lr"), bad);
  o.momentum = detail::parse_double(m.at("momentum"), bad);
  o.dampening = detail::parse_double(m.at("dampening"), bad);
  o.weight_decay = detail::parse_double(m.at("weight_decay"), bad);
  o.nesterov = detail::parse_bool(m.at("nesterov"), bad);
  o.maximize = detail::parse_bool(m.at("maximize"), bad);
  o.fused = opt_.fused;  // how to run, not what to compute: not in the file
  validate(o);
  opt_ = o;
}

std::vector<std::string> SGD::buffer_names() const {
  if (opt_.momentum != 0) return {"momentum_buffer"};
  return {};
}

void SGD::update_all(const std::vector<Update>& updates) {
  if (!opt_.fused) return Optimizer::update_all(updates);
  backend::OptimStep a;
  a.kind = backend::OptimStep::Kind::sgd;
  a.lr = opt_.lr;
  a.weight_decay = opt_.weight_decay;
  a.maximize = opt_.maximize;
  a.momentum = opt_.momentum;
  a.dampening = opt_.dampening;
  a.nesterov = opt_.nesterov;
  std::vector<Update> rest = detail::fused_step(updates, a, buffer_names(), [](const Update& u, backend::OptimStep::Item& it) {
    it.first = !u.state->buffers.count("momentum_buffer");
  });
  Optimizer::update_all(rest);
}

void SGD::update(const std::string& name, const Tensor& p, const Tensor& grad, ParamState& st) {
  Tensor d_p = opt_.maximize ? neg(grad) : grad;
  if (opt_.weight_decay != 0) d_p = d_p + opt_.weight_decay * p;
  if (opt_.momentum != 0) {
    auto it = st.buffers.find("momentum_buffer");
    Tensor buf;
    if (it == st.buffers.end()) {
      buf = d_p * 1.0;  // a fresh copy, as torch.clone
    } else {
      buf = it->second * opt_.momentum + (1 - opt_.dampening) * d_p;
    }
    st.buffers["momentum_buffer"] = buf;
    d_p = opt_.nesterov ? d_p + opt_.momentum * buf : buf;
  }
  p.copy_from(p + (-opt_.lr) * d_p);
  st.step += 1;
}

}  // namespace dimx::optim

#include <dimx/autograd.h>
#include <dimx/elementwise.h>
#include <dimx/io.h>
#include <dimx/optim/grad_scaler.h>
#include <dimx/reduce.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "optim_util.h"

namespace dimx::optim {

namespace {

std::string num(double v) { return detail::format_double(v); }

// 0 where every element of g is finite, NaN where one is inf or NaN (inf * 0 and NaN * 0 are
// NaN, anything finite times 0 is 0, so the sum is exact): one elementwise op and one reduction.
Tensor nonfinite_flag(const Tensor& g) {
  Tensor z = g * 0.0;
  return z.ndim() == 0 ? z : reduce_sum(z, z.dims());
}

}  // namespace

GradScaler::GradScaler(GradScalerOptions options) : opt_(options), scale_(float(options.init_scale)) {
  if (!(options.init_scale > 0) || !std::isfinite(float(options.init_scale)))
    fail("init_scale must be > 0 and finite in f32, got " + num(options.init_scale));
  if (std::string p = problem(state()); !p.empty()) fail(p);
}

void GradScaler::fail(const std::string& msg) const { throw Error("GradScaler: " + msg); }

std::string GradScaler::problem(const GradScalerState& s) {
  if (!(s.scale > 0) || !std::isfinite(float(s.scale))) return "the scale must be > 0 and finite in f32, got " + num(s.scale);
  if (!(s.growth_factor > 1) || !std::isfinite(s.growth_factor))
    return "growth_factor must be > 1 and finite, got " + num(s.growth_factor);
  if (!(s.backoff_factor > 0 && s.backoff_factor < 1)) return "backoff_factor must be in (0, 1), got " + num(s.backoff_factor);
  if (s.growth_interval <= 0) return "growth_interval must be > 0, got " + std::to_string(s.growth_interval);
  if (s.growth_tracker < 0 || s.growth_tracker >= s.growth_interval)
    return "the growth tracker " + std::to_string(s.growth_tracker) + " must be in [0, growth_interval = " +
           std::to_string(s.growth_interval) + ")";
  return "";
}

Tensor GradScaler::scale(const Tensor& loss) const {
  if (!opt_.enabled) return loss;
  if (!loss.defined()) fail("scale: undefined loss");
  if (!is_floating(loss.dtype()) && !is_half(loss.dtype())) fail("scale: the loss must be floating, got " + loss.str());
  const Tensor l = is_half(loss.dtype()) ? loss.astype(DType::f32) : loss;
  return l * double(scale_);
}

double GradScaler::scale() const { return opt_.enabled ? double(scale_) : 1.0; }

void GradScaler::unscale(Optimizer& opt) {
  if (!opt_.enabled) return;
  PerOptimizer& st = per_opt_[&opt];
  if (st.stage == Stage::unscaled) fail("unscale() has already been called on this " + opt.kind() + " since the last update()");
  if (st.stage == Stage::stepped) fail("unscale() is being called after step() (call update() first)");
  NoGradGuard no_grad;
  // PyTorch's inverse: the f64 reciprocal rounded to f32.
  const double inv = double(float(1.0 / double(scale_)));
  std::vector<std::pair<Device, Tensor>> flags;  // one running flag per device
  for (const auto& [name, p] : opt.params()) {
    if (p == nullptr || !p->defined()) fail("unscale: parameter '" + name + "' of the " + opt.kind() + " is undefined");
    Tensor g = p->grad();
    if (!g.defined()) continue;
    Tensor f = nonfinite_flag(g).astype(DType::f32);
    auto it = std::find_if(flags.begin(), flags.end(), [&](const auto& e) { return e.first == g.device(); });
    if (it == flags.end()) flags.emplace_back(g.device(), f);
    else it->second = it->second + f;
    p->set_grad(g * inv);
  }
  bool found = false;
  for (const auto& [dev, f] : flags) found = found || std::isnan(f.item<float>());
  st.found_inf = found;
  st.stage = Stage::unscaled;
}

bool GradScaler::step(Optimizer& opt) {
  if (!opt_.enabled) {
    opt.step();
    return true;
  }
  if (per_opt_[&opt].stage == Stage::stepped) fail("step() has already been called on this " + opt.kind() + " since the last update()");
  if (per_opt_[&opt].stage == Stage::ready) unscale(opt);
  PerOptimizer& st = per_opt_[&opt];
  const bool stepped = !st.found_inf;
  if (stepped) opt.step();
  st.stage = Stage::stepped;
  return stepped;
}

void GradScaler::update() {
  if (!opt_.enabled) return;
  if (per_opt_.empty()) fail("update(): no inf/NaN check since the last update(); call step() or unscale() first");
  bool found = false;
  for (const auto& [o, st] : per_opt_) found = found || st.found_inf;
  // torch._amp_update_scale_, in f32 as there.
  if (found) {
    scale_ = float(scale_ * float(opt_.backoff_factor));
    tracker_ = 0;
  } else if (tracker_ + 1 == opt_.growth_interval) {
    const float grown = float(scale_ * float(opt_.growth_factor));
    if (std::isfinite(grown)) scale_ = grown;
    tracker_ = 0;
  } else {
    tracker_ += 1;
  }
  per_opt_.clear();
}

void GradScaler::update(double new_scale) {
  if (!opt_.enabled) return;
  if (!(new_scale > 0) || !std::isfinite(float(new_scale)))
    fail("update(new_scale): the scale must be > 0 and finite in f32, got " + num(new_scale));
  scale_ = float(new_scale);
  per_opt_.clear();
}

bool GradScaler::found_inf(const Optimizer& opt) const {
  auto it = per_opt_.find(&opt);
  return it != per_opt_.end() && it->second.found_inf;
}

GradScalerState GradScaler::state() const {
  return {double(scale_), tracker_, opt_.growth_factor, opt_.backoff_factor, opt_.growth_interval};
}

void GradScaler::set_state(const GradScalerState& s) {
  if (std::string p = problem(s); !p.empty()) fail("set_state: " + p);
  scale_ = float(s.scale);
  tracker_ = s.growth_tracker;
  opt_.growth_factor = s.growth_factor;
  opt_.backoff_factor = s.backoff_factor;
  opt_.growth_interval = s.growth_interval;
  per_opt_.clear();
}

void GradScaler::save_state(const std::string& path) const {
  if (!opt_.enabled) fail("save_state: a disabled GradScaler has no state");
  const GradScalerState s = state();
  std::map<std::string, std::string> meta{{"format", "dimx.grad_scaler"},
                                          {"scale", num(s.scale)},
                                          {"growth_tracker", std::to_string(s.growth_tracker)},
                                          {"growth_factor", num(s.growth_factor)},
                                          {"backoff_factor", num(s.backoff_factor)},
                                          {"growth_interval", std::to_string(s.growth_interval)}};
  try {
    save_safetensors(path, std::vector<std::pair<std::string, Tensor>>{}, meta);
  } catch (const Error& e) {
    fail(std::string("save_state: ") + e.what());
  }
}

void GradScaler::load_state(const std::string& path) {
  if (!opt_.enabled) return;
  std::map<std::string, std::string> meta;
  try {
    meta = SafeTensors::open(path).metadata();
  } catch (const Error& e) {
    fail(std::string("load_state: ") + e.what());
  }
  auto bad = [&](const std::string& msg) { fail("load_state: '" + path + "': " + msg); };
  if (meta.count("format") == 0 || meta.at("format") != "dimx.grad_scaler")
    bad("not a GradScaler state file (no format 'dimx.grad_scaler' in its metadata)");
  meta.erase("format");
  detail::check_option_keys(meta, {"scale", "growth_tracker", "growth_factor", "backoff_factor", "growth_interval"}, bad);
  GradScalerState s;
  s.scale = detail::parse_double(meta.at("scale"), bad);
  s.growth_tracker = detail::parse_int(meta.at("growth_tracker"), bad);
  s.growth_factor = detail::parse_double(meta.at("growth_factor"), bad);
  s.backoff_factor = detail::parse_double(meta.at("backoff_factor"), bad);
  s.growth_interval = detail::parse_int(meta.at("growth_interval"), bad);
  if (std::string p = problem(s); !p.empty()) bad(p);
  set_state(s);
}

}  // namespace dimx::optim

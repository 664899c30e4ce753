#include <dimx/autocast.h>
#include <dimx/autograd.h>
#include <dimx/io.h>
#include <dimx/optim/optimizer.h>
#include <dimx/profile.h>

#include <algorithm>
#include <set>
#include <unordered_set>

#include "optim_util.h"

namespace dimx::optim {

NamedParameters number_parameters(const std::vector<Tensor*>& params) {
  NamedParameters out;
  out.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) out.emplace_back(std::to_string(i), params[i]);
  return out;
}

Optimizer::Optimizer(std::string kind, NamedParameters params) : kind_(std::move(kind)), params_(std::move(params)) {
  if (params_.empty()) fail("got an empty parameter list");
  std::unordered_set<std::string> names;
  std::unordered_set<const void*> impls;
  for (const auto& [name, p] : params_) {
    if (name.empty()) fail("a parameter has an empty name");
    if (!names.insert(name).second) fail("parameter '" + name + "' appears more than once");
    if (p == nullptr) fail("parameter '" + name + "' is a null pointer");
    if (!p->defined()) fail("parameter '" + name + "' is an undefined tensor");
    if (!is_floating(p->dtype()))
      fail("parameter '" + name + "' " + p->str() + " is not floating point");
    if (!p->requires_grad())
      fail("parameter '" + name + "' " + p->str() +
           " does not require grad (create it with with_requires_grad())");
    if (!impls.insert(p->impl_ptr().get()).second)
      fail("parameter '" + name + "' is the same tensor as an earlier parameter");
  }
}

void Optimizer::fail(const std::string& msg) const { throw Error(kind_ + ": " + msg); }

const Tensor& Optimizer::param(const std::string& name) const {
  for (const auto& [n, p] : params_)
    if (n == name) return *p;
  fail("no parameter named '" + name + "'");
}

void Optimizer::step() {
  NoGradGuard no_grad;
  ProfileSection section("optimizer step");
  std::vector<Update> updates;
  for (const auto& [name, p] : params_) {
    if (!p->defined()) fail("parameter '" + name + "' is an undefined tensor");
    Tensor g = p->grad();
    if (!g.defined()) continue;
    if (g.dtype() != p->dtype() || !(g.device() == p->device()))
      fail("step: gradient " + g.str() + " of parameter '" + name + "' does not match its dtype and device " +
           p->str());
    updates.push_back({&name, p, g, &state_[name]});
  }
  update_all(updates);
  clear_autocast_cache();  // casts of the old values must not outlive the step
}

void Optimizer::update_all(const std::vector<Update>& updates) {
  for (const Update& u : updates) update(*u.name, *u.param, u.grad, *u.state);
}

void Optimizer::zero_grad() {
  for (const auto& [name, p] : params_)
    if (p->defined() && p->requires_grad()) p->zero_grad();
}

void Optimizer::set_state(OptimizerState state) {
  std::vector<std::string> want = buffer_names();
  std::sort(want.begin(), want.end());
  for (auto& [name, st] : state) {
    bool known = std::any_of(params_.begin(), params_.end(), [&n = name](const auto& np) { return np.first == n; });
    if (!known) fail("set_state: state for unknown parameter '" + name + "'");
    const Tensor& p = param(name);
    if (st.step < 0) fail("set_state: parameter '" + name + "' has a negative step count");
    std::vector<std::string> have;
    for (const auto& [b, t] : st.buffers) have.push_back(b);
    if (st.step == 0 && !have.empty())
      fail("set_state: parameter '" + name + "' has buffers but step 0");
    if (st.step > 0 && have != want) {
      auto join = [](const std::vector<std::string>& v) {
        std::string s = "{";
        for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
        return s + "}";
      };
      fail("set_state: parameter '" + name + "' has buffers " + join(have) + ", expected " + join(want));
    }
    for (auto& [b, t] : st.buffers) {
      if (!t.defined()) fail("set_state: buffer '" + b + "' of parameter '" + name + "' is undefined");
      if (t.ndim() != p.ndim() || !std::all_of(p.dims().begin(), p.dims().end(), [&t = t](const Dim& d) { return t.has_dim(d); }))
        fail("set_state: buffer '" + b + "' " + t.str() + " of parameter '" + name +
             "' does not have the parameter's Dims " + dims_str(p.dims()));
      if (t.dtype() != p.dtype())
        fail("set_state: buffer '" + b + "' " + t.str() + " of parameter '" + name + "' is not " +
             dtype_name(p.dtype()) + " like the parameter");
    }
  }
  // The optimizer owns its buffers (steps update them in place): copies in the parameter's
  // Dim order on its device.
  for (auto& [name, st] : state) {
    const Tensor& p = param(name);
    for (auto& [b, t] : st.buffers) {
      Tensor own = Tensor::zeros(p.dims(), p.dtype(), p.device());
      own.copy_from(t.to(p.device()));
      t = own;
    }
  }
  state_ = std::move(state);
}

void Optimizer::save_state(const std::string& path) const {
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::map<std::string, std::string> meta;
  meta["format"] = "dimx.optim";
  meta["optimizer"] = kind_;
  for (const auto& [k, v] : options_map()) meta["options." + k] = v;
  for (const auto& [name, st] : state_) {
    if (st.step == 0) continue;
    const Tensor& p = param(name);
    meta["state." + name + ".step"] = std::to_string(st.step);
    for (const auto& [b, t] : st.buffers) tensors.emplace_back("state." + name + "." + b, t.transpose_to(p.dims()));
  }
  try {
    save_safetensors(path, tensors, meta);
  } catch (const Error& e) {
    fail(std::string("save_state: ") + e.what());
  }
}

void Optimizer::load_state(const std::string& path) {
  SafeTensors file = [&] {
    try {
      return SafeTensors::open(path);
    } catch (const Error& e) {
      fail(std::string("load_state: ") + e.what());
    }
  }();
  const auto& meta = file.metadata();
  auto it = meta.find("optimizer");
  if (it == meta.end() || meta.count("format") == 0 || meta.at("format") != "dimx.optim")
    fail("load_state: '" + path + "' is not an optimizer state file (no 'optimizer' in its metadata)");
  if (it->second != kind_) fail("load_state: '" + path + "' holds " + it->second + " state, not " + kind_);

  std::map<std::string, std::string> options;
  std::map<std::string, int64_t> steps;
  for (const auto& [k, v] : meta) {
    if (k == "format" || k == "optimizer") continue;
    if (k.rfind("options.", 0) == 0) {
      options[k.substr(8)] = v;
    } else if (k.rfind("state.", 0) == 0 && k.size() > 11 && k.compare(k.size() - 5, 5, ".step") == 0) {
      std::string name = k.substr(6, k.size() - 11);
      bool known = std::any_of(params_.begin(), params_.end(), [&](const auto& np) { return np.first == name; });
      if (!known) fail("load_state: '" + path + "' has state for unknown parameter '" + name + "'");
      int64_t s = detail::parse_int(v, [&, &k = k](const std::string& m) { fail("load_state: " + k + ": " + m); });
      if (s <= 0) fail("load_state: " + k + " = " + v + " is not a positive step count");
      steps[name] = s;
    } else {
      fail("load_state: '" + path + "' has unknown metadata key '" + k + "'");
    }
  }

  std::map<std::string, std::string> old_options = options_map();
  set_options_map(options);
  try {
    std::map<std::string, std::pair<std::string, std::string>> expected;  // key -> (param, buffer)
    for (const auto& [name, p] : params_)
      for (const auto& b : buffer_names()) expected["state." + name + "." + b] = {name, b};
    OptimizerState ns;
    for (const auto& [name, s] : steps) ns[name].step = s;
    for (const std::string& key : file.keys()) {
      auto e = expected.find(key);
      if (e == expected.end())
        fail("load_state: '" + path + "' has unexpected tensor '" + key + "' (not a buffer of a parameter of this " +
             kind_ + ")");
      const auto& [name, b] = e->second;
      if (steps.count(name) == 0) fail("load_state: '" + path + "' has '" + key + "' but no step count for it");
      const Tensor& p = param(name);
      Tensor t;
      try {
        t = file.load(key, p.dims(), p.dtype());
      } catch (const Error& err) {
        fail("load_state: parameter '" + name + "' " + p.str() + ": " + err.what());
      }
      ns[name].buffers[b] = t;
    }
    set_state(std::move(ns));
  } catch (...) {
    set_options_map(old_options);
    throw;
  }
}

}  // namespace dimx::optim

// Optimizers (SGD, Adam, AdamW), gradient clipping and optimizer state, each against a plain
// double-precision loop that spells out torch.optim's formulas.
#include <dimx/autograd.h>
#include <dimx/io.h>
#include <dimx/optim.h>

#include <filesystem>
#include <functional>
#include <memory>

#include <unistd.h>

#include "test_util.h"

using namespace dimx;
using namespace dimx::optim;
using dimx_test::random_doubles;
using dimx_test::TempFile;

namespace {


// The synthetic gradient at step t: depends on the current values so the trajectory matters.
double grad_fn(double p, size_t i, int t) { return p * p - 0.5 + 0.1 * t - 0.03 * static_cast<double>(i); }

std::vector<double> grads_of(const std::vector<double>& p, int t) {
  std::vector<double> g(p.size());
  for (size_t i = 0; i < p.size(); ++i) g[i] = grad_fn(p[i], i, t);
  return g;
}

// ---- reference loops (torch.optim, single-tensor path, in double)

std::vector<double> sgd_ref(std::vector<double> p, const SGDOptions& o, int steps) {
  std::vector<double> buf;
  for (int t = 0; t < steps; ++t) {
    std::vector<double> g = grads_of(p, t);
    for (size_t i = 0; i < p.size(); ++i) {
      double d = o.maximize ? -g[i] : g[i];
      if (o.weight_decay != 0) d += o.weight_decay * p[i];
      if (o.momentum != 0) {
        if (t == 0) {
          if (buf.empty()) buf.resize(p.size());
          buf[i] = d;
        } else {
          buf[i] = o.momentum * buf[i] + (1 - o.dampening) * d;
        }
        d = o.nesterov ? d + o.momentum * buf[i] : buf[i];
      }
      p[i] -= o.lr * d;
    }
  }
  return p;
}

struct AdamRef {
  std::vector<double> p, m, v, vmax;
};

AdamRef adam_ref(std::vector<double> p, const AdamOptions& o, bool decoupled, int steps) {
  AdamRef r{p, std::vector<double>(p.size()), std::vector<double>(p.size()), std::vector<double>(p.size())};
  for (int t = 0; t < steps; ++t) {
    std::vector<double> g = grads_of(r.p, t);
    double step = t + 1;
    double bc1 = 1 - std::pow(o.beta1, step), bc2 = 1 - std::pow(o.beta2, step);
    for (size_t i = 0; i < p.size(); ++i) {
      double gi = o.maximize ? -g[i] : g[i];
      if (decoupled) r.p[i] *= 1 - o.lr * o.weight_decay;
      else gi += o.weight_decay * r.p[i];
      r.m[i] = o.beta1 * r.m[i] + (1 - o.beta1) * gi;
      r.v[i] = o.beta2 * r.v[i] + (1 - o.beta2) * gi * gi;
      r.vmax[i] = std::max(r.vmax[i], r.v[i]);
      double vh = o.amsgrad ? r.vmax[i] : r.v[i];
      r.p[i] -= o.lr / bc1 * r.m[i] / (std::sqrt(vh) / std::sqrt(bc2) + o.eps);
    }
  }
  return r;
}

AdamOptions as_adam(const AdamWOptions& o) {
  return {o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.amsgrad, o.maximize};
}

// ---- the dimx side

struct Setup {
  Dim a{3, "a"};
  Dim b{4, "b"};
  std::vector<double> init = random_doubles(12, 77, -1.5, 1.5);
  Tensor w;
  explicit Setup(DType dt = DType::f64) {
    w = Tensor::from_vector<double>({a, b}, init).astype(dt).with_requires_grad();
  }
  // Over the Dims of `other` (so state can move between them).
  explicit Setup(const Setup& other) : a(other.a), b(other.b) {
    w = Tensor::from_vector<double>({a, b}, init).astype(other.w.dtype()).with_requires_grad();
  }
  // Sets w's grad from its current values; in the {b, a} layout on odd steps.
  void set_grad(int t) {
    Tensor g = Tensor::from_vector<double>({a, b}, grads_of(w.to_vector<double>({a, b}), t)).astype(w.dtype());
    if (t % 2) g = g.transpose_to({b, a});
    w.set_grad(g);
  }
  std::vector<double> values() const { return w.to_vector<double>({a, b}); }
};

void run(Optimizer& opt, Setup& s, int steps, int first = 0) {
  for (int t = first; t < first + steps; ++t) {
    opt.zero_grad();
    s.set_grad(t);
    opt.step();
  }
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const dimx::Error& e) {
    return e.what();
  }
  return "<no dimx::Error>";
}

double max_abs_diff(const std::vector<double>& x, const std::vector<double>& y) {
  REQUIRE(x.size() == y.size());
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::fabs(x[i] - y[i]));
  return m;
}

}  // namespace

TEST_CASE("SGD matches torch.optim.SGD's formulas", "[optim]") {
  struct Case {
    const char* what;
    SGDOptions o;
  };
  auto c = GENERATE(values<Case>({
      {"plain", {.lr = 0.1}},
      {"momentum", {.lr = 0.05, .momentum = 0.9}},
      {"momentum+dampening", {.lr = 0.05, .momentum = 0.8, .dampening = 0.3}},
      {"nesterov", {.lr = 0.05, .momentum = 0.9, .nesterov = true}},
      {"weight decay", {.lr = 0.1, .weight_decay = 0.05}},
      {"momentum+weight decay", {.lr = 0.05, .momentum = 0.7, .weight_decay = 0.01}},
      {"nesterov+weight decay+maximize", {.lr = 0.02, .momentum = 0.5, .weight_decay = 0.1, .nesterov = true,
                                          .maximize = true}},
  }));
  INFO(c.what);
  Setup s;
  SGD opt({{"w", &s.w}}, c.o);
  run(opt, s, 6);
  std::vector<double> want = sgd_ref(s.init, c.o, 6);
  CHECK(max_abs_diff(s.values(), want) < 1e-12);
  CHECK(opt.state().at("w").step == 6);
  CHECK(opt.state().at("w").buffers.count("momentum_buffer") == (c.o.momentum != 0 ? 1u : 0u));
}

TEST_CASE("Adam and AdamW match torch.optim's formulas", "[optim]") {
  struct Case {
    const char* what;
    AdamOptions o;
    bool decoupled;
  };
  auto c = GENERATE(values<Case>({
      {"Adam default", {}, false},
      {"Adam lr, betas, eps", {.lr = 0.05, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-3}, false},
      {"Adam weight decay", {.lr = 0.01, .weight_decay = 0.1}, false},
      {"Adam amsgrad", {.lr = 0.02, .amsgrad = true}, false},
      {"Adam amsgrad+weight decay+maximize", {.lr = 0.02, .weight_decay = 0.05, .amsgrad = true, .maximize = true},
       false},
      {"AdamW default", as_adam(AdamWOptions{}), true},
      {"AdamW strong decay", as_adam(AdamWOptions{.lr = 0.05, .weight_decay = 0.5}), true},
      {"AdamW amsgrad", as_adam(AdamWOptions{.lr = 0.01, .amsgrad = true}), true},
  }));
  INFO(c.what);
  Setup s;
  std::unique_ptr<Optimizer> opt;
  if (c.decoupled) {
    const AdamOptions& o = c.o;
    opt = std::make_unique<AdamW>(NamedParameters{{"w", &s.w}},
                                  AdamWOptions{o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.amsgrad, o.maximize});
    CHECK(opt->kind() == "AdamW");
  } else {
    opt = std::make_unique<Adam>(NamedParameters{{"w", &s.w}}, c.o);
    CHECK(opt->kind() == "Adam");
  }
  run(*opt, s, 7);
  AdamRef want = adam_ref(s.init, c.o, c.decoupled, 7);
  CHECK(max_abs_diff(s.values(), want.p) < 1e-12);
  const ParamState& st = opt->state().at("w");
  CHECK(st.step == 7);
  CHECK(max_abs_diff(st.buffers.at("exp_avg").to_vector<double>({s.a, s.b}), want.m) < 1e-12);
  CHECK(max_abs_diff(st.buffers.at("exp_avg_sq").to_vector<double>({s.a, s.b}), want.v) < 1e-12);
  CHECK(st.buffers.count("max_exp_avg_sq") == (c.o.amsgrad ? 1u : 0u));
  if (c.o.amsgrad) CHECK(max_abs_diff(st.buffers.at("max_exp_avg_sq").to_vector<double>({s.a, s.b}), want.vmax) < 1e-12);
}

// The fused multi-tensor step against the per-parameter dimx ops: several parameters of both
// dtypes in one step, a parameter without a gradient, a gradient in another layout; each
// optimizer and option set.
TEST_CASE("the fused multi-tensor step equals the per-parameter update", "[optim]") {
  Dim a(5, "a"), b(7, "b"), c(33, "c");
  auto make = [&](std::vector<Tensor>& ps) {
    ps.clear();
    ps.push_back(Tensor::from_vector<double>({a, b}, random_doubles(35, 1, -1, 1)).with_requires_grad());
    ps.push_back(Tensor::from_vector<double>({c}, random_doubles(33, 2, -1, 1)).astype(DType::f32).with_requires_grad());
    ps.push_back(Tensor::from_vector<double>({b, a}, random_doubles(35, 3, -1, 1)).with_requires_grad());
    ps.push_back(Tensor::from_vector<double>({c}, random_doubles(33, 4, -1, 1)).with_requires_grad());  // no grad
  };
  auto run_opt = [&](const std::function<std::unique_ptr<Optimizer>(NamedParameters)>& make_opt) {
    std::vector<Tensor> ps;
    make(ps);
    NamedParameters named;
    for (size_t i = 0; i < ps.size(); ++i) named.emplace_back("p" + std::to_string(i), &ps[i]);
    std::unique_ptr<Optimizer> opt = make_opt(named);
    for (int t = 0; t < 5; ++t) {
      opt->zero_grad();
      for (size_t i = 0; i + 1 < ps.size(); ++i) {
        Tensor g = square(ps[i].detach()) - 0.3 + 0.1 * t;
        ps[i].set_grad(i == 0 ? g.transpose_to({b, a}) : g);  // another layout for p0
      }
      opt->step();
    }
    std::vector<double> all;
    for (const Tensor& p : ps) {
      auto v = p.to_vector<double>(p.dims());
      all.insert(all.end(), v.begin(), v.end());
    }
    for (size_t i = 0; i < ps.size(); ++i) {
      auto st = opt->state().find("p" + std::to_string(i));
      if (st == opt->state().end()) continue;
      for (const auto& [bn, t] : st->second.buffers) {
        auto v = t.to_vector<double>(ps[i].dims());  // in the parameter's order (buffers may differ)
        all.insert(all.end(), v.begin(), v.end());
      }
    }
    return all;
  };
  for (bool amsgrad : {false, true})
    for (bool maximize : {false, true}) {
      INFO("amsgrad " << amsgrad << " maximize " << maximize);
      std::vector<double> r[2];
      for (bool fused : {false, true})
        r[fused] = run_opt([&](NamedParameters n) {
          AdamWOptions o;
          o.lr = 0.01;
          o.amsgrad = amsgrad;
          o.maximize = maximize;
          o.fused = fused;
          return std::unique_ptr<Optimizer>(new AdamW(std::move(n), o));
        });
      CHECK(max_abs_diff(r[1], r[0]) < 1e-6);
      for (bool fused : {false, true})
        r[fused] = run_opt([&](NamedParameters n) {
          AdamOptions o;
          o.lr = 0.01;
          o.weight_decay = 0.1;
          o.amsgrad = amsgrad;
          o.maximize = maximize;
          o.fused = fused;
          return std::unique_ptr<Optimizer>(new Adam(std::move(n), o));
        });
      CHECK(max_abs_diff(r[1], r[0]) < 1e-6);
      for (bool fused : {false, true})
        r[fused] = run_opt([&](NamedParameters n) {
          SGDOptions o;
          o.lr = 0.05;
          o.momentum = amsgrad ? 0.9 : 0;
          o.nesterov = amsgrad;
          o.weight_decay = 0.01;
          o.maximize = maximize;
          o.fused = fused;
          return std::unique_ptr<Optimizer>(new SGD(std::move(n), o));
        });
      CHECK(max_abs_diff(r[1], r[0]) < 1e-6);
    }
}

TEST_CASE("AdamW defaults are PyTorch's", "[optim]") {
  AdamWOptions w;
  CHECK(w.lr == 1e-3);
  CHECK(w.beta1 == 0.9);
  CHECK(w.beta2 == 0.999);
  CHECK(w.eps == 1e-8);
  CHECK(w.weight_decay == 1e-2);
  AdamOptions a;
  CHECK(a.weight_decay == 0);
  CHECK(!a.amsgrad);
}

TEST_CASE("float32 parameters follow the double reference closely", "[optim]") {
  Setup s(DType::f32);
  AdamW opt({{"w", &s.w}}, {.lr = 0.01});
  run(opt, s, 5);
  // The grads were computed from float32 values here, so allow float32 rounding.
  std::vector<double> want = adam_ref(s.init, as_adam(AdamWOptions{.lr = 0.01}), true, 5).p;
  CHECK(max_abs_diff(s.values(), want) < 1e-5);
  CHECK(s.w.dtype() == DType::f32);
  CHECK(opt.state().at("w").buffers.at("exp_avg").dtype() == DType::f32);
}

TEST_CASE("step updates in place, skips parameters without grad; zero_grad clears", "[optim]") {
  Dim a(3, "a"), b(2, "b");
  Tensor w = Tensor::from_vector<double>({a, b}, {1, 2, 3, 4, 5, 6}).with_requires_grad();
  Tensor v = Tensor::from_vector<double>({b}, {7, 8}).with_requires_grad();
  Tensor w_alias = w;  // another handle of the same parameter
  SGD opt(std::vector<Tensor*>{&w, &v}, {.lr = 0.5});
  CHECK(opt.params()[0].first == "0");
  CHECK(opt.params()[1].first == "1");
  w.set_grad(Tensor::ones({a, b}, DType::f64));
  opt.step();
  CHECK(w.to_vector<double>() == std::vector<double>{0.5, 1.5, 2.5, 3.5, 4.5, 5.5});
  CHECK(w_alias.to_vector<double>() == w.to_vector<double>());  // same storage, same identity
  CHECK(v.to_vector<double>() == std::vector<double>{7, 8});    // no grad: untouched
  CHECK(opt.state().count("1") == 0);
  CHECK(w.grad().defined());
  opt.zero_grad();
  CHECK(!w.grad().defined());
  CHECK(!v.grad().defined());
}

TEST_CASE("optimizers train with gradients from backward", "[optim]") {
  // minimize sum((w - target)^2) over a {k} vector
  Dim k(5, "k");
  std::vector<double> target = {1, -2, 0.5, 3, -1};
  Tensor tgt = Tensor::from_vector<double>({k}, target);
  auto loss_of = [&](const Tensor& w) { return reduce_sum(square(w - tgt), {k}); };
  for (int which = 0; which < 3; ++which) {
    Tensor w = Tensor::zeros({k}, DType::f64).with_requires_grad();
    std::unique_ptr<Optimizer> opt;
    if (which == 0) opt = std::make_unique<SGD>(std::vector<Tensor*>{&w}, SGDOptions{.lr = 0.1, .momentum = 0.5});
    if (which == 1) opt = std::make_unique<Adam>(std::vector<Tensor*>{&w}, AdamOptions{.lr = 0.1});
    if (which == 2) opt = std::make_unique<AdamW>(std::vector<Tensor*>{&w}, AdamWOptions{.lr = 0.1, .weight_decay = 0});
    double first = loss_of(w).item<double>();
    for (int i = 0; i < 300; ++i) {
      opt->zero_grad();
      backward(loss_of(w));
      opt->step();
    }
    INFO(opt->kind());
    CHECK(loss_of(w).item<double>() < 1e-4 * first);
    CHECK(w.requires_grad());  // still a leaf that records gradients
  }
}

TEST_CASE("set_lr changes the step size and is validated", "[optim]") {
  Setup s;
  SGD opt({{"w", &s.w}}, {.lr = 0.1});
  opt.set_lr(0.0);
  run(opt, s, 1);
  CHECK(s.values() == s.init);
  CHECK(opt.lr() == 0.0);
  CHECK_THROWS_AS(opt.set_lr(-1), dimx::Error);
  CHECK(opt.lr() == 0.0);
}

// ---- clipping

namespace {
struct ClipSetup {
  Dim a{3, "a"}, b{2, "b"}, c{4, "c"};
  Tensor w1 = Tensor::zeros({a, b}).with_requires_grad();
  Tensor w2 = Tensor::zeros({c}).with_requires_grad();
  Tensor w3 = Tensor::zeros({c}).with_requires_grad();  // no grad
  std::vector<float> g1 = dimx_test::random_floats(6, 5), g2 = dimx_test::random_floats(4, 6);
  ClipSetup() {
    w1.set_grad(Tensor::from_vector<float>({b, a}, g1));  // a transposed layout
    w2.set_grad(Tensor::from_vector<float>({c}, g2));
  }
  NamedParameters params() { return {{"w1", &w1}, {"w2", &w2}, {"w3", &w3}}; }
  double norm(double p) const {
    double s = 0, m = 0;
    for (float x : g1) s += std::pow(std::fabs(double(x)), p), m = std::max(m, std::fabs(double(x)));
    for (float x : g2) s += std::pow(std::fabs(double(x)), p), m = std::max(m, std::fabs(double(x)));
    return std::isinf(p) ? m : std::pow(s, 1 / p);
  }
};
}  // namespace

TEST_CASE("clip_grad_norm scales by max_norm / (total + 1e-6) above max_norm", "[optim]") {
  for (double p : {2.0, 1.0, 3.0, inf_norm}) {
    INFO("norm_type " << p);
    ClipSetup s;
    double total = s.norm(p);
    double got = clip_grad_norm(s.params(), 0.5, p);
    CHECK(got == Approx(total).epsilon(1e-6));
    double coef = 0.5 / (total + 1e-6);
    REQUIRE(coef < 1);
    std::vector<float> g1 = s.w1.grad().to_vector<float>({s.b, s.a}), g2 = s.w2.grad().to_vector<float>();
    for (size_t i = 0; i < g1.size(); ++i) CHECK(g1[i] == Approx(s.g1[i] * coef).epsilon(1e-6));
    for (size_t i = 0; i < g2.size(); ++i) CHECK(g2[i] == Approx(s.g2[i] * coef).epsilon(1e-6));
    CHECK(!s.w3.grad().defined());
    // After clipping, the norm is max_norm (up to the 1e-6).
    CHECK(clip_grad_norm(s.params(), 1e9, p) == Approx(0.5).epsilon(1e-5));
  }
}

TEST_CASE("clip_grad_norm leaves small gradients alone and returns the norm", "[optim]") {
  ClipSetup s;
  double total = s.norm(2);
  CHECK(clip_grad_norm(std::vector<Tensor*>{&s.w1, &s.w2, &s.w3}, total * 2) == Approx(total).epsilon(1e-6));
  CHECK(s.w1.grad().to_vector<float>({s.b, s.a}) == s.g1);
  CHECK(s.w2.grad().to_vector<float>() == s.g2);
  // No gradients at all: 0.
  Tensor w = Tensor::zeros({s.a}).with_requires_grad();
  CHECK(clip_grad_norm(std::vector<Tensor*>{&w}, 1.0) == 0.0);
}

TEST_CASE("clip_grad_norm with a non-finite norm", "[optim]") {
  Dim a(2, "a");
  Tensor w = Tensor::zeros({a}).with_requires_grad();
  w.set_grad(Tensor::from_vector<float>({a}, {1.0f, dimx_test::kNaN}));
  std::string msg = error_of([&] { clip_grad_norm(std::vector<Tensor*>{&w}, 1.0, 2, true); });
  CHECK_THAT(msg, Catch::StartsWith("clip_grad_norm") && Catch::Contains("error_if_nonfinite"));
  CHECK(std::isnan(clip_grad_norm(std::vector<Tensor*>{&w}, 1.0)));
  CHECK_THROWS_AS(clip_grad_norm(std::vector<Tensor*>{&w}, -1.0), dimx::Error);
  CHECK_THROWS_AS(clip_grad_norm(std::vector<Tensor*>{&w}, 1.0, 0.0), dimx::Error);
}

TEST_CASE("clip_grad_value clamps every element", "[optim]") {
  ClipSetup s;
  clip_grad_value(s.params(), 0.3);
  for (float x : s.w1.grad().to_vector<float>()) CHECK(std::fabs(x) <= 0.3f);
  std::vector<float> g2 = s.w2.grad().to_vector<float>();
  for (size_t i = 0; i < g2.size(); ++i) CHECK(g2[i] == std::clamp(s.g2[i], -0.3f, 0.3f));
}

// ---- state

TEST_CASE("save_state / load_state continue a run identically", "[optim]") {
  auto make = [](int which, Setup& s) -> std::unique_ptr<Optimizer> {
    NamedParameters ps{{"layer.w", &s.w}};
    if (which == 0) return std::make_unique<SGD>(ps, SGDOptions{.lr = 0.05, .momentum = 0.9, .nesterov = true});
    if (which == 1) return std::make_unique<Adam>(ps, AdamOptions{.lr = 0.02, .amsgrad = true});
    return std::make_unique<AdamW>(ps, AdamWOptions{.lr = 0.02});
  };
  for (int which = 0; which < 3; ++which) {
    Setup s1;
    Setup s2(s1);
    auto o1 = make(which, s1);
    INFO(o1->kind());
    run(*o1, s1, 3);
    TempFile file("roundtrip");
    o1->save_state(file.str());
    // The file: buffers under state.<param>.<buffer>, the step count in the metadata.
    SafeTensors st = SafeTensors::open(file.str());
    CHECK(st.metadata().at("optimizer") == o1->kind());
    CHECK(st.metadata().at("state.layer.w.step") == "3");
    CHECK(st.contains(which == 0 ? "state.layer.w.momentum_buffer" : "state.layer.w.exp_avg"));

    // A fresh optimizer over the same parameter values, with other options: load restores both.
    s2.w.copy_from(s1.w);
    auto o2 = make(which, s2);
    o2->set_lr(123.0);
    o2->load_state(file.str());
    CHECK(o2->lr() == o1->lr());
    CHECK(o2->state().at("layer.w").step == 3);
    run(*o1, s1, 3, 3);
    run(*o2, s2, 3, 3);
    CHECK(s1.values() == s2.values());  // bit-identical
  }
}

TEST_CASE("state() / set_state round-trip in memory", "[optim]") {
  Setup s1;
  Setup s2(s1);
  Adam o1({{"w", &s1.w}}, {.lr = 0.01});
  run(o1, s1, 2);
  OptimizerState saved = o1.state();
  s2.w.copy_from(s1.w);
  Adam o2({{"w", &s2.w}}, {.lr = 0.01});
  o2.set_state(saved);
  run(o1, s1, 2, 2);
  run(o2, s2, 2, 2);
  CHECK(s1.values() == s2.values());
}

TEST_CASE("loading state validates names, Dims and the optimizer kind", "[optim]") {
  Setup s;
  Adam adam({{"w", &s.w}}, {.lr = 0.01});
  run(adam, s, 2);
  TempFile file("validate");
  adam.save_state(file.str());

  SECTION("another kind") {
    Setup t;
    SGD sgd({{"w", &t.w}}, {.lr = 0.1, .momentum = 0.9});
    std::string msg = error_of([&] { sgd.load_state(file.str()); });
    CHECK_THAT(msg, Catch::StartsWith("SGD: load_state") && Catch::Contains("Adam state"));
  }
  SECTION("a parameter of another name") {
    Setup t;
    Adam other({{"v", &t.w}}, {.lr = 0.01});
    std::string msg = error_of([&] { other.load_state(file.str()); });
    CHECK_THAT(msg, Catch::StartsWith("Adam: load_state") && Catch::Contains("unknown parameter 'w'"));
    CHECK(other.state().empty());
  }
  SECTION("a parameter of other extents") {
    Dim a(4, "a"), b(3, "b");
    Tensor w = Tensor::zeros({a, b}, DType::f64).with_requires_grad();
    Adam other({{"w", &w}}, {.lr = 0.5});
    std::string msg = error_of([&] { other.load_state(file.str()); });
    CHECK_THAT(msg, Catch::StartsWith("Adam: load_state") && Catch::Contains("parameter 'w'") &&
                        Catch::Contains("state.w.exp_avg"));
    CHECK(other.state().empty());
    CHECK(other.lr() == 0.5);  // options are restored on failure too
  }
  SECTION("amsgrad expects a buffer the file lacks") {
    Setup t;
    Adam other({{"w", &t.w}}, {.lr = 0.01, .amsgrad = true});
    // The file's options (amsgrad=false) are restored with it, so this loads fine ...
    other.load_state(file.str());
    CHECK(!other.options().amsgrad);
    // ... but set_state with a buffer missing does not.
    Adam ams({{"w", &t.w}}, {.lr = 0.01, .amsgrad = true});
    std::string msg = error_of([&] { ams.set_state(adam.state()); });
    CHECK_THAT(msg, Catch::Contains("Adam") && Catch::Contains("'w'") && Catch::Contains("max_exp_avg_sq"));
  }
  SECTION("set_state with other Dims or dtype") {
    OptimizerState bad = adam.state();
    Dim c(3, "c"), d(4, "d");
    bad["w"].buffers["exp_avg"] = Tensor::zeros({c, d}, DType::f64);
    std::string msg = error_of([&] { adam.set_state(bad); });
    CHECK_THAT(msg, Catch::Contains("Adam: set_state") && Catch::Contains("exp_avg") && Catch::Contains("'w'"));
    bad = adam.state();
    bad["w"].buffers["exp_avg"] = bad["w"].buffers["exp_avg"].astype(DType::f32);
    CHECK_THROWS_AS(adam.set_state(bad), dimx::Error);
    bad = adam.state();
    bad["nope"] = adam.state().at("w");
    CHECK_THAT(error_of([&] { adam.set_state(bad); }), Catch::Contains("unknown parameter 'nope'"));
  }
  SECTION("a file that is not an optimizer state") {
    TempFile other("plain");
    save_safetensors(other.str(), {{"x", Tensor::zeros({s.a})}});
    CHECK_THAT(error_of([&] { adam.load_state(other.str()); }), Catch::Contains("not an optimizer state file"));
    CHECK_THAT(error_of([&] { adam.load_state("/nonexistent/dir/state.safetensors"); }),
               Catch::StartsWith("Adam: load_state"));
  }
}

TEST_CASE("optimizer errors name the optimizer and the parameter", "[optim][errors]") {
  Dim a(3, "a");
  Tensor w = Tensor::zeros({a}).with_requires_grad();
  Tensor frozen = Tensor::zeros({a});
  Tensor ints = Tensor::zeros({a}, DType::i32);
  NamedParameters ok{{"fc.weight", &w}};

  CHECK_THAT(error_of([&] { SGD(ok, {.lr = -0.1}); }), Catch::StartsWith("SGD: invalid learning rate"));
  CHECK_THAT(error_of([&] { SGD(ok, SGDOptions{}); }), Catch::StartsWith("SGD: lr is required"));
  CHECK_THAT(error_of([&] { SGD(ok, {.lr = 0.1, .momentum = -1}); }), Catch::Contains("momentum"));
  CHECK_THAT(error_of([&] { SGD(ok, {.lr = 0.1, .nesterov = true}); }), Catch::Contains("nesterov"));
  CHECK_THAT(error_of([&] { SGD(ok, {.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .nesterov = true}); }),
             Catch::Contains("dampening"));
  CHECK_THAT(error_of([&] { SGD(ok, {.lr = 0.1, .weight_decay = -1}); }), Catch::Contains("weight_decay"));
  CHECK_THAT(error_of([&] { Adam(ok, {.lr = -1}); }), Catch::StartsWith("Adam: invalid learning rate"));
  CHECK_THAT(error_of([&] { Adam(ok, {.beta1 = 1.0}); }), Catch::StartsWith("Adam: invalid beta1"));
  CHECK_THAT(error_of([&] { AdamW(ok, {.beta2 = -0.1}); }), Catch::StartsWith("AdamW: invalid beta2"));
  CHECK_THAT(error_of([&] { AdamW(ok, {.eps = -1e-8}); }), Catch::StartsWith("AdamW: invalid eps"));
  CHECK_THAT(error_of([&] { AdamW(ok, {.weight_decay = -1e-2}); }), Catch::StartsWith("AdamW: invalid weight_decay"));

  CHECK_THAT(error_of([&] { AdamW({{"fc.weight", &w}, {"fc.frozen", &frozen}}); }),
             Catch::StartsWith("AdamW: parameter 'fc.frozen'") && Catch::Contains("does not require grad"));
  CHECK_THAT(error_of([&] { Adam({{"fc.idx", &ints}}); }), Catch::Contains("'fc.idx'") && Catch::Contains("floating"));
  CHECK_THAT(error_of([&] { Adam(NamedParameters{}); }), Catch::Contains("empty parameter list"));
  CHECK_THAT(error_of([&] { Adam({{"x", &w}, {"x", &w}}); }), Catch::Contains("'x' appears more than once"));
  Tensor alias = w;
  CHECK_THAT(error_of([&] { Adam({{"x", &w}, {"y", &alias}}); }), Catch::Contains("'y' is the same tensor"));
  CHECK_THAT(error_of([&] { Adam({{"x", nullptr}}); }), Catch::Contains("'x' is a null pointer"));
}

// Autocast (dimx/autocast.h) and dynamic loss scaling (dimx/optim/grad_scaler.h).
#include <dimx/nn.h>
#include <dimx/optim.h>

#include <cmath>
#include <filesystem>
#include <optional>
#include <thread>

#include <unistd.h>

#include "test_util.h"

using namespace dimx;
using namespace dimx_test;

namespace {


// Calls of the copy primitive that cast f32 to `dt` while `f` runs.
template <class F>
int64_t casts_to(DType dt, F&& f) {
  Profiler prof;
  f();
  int64_t n = 0;
  const std::string want = std::string("copy f32->") + dtype_name(dt);
  for (const Profiler::Entry& e : prof.entries())
    if (e.primitive.rfind(want, 0) == 0) n += e.calls;
  return n;
}

std::vector<float> values(const Tensor& t) { return t.to_vector<float>(); }

}  // namespace

// ---- the guard

TEST_CASE("autocast: guards nest, switch autocast off and restore the state", "[autocast]") {
  CHECK_FALSE(autocast_enabled());
  CHECK(autocast_dtype() == DType::f32);
  {
    AutocastGuard amp(DType::bf16);
    CHECK(autocast_enabled());
    CHECK(autocast_dtype() == DType::bf16);
    {
      AutocastGuard inner(DType::f16);
      CHECK(autocast_enabled());
      CHECK(autocast_dtype() == DType::f16);
      {
        AutocastGuard off(DType::f32, /*enabled=*/false);
        CHECK_FALSE(autocast_enabled());
        CHECK(autocast_dtype() == DType::f32);
      }
      CHECK(autocast_dtype() == DType::f16);
    }
    CHECK(autocast_enabled());
    CHECK(autocast_dtype() == DType::bf16);
  }
  CHECK_FALSE(autocast_enabled());
  CHECK(autocast_dtype() == DType::f32);
  // Default: bf16.
  {
    AutocastGuard amp;
    CHECK(autocast_dtype() == DType::bf16);
  }
  // Enabled needs a half dtype; a failed guard changes nothing.
  CHECK_THROWS_WITH(AutocastGuard(DType::f32), Catch::Contains("AutocastGuard") && Catch::Contains("bf16 or f16"));
  CHECK_THROWS_WITH(AutocastGuard(DType::i32, false), Catch::Contains("AutocastGuard") && Catch::Contains("i32"));
  CHECK_FALSE(autocast_enabled());
}

TEST_CASE("autocast: the state is per thread", "[autocast]") {
  Dim m(3, "m"), k(4, "k"), n(2, "n");
  Tensor a = random_tensor({m, k}, 1), b = random_tensor({k, n}, 2);
  AutocastGuard amp(DType::bf16);
  DType other_thread = DType::boolean, other_inner = DType::boolean;
  bool other_enabled = true;
  std::thread t([&] {
    other_enabled = autocast_enabled();
    other_thread = matmul(a, b, k).dtype();
    AutocastGuard f16(DType::f16);
    other_inner = matmul(a, b, k).dtype();
  });
  t.join();
  CHECK_FALSE(other_enabled);
  CHECK(other_thread == DType::f32);
  CHECK(other_inner == DType::f16);
  // The other thread's guard left this one alone.
  CHECK(autocast_dtype() == DType::bf16);
  CHECK(matmul(a, b, k).dtype() == DType::bf16);
}

// ---- the low-precision list

TEST_CASE("autocast: matmul runs in the low dtype on rounded inputs", "[autocast]") {
  Dim batch(2, "batch"), m(5, "m"), k(33, "k"), n(7, "n");
  Tensor a = random_tensor({batch, m, k}, 3), b = random_tensor({n, k}, 4);
  for (DType dt : {DType::bf16, DType::f16}) {
    INFO(dtype_name(dt));
    // matmul of the explicitly rounded inputs, accumulated in f32 and rounded once.
    Tensor want = matmul(a.astype(dt).astype(DType::f32), b.astype(dt).astype(DType::f32), k).astype(dt);
    Tensor y;
    {
      AutocastGuard amp(dt);
      y = matmul(a, b, k);
      // Already-low and mixed inputs: the f32 one is cast.
      CHECK(matmul(a.astype(dt), b, k).to_vector<float>() == values(want));
      // The other half type is cast too.
      DType other = dt == DType::bf16 ? DType::f16 : DType::bf16;
      CHECK(matmul(a.astype(other), b, k).dtype() == dt);
    }
    CHECK(y.dtype() == dt);
    CHECK(y.dims() == want.dims());
    CHECK(values(y) == values(want));
  }
  // Outside a guard and in a disabled one: f32 as written.
  CHECK(matmul(a, b, k).dtype() == DType::f32);
  {
    AutocastGuard amp(DType::bf16);
    AutocastGuard off(DType::f32, false);
    CHECK(matmul(a, b, k).dtype() == DType::f32);
    CHECK(values(matmul(a, b, k)) == values(matmul(a, b, k)));
  }
  // f64 is never cast.
  {
    AutocastGuard amp(DType::bf16);
    CHECK(matmul(a.astype(DType::f64), b.astype(DType::f64), k).dtype() == DType::f64);
  }
}

TEST_CASE("autocast: the cast of a parameter is made once per outermost guard", "[autocast]") {
  Dim m(4, "m"), k(8, "k"), n(3, "n");
  Tensor w = random_tensor({n, k}, 5).with_requires_grad();
  Tensor x = random_tensor({m, k}, 6);
  NoGradGuard no_grad;
  // Two uses of w, one cast of it (x, not a leaf, is cast at each use).
  CHECK(casts_to(DType::bf16, [&] {
          AutocastGuard amp(DType::bf16);
          matmul(x, w, k);
          AutocastGuard inner(DType::bf16);
          matmul(x, w, k);
        }) == 3);
  // Without the cache, or across outermost guards, each use casts.
  CHECK(casts_to(DType::bf16, [&] {
          AutocastGuard amp(DType::bf16, true, /*cache=*/false);
          matmul(x, w, k);
          matmul(x, w, k);
        }) == 4);
  CHECK(casts_to(DType::bf16, [&] {
          for (int i = 0; i < 2; ++i) {
            AutocastGuard amp(DType::bf16);
            matmul(x, w, k);
          }
        }) == 4);
  // A cached cast is keyed by the low dtype.
  CHECK(casts_to(DType::f16, [&] {
          AutocastGuard amp(DType::bf16);
          matmul(x, w, k);
          AutocastGuard f16(DType::f16);
          matmul(x, w, k);
          matmul(x, w, k);
        }) == 3);
  // The cache holds the values of the cast: an in-place update shows after clear_autocast_cache()
  // (Optimizer::step() clears it).
  AutocastGuard amp(DType::bf16);
  Tensor y0 = matmul(x, w, k);
  w.copy_from(w * 2.0);
  CHECK(values(matmul(x, w, k)) == values(y0));
  clear_autocast_cache();
  CHECK(values(matmul(x, w, k)) == values(matmul(x.astype(DType::bf16), w.astype(DType::bf16), k)));
}

// ---- the f32 list

TEST_CASE("autocast: ops on the f32 list widen half inputs and return f32", "[autocast]") {
  Dim batch(3, "batch"), time = dynamic_dim(batch, {4, 2, 0}), feat(6, "feat");
  Tensor x32 = random_tensor({batch, time, feat}, 7);
  for (DType dt : {DType::bf16, DType::f16}) {
    INFO(dtype_name(dt));
    Tensor h = x32.astype(dt), w = h.astype(DType::f32);  // w: the widened values
    AutocastGuard amp(dt);
    auto same = [](const Tensor& got, const Tensor& want) {
      CHECK(got.dtype() == DType::f32);
      CHECK(got.dims() == want.dims());
      CHECK(vec_identical(got.to_vector<float>(), want.to_vector<float>(got.dims())));
    };
    same(softmax(h, feat), softmax(w, feat));
    same(log_softmax(h, time), log_softmax(w, time));
    same(reduce_sum(h, {time}), reduce_sum(w, {time}));
    same(reduce_mean(h, {time, feat}), reduce_mean(w, {time, feat}));
    same(reduce_logsumexp(h, {feat}), reduce_logsumexp(w, {feat}));
    same(cumsum(h, time), cumsum(w, time));
    same(layer_norm(h, feat), layer_norm(w, feat));
    Tensor gamma = random_tensor({feat}, 8).astype(dt);
    same(layer_norm(x32, feat, gamma), layer_norm(x32, feat, gamma.astype(DType::f32)));
    for (UnaryOp op : {UnaryOp::exp, UnaryOp::expm1, UnaryOp::log1p, UnaryOp::softplus}) {
      INFO(op_name(op));
      same(apply(op, h), apply(op, w));
    }
    Tensor pos = abs(x32).astype(dt) , posw = pos.astype(DType::f32);
    same(log(pos), log(posw));
    same(rsqrt(pos), rsqrt(posw));
    same(reciprocal(pos), reciprocal(posw));
    same(combine(pos, BinaryOp::pow, 1.5), combine(posw, BinaryOp::pow, 1.5));
    same(pow(posw, Tensor::scalar(2, dt)), pow(posw, Tensor::scalar(2)));
    // cross_entropy: logits widened, the loss f32 (as without autocast), same values.
    Tensor targets = Tensor::from_vector<int64_t>({batch, time}, random_int64s(12, 9, 0, 5)).with_sparse_dim(feat);
    same(cross_entropy(h, targets, feat), cross_entropy(w, targets, feat));
    same(cross_entropy(h, targets, feat, Reduction::none), cross_entropy(w, targets, feat, Reduction::none));
    // The scans and convolutions of MEGA.
    Dim kt(3, "kt"), heads(2, "heads");
    Tensor kernel = random_tensor({kt, feat}, 10);
    same(causal_conv(h, kernel, time, kt), causal_conv(w, kernel, time, kt));
    Tensor gain = random_tensor({feat, heads}, 11), decay = random_tensor({feat, heads}, 12, 0.1f, 0.9f);
    Tensor ew = random_tensor({feat, heads}, 13);
    same(ema(h, gain, decay, ew, time, heads).y, ema(w, gain, decay, ew, time, heads).y);
  }
  // f32 and f64 inputs are not touched.
  AutocastGuard amp(DType::bf16);
  CHECK(softmax(x32, feat).dtype() == DType::f32);
  CHECK(reduce_sum(x32.astype(DType::f64), {feat}).dtype() == DType::f64);
  CHECK(exp(x32.astype(DType::f64)).dtype() == DType::f64);
}

TEST_CASE("autocast: binary ops promote mixed floating dtypes to the wider one", "[autocast]") {
  Dim n(5, "n"), m(2, "m");
  Tensor a = random_tensor({n}, 14), b = random_tensor({m, n}, 15);
  Tensor bh = b.astype(DType::bf16), b64 = b.astype(DType::f64);
  // Outside autocast mixing is an error, as documented.
  CHECK_THROWS_WITH(b + a.astype(DType::f64), Catch::Contains("dtype mismatch"));
  CHECK_THROWS_WITH(a + bh, Catch::Contains("dtype mismatch"));
  AutocastGuard amp(DType::bf16);
  Tensor s = a + bh;  // f32 + bf16 -> f32
  CHECK(s.dtype() == DType::f32);
  CHECK(vec_identical(s.to_vector<float>({m, n}), (bh.astype(DType::f32) + a).to_vector<float>({m, n})));
  CHECK((bh * a).dtype() == DType::f32);
  Tensor d = a * b64;  // f32 * f64 -> f64
  CHECK(d.dtype() == DType::f64);
  CHECK(d.to_vector<double>({m, n}) == (a.astype(DType::f64) * b64).to_vector<double>({m, n}));
  CHECK((bh - b64).dtype() == DType::f64);
  CHECK((bh + b.astype(DType::f16)).dtype() == DType::f32);  // bf16 with f16 meet at f32
  CHECK(maximum(bh, a).dtype() == DType::f32);
  Tensor lt = less(bh, b);
  CHECK(lt.dtype() == DType::boolean);
  CHECK(lt.to_vector<bool>() == less(bh.astype(DType::f32), b).to_vector<bool>());
  Tensor wh = where(b > 0.0, bh, b);  // where's values promote too
  CHECK(wh.dtype() == DType::f32);
  CHECK(vec_identical(wh.to_vector<float>(), where(b > 0.0, bh.astype(DType::f32), b).to_vector<float>()));
  // Integers never mix with floats.
  CHECK_THROWS_WITH(a + Tensor::ones({n}, DType::i32), Catch::Contains("dtype mismatch"));
}

TEST_CASE("autocast: f32 leaves get f32 gradients through promoted ops", "[autocast][autograd]") {
  Dim n(4, "n");
  Tensor w = random_tensor({n}, 16).with_requires_grad();
  Tensor x = random_tensor({n}, 17).astype(DType::f64).with_requires_grad();
  Tensor loss;
  {
    AutocastGuard amp(DType::bf16);
    loss = reduce_sum(w * x, {n});  // promoted to f64
    CHECK(loss.dtype() == DType::f64);
    backward(loss);
  }
  REQUIRE(w.grad().defined());
  CHECK(w.grad().dtype() == DType::f32);
  CHECK(x.grad().dtype() == DType::f64);
  CHECK(w.grad().to_vector<float>() == x.astype(DType::f32).to_vector<float>());
}

TEST_CASE("autocast: f32 +/- bf16 or f16 gives f32, gradients in each operand's dtype", "[autocast][autograd]") {
  // A residual connection around a low-precision branch: one pass reading the half operand as
  // it is, the same values as widening it first.
  Dim n(5, "n"), m(3, "m");
  for (DType dt : {DType::bf16, DType::f16}) {
    INFO(dtype_name(dt));
    Tensor x = random_tensor({m, n}, 18).with_requires_grad();
    Tensor h = random_tensor({n}, 19).astype(dt).with_requires_grad();  // broadcast over m
    Tensor w = random_tensor({m, n}, 20);
    Tensor y, z;
    {
      AutocastGuard amp(dt);
      y = x + h;
      z = h - x;
    }
    CHECK(y.dtype() == DType::f32);
    CHECK(vec_identical(y.to_vector<float>({m, n}), (x.detach() + h.detach().astype(DType::f32)).to_vector<float>({m, n})));
    CHECK(vec_identical(z.to_vector<float>({m, n}), (h.detach().astype(DType::f32) - x.detach()).to_vector<float>({m, n})));
    std::vector<Tensor> g = grad(reduce_sum(y * w, {m, n}) + reduce_sum(z * w * 2.0, {m, n}), {x, h});
    CHECK(g[0].dtype() == DType::f32);
    CHECK(g[1].dtype() == dt);
    // d/dx = w - 2 w = -w; d/dh: each use's sum over m of w (then 2 w) rounded to dt, then the
    // two added in dt.
    CHECK_VEC_APPROX(g[0].to_vector<double>({m, n}), (-w).to_vector<double>({m, n}), 1e-6, 1e-6);
    Tensor want = reduce_sum(w, {m}).astype(dt) + reduce_sum(w * 2.0, {m}).astype(dt);
    CHECK(g[1].to_vector<float>({n}) == want.to_vector<float>({n}));
  }
}

TEST_CASE("autocast: backward runs with autocast off", "[autocast][autograd]") {
  // A graph recorded in f32, differentiated inside a guard: matmul's backward stays in f32.
  Dim m(3, "m"), k(5, "k"), n(2, "n");
  Tensor w = random_tensor({n, k}, 18).with_requires_grad();
  Tensor x = random_tensor({m, k}, 19);
  Tensor loss = reduce_sum(square(matmul(x, w, k)), {m, n});
  std::vector<Tensor> want = grad(loss, {w});
  {
    AutocastGuard amp(DType::bf16);
    backward(loss);
  }
  REQUIRE(w.grad().defined());
  CHECK(w.grad().dtype() == DType::f32);
  CHECK(vec_identical(w.grad().to_vector<float>(), want[0].to_vector<float>(w.grad().dims())));
}

// ---- GradScaler

namespace {

// A linear least-squares problem: loss = mean over batch of (x . w + b - y)^2.
struct Problem {
  Dim batch{16, "batch"}, feat{4, "feat"};
  Tensor w, b, x, y;
  explicit Problem(uint32_t seed = 20) {
    w = random_tensor({feat}, seed).with_requires_grad();
    b = Tensor::scalar(0.25).with_requires_grad();
    x = random_tensor({batch, feat}, seed + 1);
    y = random_tensor({batch}, seed + 2);
  }
  Tensor loss() const { return reduce_mean(square(reduce_sum(x * w, {feat}) + b - y), {batch}); }
  optim::NamedParameters params() { return {{"w", &w}, {"b", &b}}; }
};

}  // namespace

TEST_CASE("GradScaler: defaults, scale and unscale", "[grad_scaler][optim]") {
  optim::GradScaler scaler;
  CHECK(scaler.scale() == 65536.0);
  CHECK(scaler.enabled());
  CHECK(scaler.options().growth_factor == 2.0);
  CHECK(scaler.options().backoff_factor == 0.5);
  CHECK(scaler.options().growth_interval == 2000);
  Problem p;
  optim::SGD opt(p.params(), {.lr = 0.1});
  std::vector<Tensor> want = grad(p.loss(), {p.w, p.b});
  Tensor loss = p.loss();
  Tensor scaled = scaler.scale(loss);
  CHECK(scaled.item<float>() == loss.item<float>() * 65536.0f);
  backward(scaled);
  // Scaled gradients (exactly: the scale is a power of two).
  CHECK(p.w.grad().to_vector<float>() == (want[0] * 65536.0).to_vector<float>());
  scaler.unscale(opt);
  CHECK_FALSE(scaler.found_inf(opt));
  CHECK(p.w.grad().to_vector<float>() == want[0].to_vector<float>());
  CHECK(p.b.grad().item<float>() == want[1].item<float>());
  // step() after unscale() does not unscale again.
  Tensor w0 = p.w * 1.0;
  CHECK(scaler.step(opt));
  CHECK(vec_approx(p.w.to_vector<float>(), (w0 - 0.1 * want[0]).to_vector<float>(), 1e-6, 1e-7));
  scaler.update();
  CHECK(scaler.scale() == 65536.0);
  CHECK(scaler.growth_tracker() == 1);

  // A scale that is not a power of two: gradients times the f32 reciprocal, as PyTorch.
  optim::GradScaler three({.init_scale = 3.0});
  opt.zero_grad();
  Tensor g = Tensor::from_vector<float>({p.feat}, std::vector<float>{3.0f, 1.0f, -6.0f, 0.5f});
  p.w.set_grad(g);
  three.unscale(opt);
  const float inv = float(1.0 / 3.0);
  std::vector<float> got = p.w.grad().to_vector<float>();
  CHECK(got == std::vector<float>{3.0f * inv, 1.0f * inv, -6.0f * inv, 0.5f * inv});
  // A half loss is scaled in f32.
  Tensor half_loss = Tensor::scalar(2.0).astype(DType::f16);
  Tensor s = scaler.scale(half_loss);
  CHECK(s.dtype() == DType::f32);
  CHECK(s.item<float>() == 131072.0f);
}

TEST_CASE("GradScaler: an inf or NaN gradient skips the step and halves the scale", "[grad_scaler][optim]") {
  for (float bad : {kInf, -kInf, kNaN}) {
    INFO(bad);
    Problem p;
    optim::Adam opt(p.params(), {.lr = 0.1});
    optim::GradScaler scaler({.init_scale = 1024.0, .growth_interval = 3});
    // One clean step first, so the growth tracker has something to reset.
    backward(scaler.scale(p.loss()));
    CHECK(scaler.step(opt));
    scaler.update();
    CHECK(scaler.growth_tracker() == 1);
    opt.zero_grad();
    backward(scaler.scale(p.loss()));
    std::vector<float> g = p.w.grad().to_vector<float>();
    g[2] = bad;
    p.w.set_grad(Tensor::from_vector<float>({p.feat}, g));
    const std::vector<float> w0 = p.w.to_vector<float>(), b0 = p.b.to_vector<float>();
    const auto state0 = opt.state().at("w").step;
    CHECK_FALSE(scaler.step(opt));
    CHECK(scaler.found_inf(opt));
    CHECK(p.w.to_vector<float>() == w0);  // unchanged
    CHECK(p.b.to_vector<float>() == b0);
    CHECK(opt.state().at("w").step == state0);  // the optimizer did not step at all
    scaler.update();
    CHECK(scaler.scale() == 512.0);
    CHECK(scaler.growth_tracker() == 0);
    CHECK_FALSE(scaler.found_inf(opt));  // a new step
  }
}

TEST_CASE("GradScaler: the scale grows after growth_interval clean steps", "[grad_scaler][optim]") {
  Problem p;
  optim::SGD opt(p.params(), {.lr = 0.01});
  optim::GradScaler scaler({.init_scale = 8.0, .growth_factor = 4.0, .backoff_factor = 0.25, .growth_interval = 3});
  std::vector<double> scales;
  std::vector<int64_t> trackers;
  auto clean_step = [&] {
    opt.zero_grad();
    backward(scaler.scale(p.loss()));
    CHECK(scaler.step(opt));
    scaler.update();
    scales.push_back(scaler.scale());
    trackers.push_back(scaler.growth_tracker());
  };
  for (int i = 0; i < 7; ++i) clean_step();
  CHECK(scales == std::vector<double>{8, 8, 32, 32, 32, 128, 128});
  CHECK(trackers == std::vector<int64_t>{1, 2, 0, 1, 2, 0, 1});
  // A skipped step backs off by backoff_factor and restarts the count.
  opt.zero_grad();
  backward(scaler.scale(p.loss()));
  p.b.set_grad(Tensor::scalar(kNaN));
  CHECK_FALSE(scaler.step(opt));
  scaler.update();
  CHECK(scaler.scale() == 32.0);
  CHECK(scaler.growth_tracker() == 0);
  // update(new_scale) sets the scale.
  opt.zero_grad();
  backward(scaler.scale(p.loss()));
  scaler.step(opt);
  scaler.update(5.0);
  CHECK(scaler.scale() == 5.0);
  // Growth that would overflow f32 keeps the scale.
  optim::GradScaler big({.init_scale = 3e38, .growth_interval = 1});
  opt.zero_grad();
  p.w.set_grad(Tensor::zeros({p.feat}));
  big.step(opt);
  big.update();
  CHECK(big.scale() == double(3e38f));
  CHECK(big.growth_tracker() == 0);
}

TEST_CASE("GradScaler: clipping after unscale sees the true gradients", "[grad_scaler][optim]") {
  Problem p, q;
  optim::SGD opt_p(p.params(), {.lr = 0.5}), opt_q(q.params(), {.lr = 0.5});
  optim::GradScaler scaler;
  // Reference: no scaling.
  backward(q.loss());
  const double want_norm = optim::clip_grad_norm(opt_q.params(), 0.1);
  opt_q.step();
  // Scaled: unscale, clip, step.
  backward(scaler.scale(p.loss()));
  scaler.unscale(opt_p);
  const double norm = optim::clip_grad_norm(opt_p.params(), 0.1);
  CHECK(norm == Approx(want_norm).epsilon(1e-6));
  CHECK(want_norm > 0.1);  // the clip did clip
  CHECK(scaler.step(opt_p));
  scaler.update();
  CHECK(vec_approx(p.w.to_vector<float>(), q.w.to_vector<float>(), 1e-6, 1e-7));
  CHECK(p.b.item<float>() == Approx(q.b.item<float>()).epsilon(1e-6));
}

TEST_CASE("GradScaler: with several optimizers only the one with inf skips", "[grad_scaler][optim]") {
  Problem p, q(30);
  optim::SGD opt_p(p.params(), {.lr = 0.1}), opt_q(q.params(), {.lr = 0.1});
  optim::GradScaler scaler({.init_scale = 16.0});
  backward(scaler.scale(p.loss() + q.loss()));
  q.w.set_grad(Tensor::full({q.feat}, kInf));
  const std::vector<float> pw = p.w.to_vector<float>(), qw = q.w.to_vector<float>();
  CHECK(scaler.step(opt_p));
  CHECK_FALSE(scaler.step(opt_q));
  CHECK(p.w.to_vector<float>() != pw);
  CHECK(q.w.to_vector<float>() == qw);
  scaler.update();  // any inf backs off
  CHECK(scaler.scale() == 8.0);
}

TEST_CASE("GradScaler: misuse is an error naming GradScaler", "[grad_scaler][optim][errors]") {
  Problem p;
  optim::SGD opt(p.params(), {.lr = 0.1});
  optim::GradScaler scaler;
  CHECK_THROWS_WITH(scaler.update(), Catch::Contains("GradScaler") && Catch::Contains("no inf/NaN check"));
  backward(scaler.scale(p.loss()));
  scaler.unscale(opt);
  CHECK_THROWS_WITH(scaler.unscale(opt), Catch::Contains("GradScaler") && Catch::Contains("already been called"));
  scaler.step(opt);
  CHECK_THROWS_WITH(scaler.step(opt), Catch::Contains("GradScaler") && Catch::Contains("step() has already"));
  CHECK_THROWS_WITH(scaler.unscale(opt), Catch::Contains("after step()"));
  scaler.update();
  CHECK_THROWS_WITH(optim::GradScaler({.init_scale = 0}), Catch::Contains("GradScaler") && Catch::Contains("init_scale"));
  CHECK_THROWS_WITH(optim::GradScaler({.growth_factor = 1.0}), Catch::Contains("growth_factor"));
  CHECK_THROWS_WITH(optim::GradScaler({.backoff_factor = 1.0}), Catch::Contains("backoff_factor"));
  CHECK_THROWS_WITH(optim::GradScaler({.growth_interval = 0}), Catch::Contains("growth_interval"));
  CHECK_THROWS_WITH(scaler.scale(Tensor::ones({p.feat}, DType::i32)), Catch::Contains("floating"));
  CHECK_THROWS_WITH(scaler.update(-1.0), Catch::Contains("new_scale"));
}

TEST_CASE("GradScaler: disabled, every call passes through", "[grad_scaler][optim]") {
  Problem p, q;
  optim::SGD opt_p(p.params(), {.lr = 0.1}), opt_q(q.params(), {.lr = 0.1});
  optim::GradScaler scaler({.enabled = false});
  CHECK_FALSE(scaler.enabled());
  CHECK(scaler.scale() == 1.0);
  Tensor loss = p.loss();
  CHECK(scaler.scale(loss).impl_ptr() == loss.impl_ptr());
  backward(scaler.scale(loss));
  backward(q.loss());
  scaler.unscale(opt_p);
  CHECK(p.w.grad().to_vector<float>() == q.w.grad().to_vector<float>());
  CHECK(scaler.step(opt_p));
  opt_q.step();
  scaler.update();
  CHECK(p.w.to_vector<float>() == q.w.to_vector<float>());
  CHECK_THROWS_WITH(scaler.save_state("unused"), Catch::Contains("disabled"));
}

TEST_CASE("GradScaler: state round-trips through a file and in memory", "[grad_scaler][optim][io]") {
  Problem p;
  optim::SGD opt(p.params(), {.lr = 0.01});
  optim::GradScaler scaler({.init_scale = 256.0, .growth_factor = 3.0, .backoff_factor = 0.125, .growth_interval = 5});
  for (int i = 0; i < 3; ++i) {
    opt.zero_grad();
    backward(scaler.scale(p.loss()));
    scaler.step(opt);
    scaler.update();
  }
  opt.zero_grad();
  backward(scaler.scale(p.loss()));
  p.b.set_grad(Tensor::scalar(kInf));
  scaler.step(opt);
  scaler.update();
  opt.zero_grad();
  backward(scaler.scale(p.loss()));
  scaler.step(opt);
  scaler.update();
  REQUIRE(scaler.scale() == 32.0);
  REQUIRE(scaler.growth_tracker() == 1);

  TempFile file("scaler");
  scaler.save_state(file.str());
  SafeTensors st = SafeTensors::open(file.str());
  CHECK(st.keys().empty());
  CHECK(st.metadata().at("format") == "dimx.grad_scaler");
  CHECK(st.metadata().at("scale") == "32");
  CHECK(st.metadata().at("growth_tracker") == "1");

  optim::GradScaler resumed;
  resumed.load_state(file.str());
  CHECK(resumed.scale() == 32.0);
  CHECK(resumed.growth_tracker() == 1);
  CHECK(resumed.options().growth_factor == 3.0);
  CHECK(resumed.options().backoff_factor == 0.125);
  CHECK(resumed.options().growth_interval == 5);
  // Both continue identically: 4 more clean steps grow the scale once.
  for (optim::GradScaler* s : {&scaler, &resumed})
    for (int i = 0; i < 4; ++i) {
      opt.zero_grad();
      backward(s->scale(p.loss()));
      s->step(opt);
      s->update();
    }
  CHECK(scaler.scale() == 96.0);
  CHECK(resumed.scale() == scaler.scale());
  CHECK(resumed.growth_tracker() == scaler.growth_tracker());

  // In memory.
  optim::GradScaler other;
  other.set_state(scaler.state());
  CHECK(other.state().scale == 96.0);
  CHECK(other.state().growth_interval == 5);
  CHECK_THROWS_WITH(other.set_state({.scale = -1}), Catch::Contains("scale"));
  CHECK(other.scale() == 96.0);  // unchanged

  // Not a scaler file, a file with a bad value: errors, nothing changes.
  TempFile wrong("wrong");
  opt.save_state(wrong.str());
  CHECK_THROWS_WITH(other.load_state(wrong.str()), Catch::Contains("not a GradScaler state file"));
  TempFile bad("bad");
  save_safetensors(bad.str(), {}, {{"format", "dimx.grad_scaler"}, {"scale", "8"}, {"growth_tracker", "9"},
                                   {"growth_factor", "2"}, {"backoff_factor", "0.5"}, {"growth_interval", "4"}});
  CHECK_THROWS_WITH(other.load_state(bad.str()), Catch::Contains("growth tracker"));
  CHECK(other.scale() == 96.0);
  // A disabled scaler ignores loads, as PyTorch's.
  optim::GradScaler off({.enabled = false});
  off.load_state(file.str());
  CHECK(off.scale() == 1.0);
}

// ---- needs bf16/f16 elementwise ops and gradients (the half-ops work)

namespace {

// A 2-layer MLP regressor (train_regression's) on a noisy teacher; returns the held-out loss
// in f32 after `steps` Adam steps, trained under autocast to `amp` (nullopt: plain f32), with
// a GradScaler when `scaled`. `skipped` counts the steps the scaler skipped.
struct Mlp : nn::Module {
  BOOST_HANA_DEFINE_STRUCT(Mlp, (nn::Linear, fc1), (nn::Linear, fc2));
  Mlp(Dim in, Dim hidden, Dim out, Generator& gen) : fc1(in, hidden, gen), fc2(hidden, out, gen) {}
  Tensor operator()(const Tensor& x) const { return fc2(nn::tanh(fc1(x))); }
};

Tensor mse(const Tensor& pred, const Tensor& target) { return reduce_mean(square(pred - target), target.dims()); }

double train_mlp(std::optional<DType> amp, bool scaled, int steps, int* skipped = nullptr) {
  Generator gen(7);
  Dim in(8, "in"), hidden(32, "hidden"), out(2, "out"), batch(256, "batch"), held(256, "held");
  Mlp teacher(in, Dim(16, "teacher_hidden"), out, gen);
  Tensor x = random_normal({batch, in}, gen), xt = random_normal({held, in}, gen);
  Tensor y, yt;
  {
    NoGradGuard no_grad;
    for (auto& [name, p] : nn::named_parameters(teacher)) p->copy_from(*p * 3.0);
    y = teacher(x) + random_normal({batch, out}, gen, 0, 0.3);
    yt = teacher(xt) + random_normal({held, out}, gen, 0, 0.3);
  }
  Mlp model(in, hidden, out, gen);
  auto params = nn::named_parameters(model);
  optim::Adam opt(params, {.lr = 1e-2});
  optim::GradScaler scaler({.enabled = scaled});
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    Tensor loss;
    {
      AutocastGuard guard(amp.value_or(DType::f32), amp.has_value());
      loss = mse(model(x), y);
    }
    CHECK(loss.dtype() == DType::f32);
    backward(scaler.scale(loss));
    for (auto& [name, p] : params) CHECK(p->grad().dtype() == DType::f32);
    if (!scaler.step(opt) && skipped) ++*skipped;
    scaler.update();
  }
  NoGradGuard no_grad;
  return mse(model(xt), yt).item<double>();
}

}  // namespace

TEST_CASE("autocast: Linear and dot_attention run in the low dtype", "[autocast]") {
  Generator gen(3);
  Dim batch(2, "batch"), time(5, "time"), feat(8, "feat"), hid(6, "hid");
  nn::Linear lin(feat, hid, gen);
  Tensor x = random_normal({batch, time, feat}, gen);
  for (DType dt : {DType::bf16, DType::f16}) {
    INFO(dtype_name(dt));
    AutocastGuard amp(dt);
    Tensor y = lin(x);
    CHECK(y.dtype() == dt);
    // The explicitly cast operands' product and bias, summed exactly and rounded once (the
    // bias is added inside the GEMM): within half a unit in the last place of dt.
    auto wide = [&](const Tensor& t) { return t.astype(dt).astype(DType::f64); };
    const std::vector<double> want =
        (matmul(wide(x), wide(lin.weight), feat) + wide(*lin.bias)).to_vector<double>(y.dims());
    const std::vector<float> got = y.to_vector<float>();
    const double half_ulp = dt == DType::bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
    for (size_t i = 0; i < want.size(); ++i) CHECK(std::abs(got[i] - want[i]) <= half_ulp * std::abs(want[i]) * 1.01);
    Tensor att = nn::dot_attention(y, y, x, hid, time);
    CHECK(att.dtype() == dt);
    CHECK(relu(y).dtype() == dt);                     // not on a list: the input's dtype
    CHECK(reduce_max(y, {hid}).dtype() == dt);        // max is exact in any dtype
  }
}

TEST_CASE("autocast: f32 parameters get f32 gradients through low casts", "[autocast][autograd]") {
  Generator gen(4);
  Dim batch(3, "batch"), feat(8, "feat"), hid(4, "hid");
  nn::Linear lin(feat, hid, gen);
  Tensor x = random_normal({batch, feat}, gen);
  Tensor loss;
  {
    AutocastGuard amp(DType::bf16);
    loss = reduce_sum(square(lin(x)), {batch, hid});
  }
  CHECK(loss.dtype() == DType::f32);
  backward(loss);
  CHECK(lin.weight.grad().dtype() == DType::f32);
  CHECK(lin.bias->grad().dtype() == DType::f32);
  // Close to the f32 gradient (bf16 keeps 8 significant bits).
  Tensor w32 = lin.weight.detach().with_requires_grad();
  std::vector<Tensor> g = grad(reduce_sum(square(matmul(x, w32, feat) + lin.bias->detach()), {batch, hid}), {w32});
  CHECK(vec_approx(lin.weight.grad().to_vector<float>(), g[0].to_vector<float>(lin.weight.grad().dims()), 3e-2, 3e-2));
}

TEST_CASE("autocast: an MLP trained 200 steps in bf16 ends within 2% of f32", "[autocast]") {
  const double f32 = train_mlp(std::nullopt, false, 200);
  const double bf16 = train_mlp(DType::bf16, false, 200);
  INFO("f32 " << f32 << ", bf16 " << bf16);
  CHECK(std::abs(bf16 - f32) <= 0.02 * f32);
}

TEST_CASE("autocast: f16 with a GradScaler ends within 2% of f32", "[autocast][grad_scaler]") {
  const double f32 = train_mlp(std::nullopt, false, 200);
  int skipped = 0;
  const double f16 = train_mlp(DType::f16, true, 200, &skipped);
  INFO("f32 " << f32 << ", f16 " << f16 << ", skipped steps " << skipped);
  CHECK(std::abs(f16 - f32) <= 0.02 * f32);
  CHECK(skipped < 20);
}

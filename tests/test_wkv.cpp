// The WKV scan (dimx::wkv) and RWKV time mixing (nn::rwkv::SelfAttention): a float64 reference
// of the closed-form sum, the PyTorch golden file, float64 finite differences, decoding
// invariants, padding, extreme inputs and errors.
#include <dimx/nn.h>

#include <filesystem>

#include "module_check.h"

using namespace dimx;
using namespace dimx_test;

namespace {

// Closed form of one channel's scan in double, continuing a state (num0 e^max0, den0 e^max0):
//   y_t = (e^{tw} N0 + sum_{i<t} e^{(t-1-i)w+k_i} v_i + e^{u+k_t} v_t) / (same with 1 for v)
struct RefOut {
  std::vector<double> y;
  double num, den;  // true (unscaled) state after the last frame
};
RefOut reference(double w, double u, const std::vector<double>& k, const std::vector<double>& v, double n0 = 0,
                 double d0 = 0) {
  RefOut r;
  const size_t T = k.size();
  for (size_t t = 0; t <= T; ++t) {
    double num = std::exp(double(t) * w) * n0, den = std::exp(double(t) * w) * d0;
    for (size_t i = 0; i < t; ++i) {
      num += std::exp(double(t - 1 - i) * w + k[i]) * v[i];
      den += std::exp(double(t - 1 - i) * w + k[i]);
    }
    if (t == T) {
      r.num = num;
      r.den = den;
    } else {
      r.y.push_back((num + std::exp(u + k[t]) * v[t]) / (den + std::exp(u + k[t])));
    }
  }
  return r;
}

std::string golden_path() {
  return (std::filesystem::path(__FILE__).parent_path() / "golden" / "rwkv.safetensors").string();
}

// Values of `t` at the index given per Dim.
double at(const std::vector<double>& vals, const Dims& dims, const DimIndex& idx) {
  int64_t off = 0;
  for (const Dim& d : dims) off = off * d.extent() + idx.at(d);
  return vals[size_t(off)];
}

}  // namespace

TEST_CASE("wkv matches the closed-form sum for any layout and batch Dims", "[rwkv]") {
  Dim b1(2, "b1"), b2(3, "b2"), time(7, "time"), ch(5, "ch");
  for (DType dt : {DType::f32, DType::f64}) {
    INFO(dtype_name(dt));
    Tensor td = rnd({ch}, 1, dt, -3, 1), tf = rnd({ch}, 2, dt), k = rnd({b1, time, b2, ch}, 3, dt), v = rnd({ch, time, b1, b2}, 4, dt);
    auto dv = td.to_vector<double>(), uv = tf.to_vector<double>();
    Dims order{b1, b2, time, ch};
    auto kv = k.to_vector<double>(order), vv = v.to_vector<double>(order);
    std::vector<double> want_y(kv.size()), want_ratio, want_logden;
    for (int64_t b = 0; b < 6; ++b)
      for (int64_t c = 0; c < 5; ++c) {
        std::vector<double> ks, vs;
        for (int64_t t = 0; t < 7; ++t) {
          ks.push_back(kv[size_t((b * 7 + t) * 5 + c)]);
          vs.push_back(vv[size_t((b * 7 + t) * 5 + c)]);
        }
        RefOut r = reference(-std::exp(dv[size_t(c)]), uv[size_t(c)], ks, vs);
        for (int64_t t = 0; t < 7; ++t) want_y[size_t((b * 7 + t) * 5 + c)] = r.y[size_t(t)];
        want_ratio.push_back(r.num / r.den);
        want_logden.push_back(std::log(r.den));
      }
    const double tol = dt == DType::f64 ? 1e-12 : 2e-6;
    for (const Tensor& kl : layouts(k, 4)) {
      WkvResult res = wkv(td, tf, kl, v, time, ch);
      CHECK_VEC_APPROX(res.y.to_vector<double>(order), want_y, tol, tol);
      CHECK(res.y.dtype() == dt);
      Dims so{b1, b2, ch};
      auto num = res.state.num.to_vector<double>(so), den = res.state.den.to_vector<double>(so);
      auto mx = res.state.max.to_vector<double>(so);
      for (size_t i = 0; i < num.size(); ++i) {
        CHECK(num[i] / den[i] == Approx(want_ratio[i]).epsilon(tol * 10).margin(tol));
        CHECK(std::log(den[i]) + mx[i] == Approx(want_logden[i]).epsilon(tol * 10).margin(tol));
      }
    }
  }
}

TEST_CASE("wkv: a state carried in continues the sequence; step by step equals the whole", "[rwkv]") {
  Dim batch(3, "batch"), time(9, "time"), ch(4, "ch"), t1(4, "t1"), t2(5, "t2"), one(1, "one");
  Tensor td = rnd({ch}, 5, DType::f32, -4, 1), tf = rnd({ch}, 6), k = rnd({batch, time, ch}, 7), v = rnd({batch, time, ch}, 8);
  WkvResult whole = wkv(td, tf, k, v, time, ch);
  Dims order{batch, time, ch}, so{batch, ch};
  auto wy = whole.y.to_vector<double>(order);
  auto check_state = [&](const WkvState& s) {
    auto n = s.num.to_vector<double>(so), d = s.den.to_vector<double>(so), m = s.max.to_vector<double>(so);
    auto wn = whole.state.num.to_vector<double>(so), wd = whole.state.den.to_vector<double>(so);
    auto wm = whole.state.max.to_vector<double>(so);
    for (size_t i = 0; i < n.size(); ++i) {
      CHECK(n[i] / d[i] == Approx(wn[i] / wd[i]).epsilon(1e-5));
      CHECK(std::log(d[i]) + m[i] == Approx(std::log(wd[i]) + wm[i]).epsilon(1e-5).margin(1e-5));
    }
  };
  // Split in two.
  auto [k1, _a] = slice(k, time, 0, 4, 1, t1);
  auto [v1, _b] = slice(v, time, 0, 4, 1, t1);
  auto [k2, _c] = slice(k, time, 4, 9, 1, t2);
  auto [v2, _d] = slice(v, time, 4, 9, 1, t2);
  WkvResult r1 = wkv(td, tf, k1, v1, t1, ch);
  WkvResult r2 = wkv(td, tf, k2, v2, t2, ch, r1.state);
  auto y1 = r1.y.to_vector<double>({batch, t1, ch}), y2 = r2.y.to_vector<double>({batch, t2, ch});
  std::vector<double> joined;
  for (int64_t b = 0; b < 3; ++b) {
    joined.insert(joined.end(), y1.begin() + b * 16, y1.begin() + (b + 1) * 16);
    joined.insert(joined.end(), y2.begin() + b * 20, y2.begin() + (b + 1) * 20);
  }
  CHECK_VEC_APPROX(joined, wy, 1e-5, 1e-6);
  check_state(r2.state);
  // One frame at a time from the explicit empty state.
  WkvState s = wkv_initial_state({batch}, ch);
  for (int64_t t = 0; t < 9; ++t) {
    Tensor kt = slice(k, time, t, t + 1, 1, one).first, vt = slice(v, time, t, t + 1, 1, one).first;
    WkvResult r = wkv(td, tf, kt, vt, one, ch, s);
    auto y = r.y.to_vector<double>({batch, one, ch});
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t c = 0; c < 4; ++c) CHECK(y[size_t(b * 4 + c)] == Approx(wy[size_t((b * 9 + t) * 4 + c)]).epsilon(1e-5).margin(1e-6));
    s = r.state;
  }
  check_state(s);
}

TEST_CASE("wkv: padded frames are skipped: outputs, gradients and the state", "[rwkv]") {
  Dim batch(3, "batch"), ch(4, "ch");
  Dim time = dynamic_dim(batch, {6, 2, 0}, "time");
  Tensor td = rnd({ch}, 9, DType::f64, -3, 1), tf = rnd({ch}, 10, DType::f64);
  Tensor k = rnd({time, batch, ch}, 11, DType::f64), v = rnd({batch, ch, time}, 12, DType::f64);
  // Garbage in the padding must not leak anywhere.
  Tensor mask = sequence_mask({time});
  k = where(mask, k, std::numeric_limits<double>::quiet_NaN());
  Tensor kl = k.with_requires_grad(), vl = v.with_requires_grad();
  WkvResult r = wkv(td, tf, kl, vl, time, ch);
  Dims order{batch, time, ch};
  auto y = r.y.to_vector<double>(order);
  auto kv = k.to_vector<double>(order), vv = v.to_vector<double>(order);
  auto dv = td.to_vector<double>(), uv = tf.to_vector<double>();
  const int64_t lens[3] = {6, 2, 0};
  auto num = r.state.num.to_vector<double>({batch, ch}), den = r.state.den.to_vector<double>({batch, ch});
  auto mx = r.state.max.to_vector<double>({batch, ch});
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t c = 0; c < 4; ++c) {
      std::vector<double> ks, vs;
      for (int64_t t = 0; t < lens[b]; ++t) {
        ks.push_back(kv[size_t((b * 6 + t) * 4 + c)]);
        vs.push_back(vv[size_t((b * 6 + t) * 4 + c)]);
      }
      RefOut ref = reference(-std::exp(dv[size_t(c)]), uv[size_t(c)], ks, vs);
      for (int64_t t = 0; t < 6; ++t) {
        double got = y[size_t((b * 6 + t) * 4 + c)];
        CHECK(got == Approx(t < lens[b] ? ref.y[size_t(t)] : 0.0).epsilon(1e-12).margin(1e-12));
      }
      const size_t i = size_t(b * 4 + c);
      if (lens[b] == 0) {  // the incoming (empty) state
        CHECK(num[i] == 0);
        CHECK(den[i] == 0);
        CHECK(mx[i] == -1e38);
      } else {
        CHECK(num[i] / den[i] == Approx(ref.num / ref.den).epsilon(1e-12));
        CHECK(std::log(den[i]) + mx[i] == Approx(std::log(ref.den)).epsilon(1e-12));
      }
    }
  std::vector<Tensor> g = grad(reduce_sum(r.y * r.y, {batch, time, ch}), {kl, vl});
  for (const Tensor& gi : g) {
    auto gv = gi.to_vector<double>(order);
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t t = 0; t < 6; ++t)
        for (int64_t c = 0; c < 4; ++c) {
          double x = gv[size_t((b * 6 + t) * 4 + c)];
          CHECK(std::isfinite(x));
          if (t >= lens[b]) CHECK(x == 0);
        }
  }
}

TEST_CASE("wkv: gradients of k, v, time_decay and time_first match float64 finite differences", "[rwkv]") {
  Dim batch(2, "batch"), ch(3, "ch");
  Dim time = dynamic_dim(batch, {6, 4}, "time");
  Tensor td = rnd({ch}, 20, DType::f64, -2, 0.5), tf = rnd({ch}, 21, DType::f64);
  Tensor k = rnd({batch, time, ch}, 22, DType::f64), v = rnd({ch, batch, time}, 23, DType::f64);
  Tensor wgt = rnd({batch, time, ch}, 24, DType::f64);
  // A realistic incoming state: the end of another sequence.
  Dim pre(3, "pre");
  WkvState s0 = wkv(td, tf, rnd({batch, pre, ch}, 25, DType::f64), rnd({batch, pre, ch}, 26, DType::f64), pre, ch).state;
  for (bool with_state : {false, true}) {
    INFO("with state " << with_state);
    std::optional<WkvState> st;
    if (with_state) st = s0;
    auto loss = [&](const Tensor& a, const Tensor& b, const Tensor& c, const Tensor& d) {
      return reduce_sum(wkv(a, b, c, d, time, ch, st).y * wgt, {batch, time, ch});
    };
    std::vector<Tensor> in{td, tf, k, v};
    std::vector<Tensor> leaves;
    for (const Tensor& t : in) leaves.push_back(t.with_requires_grad());
    std::vector<Tensor> g = grad(loss(leaves[0], leaves[1], leaves[2], leaves[3]), leaves);
    for (size_t i = 0; i < 4; ++i) {
      INFO("input " << i);
      const Dims& d = in[i].dims();
      auto base = in[i].to_vector<double>(d), an = g[i].to_vector<double>(d);
      for (size_t j = 0; j < base.size(); ++j) {
        auto f = [&](double delta) {
          std::vector<double> p = base;
          p[j] += delta;
          std::vector<Tensor> x = in;
          x[i] = Tensor::from_vector<double>(d, p);
          NoGradGuard ng;
          return loss(x[0], x[1], x[2], x[3]).item<double>();
        };
        CHECK(an[j] == Approx((f(1e-6) - f(-1e-6)) / 2e-6).epsilon(1e-6).margin(1e-7));
      }
    }
  }
}

TEST_CASE("wkv: extreme inputs stay finite and y stays a weighted mean of v", "[rwkv]") {
  Dim batch(2, "batch"), time(40, "time"), ch(6, "ch");
  // Decays from w ~ -1e-9 to w ~ -5e34, bonuses of both signs, |k| up to 1e4.
  Tensor td = Tensor::from_vector<float>({ch}, std::vector<float>{-20, -5, 0, 3, 30, 80});
  Tensor tf = Tensor::from_vector<float>({ch}, std::vector<float>{-1e4f, -30, 0, 1, 30, 1e4f});
  for (uint32_t seed : {30u, 31u}) {
    Tensor k = rnd({batch, time, ch}, seed, DType::f32, -1e4, 1e4), v = rnd({batch, time, ch}, seed + 5);
    Tensor kl = k.with_requires_grad(), vl = v.with_requires_grad(), tdl = td.with_requires_grad(), tfl = tf.with_requires_grad();
    WkvResult r = wkv(tdl, tfl, kl, vl, time, ch);
    Dims order{batch, time, ch};
    auto y = r.y.to_vector<double>(order), vv = v.to_vector<double>(order);
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t c = 0; c < 6; ++c) {
        double lo = 1e9, hi = -1e9;
        for (int64_t t = 0; t < 40; ++t) {
          size_t i = size_t((b * 40 + t) * 6 + c);
          lo = std::min(lo, vv[i]);
          hi = std::max(hi, vv[i]);
          REQUIRE(std::isfinite(y[i]));
          CHECK(y[i] >= lo - 1e-5);
          CHECK(y[i] <= hi + 1e-5);
        }
      }
    for (const Tensor* s : {&r.state.num, &r.state.den, &r.state.max})
      for (double x : s->to_vector<double>()) CHECK(std::isfinite(x));
    std::vector<Tensor> g = grad(reduce_sum(r.y * v, {batch, time, ch}), {kl, vl, tdl, tfl});
    for (const Tensor& gi : g)
      for (double x : gi.to_vector<double>()) REQUIRE(std::isfinite(x));
  }
}

// (bf16/f16 tensors cannot require grad in dimx: gradients go through f32 parameters.)
TEST_CASE("wkv: bf16 and f16 inputs are computed in f32 and y is cast back", "[rwkv]") {
  Dim batch(2, "batch"), time(6, "time"), ch(5, "ch");
  Tensor td = rnd({ch}, 60, DType::f32, -3, 1), tf = rnd({ch}, 61), k = rnd({batch, time, ch}, 62), v = rnd({batch, time, ch}, 63);
  for (DType half : {DType::bf16, DType::f16}) {
    INFO(dtype_name(half));
    Tensor kh = k.astype(half), vh = v.astype(half);
    WkvResult r = wkv(td, tf, kh, vh, time, ch);
    CHECK(r.y.dtype() == half);
    CHECK(r.state.num.dtype() == DType::f32);
    WkvResult want = wkv(td, tf, kh.astype(DType::f32), vh.astype(DType::f32), time, ch);
    CHECK_VEC_APPROX(r.y.to_vector<double>({batch, time, ch}), want.y.astype(half).to_vector<double>({batch, time, ch}), 0, 0);
  }
}

TEST_CASE("wkv: errors name the op and the Dims", "[rwkv]") {
  Dim batch(2, "batch"), time(3, "time"), ch(4, "ch"), other(4, "other");
  Tensor td = rnd({ch}, 1), tf = rnd({ch}, 2), k = rnd({batch, time, ch}, 3), v = rnd({batch, time, ch}, 4);
  CHECK_THROWS_WITH(wkv(rnd({other}, 1), tf, k, v, time, ch), Catch::Contains("wkv") && Catch::Contains("time_decay") && Catch::Contains("other"));
  CHECK_THROWS_WITH(wkv(td, tf, k, rnd({batch, time, other}, 5), time, ch), Catch::Contains("wkv") && Catch::Contains("other"));
  CHECK_THROWS_WITH(wkv(td, tf, k, v, other, ch), Catch::Contains("wkv") && Catch::Contains("other"));
  CHECK_THROWS_WITH(wkv(td, tf, k, v, ch, ch), Catch::Contains("wkv") && Catch::Contains("same Dim"));
  CHECK_THROWS_WITH(wkv(td, tf, k.astype(DType::i32), v, time, ch), Catch::Contains("wkv") && Catch::Contains("floating"));
  WkvState bad = wkv_initial_state({time}, ch);
  CHECK_THROWS_WITH(wkv(td, tf, k, v, time, ch, bad), Catch::Contains("wkv") && Catch::Contains("state.num") && Catch::Contains("batch"));
  Dim b3(3, "b3");
  Dim dyn = dynamic_dim(b3, {1, 2, 3}, "dyn");
  CHECK_THROWS_WITH(wkv(td, tf, rnd({batch, dyn, ch}, 6), rnd({batch, dyn, ch}, 7), dyn, ch),
                    Catch::Contains("wkv") && Catch::Contains("b3"));
}

TEST_CASE("rwkv::SelfAttention matches the PyTorch reference (golden file)", "[rwkv]") {
  SafeTensors f = SafeTensors::open(golden_path());
  Dim batch(2, "batch"), time(5, "time"), size(6, "size"), att(4, "attention");
  Generator gen(0);
  nn::rwkv::SelfAttention m(size, att, 128, 1, 3, gen);
  // reset_parameters per the spec: (block 1 of 3) and the single-block case.
  for (const char* p : {"time_decay", "time_first", "time_mix_key", "time_mix_value", "time_mix_receptance"}) {
    INFO(p);
    const Tensor* t = nullptr;
    for (auto& [name, q] : nn::named_parameters(m))
      if (name == p) t = q;
    REQUIRE(t != nullptr);
    CHECK_VEC_APPROX(t->to_vector<double>(), f.load(std::string("init3.") + p, t->dims()).to_vector<double>(), 1e-6, 1e-6);
    nn::rwkv::SelfAttention single(size, att, 128, 0, 1, gen);
    for (auto& [name, q] : nn::named_parameters(single))
      if (name == p) {
        auto got = q->to_vector<double>();
        for (double x : got) CHECK(std::isfinite(x));
        CHECK_VEC_APPROX(got, f.load(std::string("init1.") + p, q->dims()).to_vector<double>(), 1e-6, 1e-6);
      }
  }
  // Weights loaded by their PyTorch names and shapes.
  LoadReport rep = nn::load_state(m, f, /*strict=*/false);
  CHECK(rep.missing.empty());
  CHECK(rep.mismatched.empty());
  CHECK(rep.loaded.size() == 13);
  Tensor x = f.load("x", {batch, time, size}), w = f.load("w", {batch, time, size});
  auto [out, state] = m(x, time);
  CHECK_VEC_APPROX(out.to_vector<double>({batch, time, size}), f.load("out", {batch, time, size}).to_vector<double>(), 1e-5, 1e-5);
  // Gradients of sum(out * w) against torch's float64 autograd through the recurrence.
  std::vector<Tensor> leaves;
  auto params = nn::named_parameters(m);
  for (auto& [name, p] : params) leaves.push_back(*p);
  std::vector<Tensor> g = grad(reduce_sum(out * w, {batch, time, size}), leaves);
  for (size_t i = 0; i < params.size(); ++i) {
    INFO(params[i].first);
    const Dims& d = params[i].second->dims();
    CHECK_VEC_APPROX(g[i].to_vector<double>(d), f.load("grad." + params[i].first, d).to_vector<double>(), 1e-4, 1e-5);
  }
  // Saved under the same names and shapes, it loads into a fresh module.
  std::string path = (std::filesystem::temp_directory_path() / "dimx_test_rwkv_state.safetensors").string();
  nn::save_state(m, path);
  nn::rwkv::SelfAttention fresh(size, att, 128, 0, 3, gen);
  CHECK(nn::load_state(fresh, path).loaded.size() == 13);
  SafeTensors saved = SafeTensors::open(path);
  CHECK(saved.load("time_mix_key").dims().size() == 3);
  std::filesystem::remove(path);
  CHECK_VEC_APPROX(fresh(x, time).first.to_vector<double>({batch, time, size}), out.to_vector<double>({batch, time, size}), 0, 0);
  // The decoding state after the sequence.
  CHECK_VEC_APPROX(state.x.to_vector<double>({batch, size}), f.load("state.x", {batch, size}).to_vector<double>(), 0, 0);
  auto n = state.num.to_vector<double>({batch, att}), d = state.den.to_vector<double>({batch, att});
  auto mx = state.max.to_vector<double>({batch, att});
  auto wn = f.load("state.num", {batch, att}).to_vector<double>(), wd = f.load("state.den", {batch, att}).to_vector<double>();
  auto wm = f.load("state.max", {batch, att}).to_vector<double>();
  for (size_t i = 0; i < n.size(); ++i) {
    CHECK(n[i] / d[i] == Approx(wn[i] / wd[i]).epsilon(1e-5).margin(1e-6));
    CHECK(std::log(d[i]) + mx[i] == Approx(std::log(wd[i]) + wm[i]).epsilon(1e-5).margin(1e-5));
  }
}

TEST_CASE("rwkv::SelfAttention: parameter gradients match float64 finite differences", "[rwkv]") {
  Dim batch(2, "batch"), size(5, "size"), att(3, "attention");
  Dim time = dynamic_dim(batch, {4, 3}, "time");
  Generator gen(4);
  nn::rwkv::SelfAttention m(size, att, 64, 1, 2, gen, DType::f64);
  {
    NoGradGuard ng;  // move every parameter off its init so nothing is special
    for (auto& [name, p] : nn::named_parameters(m)) p->copy_from(*p + random_uniform(p->dims(), gen, -0.3, 0.3, DType::f64));
  }
  Tensor x = rnd({batch, time, size}, 40, DType::f64), w = rnd({batch, time, size}, 41, DType::f64);
  for (bool with_state : {false, true}) {
    INFO("with state " << with_state);
    Dim pre(2, "pre");
    std::optional<nn::rwkv::State> st;
    if (with_state) {
      NoGradGuard ng;
      st = m(rnd({batch, pre, size}, 43, DType::f64), pre).second;
    }
    check_param_grads(m, [&] { return reduce_sum(copy_masked(m(x, time, st).first, {time}) * w, {batch, time, size}); }, 2);
  }
}

TEST_CASE("rwkv::SelfAttention: decoding step by step and in two chunks equals the whole sequence", "[rwkv]") {
  Dim batch(2, "batch"), time(7, "time"), size(6, "size"), att(8, "attention"), one(1, "one"), t1(3, "t1"), t2(4, "t2");
  Generator gen(5);
  nn::rwkv::SelfAttention m(size, att, 16, 0, 2, gen);
  nn::eval(m);
  Tensor x = rnd({time, batch, size}, 50);
  NoGradGuard ng;
  auto [whole, ws] = m(x, time);
  Dims order{batch, time, size};
  auto want = whole.to_vector<double>(order);
  // Step by step from the explicit empty state.
  nn::rwkv::State s = m.initial_state({batch});
  for (int64_t t = 0; t < 7; ++t) {
    auto [o, ns] = m(slice(x, time, t, t + 1, 1, one).first, one, s);
    auto got = o.to_vector<double>({batch, one, size});
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t c = 0; c < 6; ++c)
        CHECK(got[size_t(b * 6 + c)] == Approx(want[size_t((b * 7 + t) * 6 + c)]).epsilon(1e-5).margin(1e-6));
    s = ns;
  }
  CHECK_VEC_APPROX(s.x.to_vector<double>({batch, size}), ws.x.to_vector<double>({batch, size}), 0, 0);
  CHECK_VEC_APPROX(s.max.to_vector<double>({batch, att}), ws.max.to_vector<double>({batch, att}), 1e-5, 1e-5);
  // Two chunks with the carried state.
  auto [o1, s1] = m(slice(x, time, 0, 3, 1, t1).first, t1);
  auto [o2, s2] = m(slice(x, time, 3, 7, 1, t2).first, t2, s1);
  auto g1 = o1.to_vector<double>({batch, t1, size}), g2 = o2.to_vector<double>({batch, t2, size});
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 7; ++t)
      for (int64_t c = 0; c < 6; ++c) {
        double got = t < 3 ? g1[size_t((b * 3 + t) * 6 + c)] : g2[size_t((b * 4 + t - 3) * 6 + c)];
        CHECK(got == Approx(want[size_t((b * 7 + t) * 6 + c)]).epsilon(1e-5).margin(1e-6));
      }
  // A padded batch: each sequence's valid frames as if alone, its state after its last frame.
  Dim dyn = dynamic_dim(batch, {7, 3}, "dyn");
  Tensor xp = replace_dim(x, time, dyn).first;
  auto [op, sp] = m(xp, dyn);
  auto gp = op.to_vector<double>({batch, dyn, size});
  for (int64_t t = 0; t < 7; ++t)
    for (int64_t c = 0; c < 6; ++c) {
      CHECK(gp[size_t(t * 6 + c)] == Approx(want[size_t(t * 6 + c)]).epsilon(1e-5).margin(1e-6));
      if (t < 3) CHECK(gp[size_t((7 + t) * 6 + c)] == Approx(want[size_t((7 + t) * 6 + c)]).epsilon(1e-5).margin(1e-6));
    }
  auto spx = sp.x.to_vector<double>({batch, size}), xv = x.to_vector<double>({batch, time, size});
  for (int64_t c = 0; c < 6; ++c) {
    CHECK(spx[size_t(c)] == xv[size_t(6 * 6 + c)]);
    CHECK(spx[size_t(6 + c)] == xv[size_t((7 + 2) * 6 + c)]);
  }
  // Sequence 0 is the whole sequence, so its state is the unpadded run's.
  auto spm = sp.max.to_vector<double>({batch, att}), wsm = ws.max.to_vector<double>({batch, att});
  for (int64_t a = 0; a < 8; ++a) CHECK(spm[size_t(a)] == Approx(wsm[size_t(a)]).epsilon(1e-6).margin(1e-6));
}

TEST_CASE("rwkv::SelfAttention: construction errors and description", "[rwkv]") {
  Dim size(6, "size");
  Generator gen(1);
  CHECK_THROWS_WITH(nn::rwkv::SelfAttention(size, size, 16, 0, 1, gen), Catch::Contains("distinct"));
  CHECK_THROWS_WITH(nn::rwkv::SelfAttention(size, Dim(4, "att"), 16, 3, 3, gen), Catch::Contains("block_id"));
  nn::rwkv::SelfAttention m(size, Dim(4, "att"), 16, 0, 1, gen);
  std::string d = nn::describe(m);
  CHECK(d.find("time_mix_key  {mix_batch:1, mix_time:1, size:6}") != std::string::npos);
  CHECK(d.find("proj_output.weight") != std::string::npos);
  Dim batch(2, "batch"), time(3, "time");
  CHECK_THROWS_WITH(m(rnd({batch, time, Dim(5, "other")}, 1), time), Catch::Contains("rwkv::SelfAttention") && Catch::Contains("size"));
}

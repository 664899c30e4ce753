// The WKV scan: against the direct formula (float64 loop), padding, carried states, extreme
// inputs, float64 finite-difference gradients and errors.
#include <dimx/dimx.h>

#include "module_check.h"

using namespace dimx;
using namespace dimx_test;

namespace {

struct Setup {
  Dim batch{3, "batch"};
  Dim time = dynamic_dim(batch, {6, 2, 0}, "time");
  Dim chan{5, "chan"};
};

// y[b, t, c] by the definition: sums over the history, no rescaling (inputs kept small).
std::vector<double> direct(const Setup& s, const Tensor& td, const Tensor& tf, const Tensor& k, const Tensor& v) {
  const int64_t T = s.time.extent(), C = 5;
  auto D = td.to_vector<double>({s.chan}), U = tf.to_vector<double>({s.chan});
  auto K = k.to_vector<double>({s.batch, s.time, s.chan}), V = v.to_vector<double>({s.batch, s.time, s.chan});
  auto lens = s.time.lengths().to_vector<int32_t>();
  std::vector<double> y(K.size(), 0.0);
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t c = 0; c < C; ++c) {
      const double w = -std::exp(D[size_t(c)]);
      for (int64_t t = 0; t < lens[size_t(b)]; ++t) {
        auto at = [&](int64_t i) { return size_t((b * T + i) * C + c); };
        double num = std::exp(U[size_t(c)] + K[at(t)]) * V[at(t)], den = std::exp(U[size_t(c)] + K[at(t)]);
        for (int64_t i = 0; i < t; ++i) {
          double e = std::exp(double(t - 1 - i) * w + K[at(i)]);
          num += e * V[at(i)];
          den += e;
        }
        y[at(t)] = num / den;
      }
    }
  return y;
}

struct Inputs {
  Tensor td, tf, k, v;
};
Inputs inputs(const Setup& s, DType dt, uint32_t seed) {
  return {rnd({s.chan}, seed, dt, -1.0, 1.0), rnd({s.chan}, seed + 1, dt, -1.0, 1.0),
          rnd({s.time, s.chan, s.batch}, seed + 2, dt), rnd({s.chan, s.batch, s.time}, seed + 3, dt)};
}

}  // namespace

TEST_CASE("wkv matches the direct formula on a padded batch, in any layout", "[rwkv]") {
  Setup s;
  for (DType dt : {DType::f64, DType::f32}) {
    Inputs in = inputs(s, dt, 1);
    WkvOutput o = wkv(in.td, in.tf, in.k, in.v, s.time, s.chan);
    CHECK(o.y.dtype() == dt);
    CHECK(o.y.dims() == Dims{s.batch, s.time, s.chan});  // batch Dims, axis, channel
    auto want = direct(s, in.td, in.tf, in.k, in.v);
    CHECK_VEC_APPROX(o.y.to_vector<double>({s.batch, s.time, s.chan}), want, dt == DType::f64 ? 1e-12 : 1e-5,
                     dt == DType::f64 ? 1e-12 : 1e-5);
    // The empty sequence keeps the empty state.
    auto mx = o.state.max.to_vector<double>({s.batch, s.chan});
    for (int64_t c = 0; c < 5; ++c) CHECK(mx[size_t(2 * 5 + c)] == Approx(-1e38));
  }
}

TEST_CASE("wkv: a sequence split in two with the carried state equals the whole", "[rwkv]") {
  Setup s;
  Inputs in = inputs(s, DType::f64, 2);
  WkvOutput whole = wkv(in.td, in.tf, in.k, in.v, s.time, s.chan);
  auto [k1, t1] = slice(in.k, s.time, 0, 3);
  auto [k2, t2] = slice(in.k, s.time, 3);
  Tensor v1 = slice(in.v, s.time, 0, 3, 1, t1).first, v2 = slice(in.v, s.time, 3, std::nullopt, 1, t2).first;
  WkvOutput a = wkv(in.td, in.tf, k1, v1, t1, s.chan);
  WkvOutput b = wkv(in.td, in.tf, k2, v2, t2, s.chan, a.state);
  auto w = whole.y.to_vector<double>({s.batch, s.time, s.chan});
  auto ya = a.y.to_vector<double>({s.batch, t1, s.chan}), yb = b.y.to_vector<double>({s.batch, t2, s.chan});
  auto lens = s.time.lengths().to_vector<int32_t>();
  for (int64_t bi = 0; bi < 3; ++bi)
    for (int64_t t = 0; t < lens[size_t(bi)]; ++t)
      for (int64_t c = 0; c < 5; ++c) {
        double got = t < 3 ? ya[size_t((bi * 3 + t) * 5 + c)] : yb[size_t((bi * 3 + t - 3) * 5 + c)];
        CHECK(got == Approx(w[size_t((bi * 6 + t) * 5 + c)]).epsilon(1e-12).margin(1e-12));
      }
  // States agree through num / den and log(den) + max (the triple itself is not unique).
  auto ratio = [&](const WkvState& st) { return (st.num / st.den).to_vector<double>({s.batch, s.chan}); };
  auto scale = [&](const WkvState& st) { return (log(st.den) + st.max).to_vector<double>({s.batch, s.chan}); };
  auto r1 = ratio(b.state), r2 = ratio(whole.state), l1 = scale(b.state), l2 = scale(whole.state);
  for (size_t i = 0; i < 10; ++i) {  // sequences 0 and 1 (sequence 2 is empty: 0 / 0)
    CHECK(r1[i] == Approx(r2[i]).epsilon(1e-12));
    CHECK(l1[i] == Approx(l2[i]).epsilon(1e-12));
  }
}

TEST_CASE("wkv: extreme inputs stay finite and exact", "[rwkv]") {
  Dim batch(2, "batch"), time(40, "time"), chan(4, "chan");
  std::vector<double> kv, vv;
  for (int64_t i = 0; i < 2 * 40 * 4; ++i) {
    kv.push_back((i % 7 - 3) * 3333.0);  // up to |k| = 1e4
    vv.push_back(double(i % 5) - 2.0);
  }
  Tensor k = Tensor::from_vector<double>({batch, time, chan}, kv), v = Tensor::from_vector<double>({batch, time, chan}, vv);
  Tensor td = Tensor::from_vector<double>({chan}, {-30.0, 0.0, 3.0, 8.0});  // w from -1e-13 to -3000
  Tensor tf = Tensor::from_vector<double>({chan}, {-1e4, 0.0, 5.0, 1e4});
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor kd = k.astype(dt).with_requires_grad(), vd = v.astype(dt).with_requires_grad();
    WkvOutput o = wkv(td.astype(dt), tf.astype(dt), kd, vd, time, chan);
    auto y = o.y.to_vector<double>({batch, time, chan});
    // y is a weighted mean of the v's seen: finite and within their range.
    for (double x : y) {
      CHECK(std::isfinite(x));
      CHECK(x >= -2.0 - 1e-4);
      CHECK(x <= 2.0 + 1e-4);
    }
    std::vector<Tensor> g = grad(reduce_sum(o.y, {batch, time, chan}), {kd, vd});
    for (const Tensor& t : g)
      for (double x : t.to_vector<double>()) CHECK(std::isfinite(x));
  }
}

TEST_CASE("wkv: gradients of time_decay, time_first, k and v match float64 finite differences", "[rwkv]") {
  Setup s;
  Inputs in = inputs(s, DType::f64, 3);
  Tensor wgt = rnd({s.batch, s.time, s.chan}, 9, DType::f64);
  WkvState st = wkv(in.td, in.tf, in.k, in.v, s.time, s.chan).state;
  std::vector<Tensor> x{in.td, in.tf, in.k, in.v};
  auto loss = [&](const std::vector<Tensor>& p, bool with_state) {
    std::optional<WkvState> init;
    if (with_state) init = st;
    return reduce_sum(copy_masked(wkv(p[0], p[1], p[2], p[3], s.time, s.chan, init).y, {s.time}) * wgt,
                      {s.batch, s.time, s.chan});
  };
  for (bool with_state : {false, true}) {
    INFO((with_state ? "continuing a state" : "from the empty state"));
    std::vector<Tensor> leaves;
    for (const Tensor& t : x) leaves.push_back(t.with_requires_grad());
    std::vector<Tensor> g = grad(loss(leaves, with_state), leaves);
    for (size_t i = 0; i < 4; ++i) {
      INFO("input " << i);
      const Dims d = x[i].dims();
      auto base = x[i].to_vector<double>(d), an = g[i].to_vector<double>(d);
      for (size_t j = 0; j < base.size(); ++j) {
        auto at = [&](double delta) {
          std::vector<double> p = base;
          p[j] += delta;
          std::vector<Tensor> xs = x;
          xs[i] = Tensor::from_vector<double>(d, p);
          NoGradGuard ng;
          return loss(xs, with_state).item<double>();
        };
        CHECK(an[j] == Approx((at(1e-6) - at(-1e-6)) / 2e-6).epsilon(1e-6).margin(1e-8));
      }
    }
  }
}

TEST_CASE("wkv: errors name the op and the Dims", "[rwkv]") {
  Setup s;
  Inputs in = inputs(s, DType::f32, 4);
  CHECK_THROWS_WITH(wkv(in.td, in.tf, in.k, in.v, s.chan.copy("other"), s.chan), Catch::Contains("wkv") && Catch::Contains("other"));
  CHECK_THROWS_WITH(wkv(in.td, in.tf, in.k, in.td, s.time, s.chan), Catch::Contains("wkv: v"));
  Dim c2(5, "c2");
  CHECK_THROWS_WITH(wkv(rnd({c2}, 1), in.tf, in.k, in.v, s.time, s.chan), Catch::Contains("time_decay") && Catch::Contains("chan:5"));
  WkvState bad = wkv_initial_state({Dim(3, "b2")}, s.chan);
  CHECK_THROWS_WITH(wkv(in.td, in.tf, in.k, in.v, s.time, s.chan, bad), Catch::Contains("state"));
  CHECK_THROWS_WITH(wkv(in.td, in.tf, in.k.astype(DType::i32), in.v, s.time, s.chan), Catch::Contains("floating"));
}

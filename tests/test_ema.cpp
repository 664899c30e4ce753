// ema: against causal_conv with the kernel it stands for, any layout; a state continues a
// sequence (chunks and single frames equal the whole); float64 finite differences for x,
// gain, decay, weight and the state; padded sequences; f32 over 16384 frames; errors.
#include <dimx/conv.h>
#include <dimx/ema.h>

#include "module_check.h"

using namespace dimx;
using namespace dimx_test;
using Catch::Contains;

namespace {

struct Params {
  Dim c{3, "c"}, h{4, "h"};
  Tensor gain, decay, weight;
  explicit Params(DType dt = DType::f64, int64_t channels = 3, int64_t heads = 4)
      : c(channels, "c"), h(heads, "h") {
    gain = rnd({c, h}, 11, dt, -1, 1);
    decay = rnd({c, h}, 12, dt, 0.3, 0.97);
    weight = rnd({c, h}, 13, dt, -1, 1);
  }
  // K[j, c] = sum_h weight gain decay^j over `taps`.
  Tensor kernel(const Dim& taps) const {
    const int64_t C = c.size(), H = h.size();
    auto a = gain.to_vector<double>({c, h}), q = decay.to_vector<double>({c, h}), w = weight.to_vector<double>({c, h});
    std::vector<double> k(size_t(taps.size() * C), 0.0);
    for (int64_t j = 0; j < taps.size(); ++j)
      for (int64_t ci = 0; ci < C; ++ci)
        for (int64_t hi = 0; hi < H; ++hi) {
          const size_t p = size_t(ci * H + hi);
          k[size_t(j * C + ci)] += w[p] * a[p] * std::pow(q[p], double(j));
        }
    return Tensor::from_vector<double>({taps, c}, k).astype(gain.dtype());
  }
};

}  // namespace

TEST_CASE("ema equals causal_conv with its untruncated kernel, in any layout", "[ema]") {
  Params p;
  Dim b(2, "b");
  for (int64_t L : {1, 2, 9, 40}) {
    INFO("L " << L);
    Dim t(L, "t"), taps(L, "taps");
    Tensor x = rnd({b, t, p.c}, 1, DType::f64);
    auto want = causal_conv(x, p.kernel(taps), t, taps, ConvMethod::direct).to_vector<double>({b, t, p.c});
    EmaResult r = ema(x, p.gain, p.decay, p.weight, t, p.h);
    CHECK((r.y.ndim() == 3 && r.y.has_dim(b) && r.y.has_dim(t) && r.y.has_dim(p.c)));
    CHECK(r.state.dims() == Dims{b, p.c, p.h});
    CHECK_VEC_APPROX(r.y.to_vector<double>({b, t, p.c}), want, 1e-10, 1e-12);
    Tensor y2 = ema(x.transpose_to({p.c, t, b}), p.gain.transpose_to({p.h, p.c}), p.decay, p.weight.transpose_to({p.h, p.c}),
                    t, p.h).y;
    CHECK_VEC_APPROX(y2.to_vector<double>({b, t, p.c}), want, 1e-10, 1e-12);
  }
}

TEST_CASE("ema: a state continues the sequence (chunks and single frames equal the whole)", "[ema]") {
  Params p;
  Dim b(2, "b"), t(23, "t");
  Tensor x = rnd({b, t, p.c}, 2, DType::f64);
  Tensor s0 = rnd({b, p.c, p.h}, 3, DType::f64);
  EmaResult whole = ema(x, p.gain, p.decay, p.weight, t, p.h, s0);
  auto want = whole.y.to_vector<double>({b, t, p.c});
  // Three chunks of 10, 1 and 12 frames.
  std::vector<double> got;
  Tensor s = s0;
  std::vector<std::vector<double>> parts;
  for (auto [start, len] : {std::pair<int64_t, int64_t>{0, 10}, {10, 1}, {11, 12}}) {
    Dim piece(len, "piece");
    Tensor xp = slice(x, t, start, start + len, 1, piece).first;
    EmaResult r = ema(xp, p.gain, p.decay, p.weight, piece, p.h, s);
    parts.push_back(r.y.to_vector<double>({piece, b, p.c}));
    s = r.state;
  }
  CHECK_VEC_APPROX(s.to_vector<double>({b, p.c, p.h}), whole.state.to_vector<double>({b, p.c, p.h}), 1e-10, 1e-12);
  // Compare time-major.
  auto want_tm = whole.y.to_vector<double>({t, b, p.c});
  std::vector<double> cat;
  for (auto& v : parts) cat.insert(cat.end(), v.begin(), v.end());
  CHECK_VEC_APPROX(cat, want_tm, 1e-10, 1e-12);
  // The state after the whole sequence, from the recurrence by hand for one (b, c, h).
  auto xv = x.to_vector<double>({b, t, p.c});
  auto a = p.gain.to_vector<double>({p.c, p.h}), q = p.decay.to_vector<double>({p.c, p.h});
  double st = s0.to_vector<double>({b, p.c, p.h})[size_t((1 * 3 + 2) * 4 + 1)];
  for (int64_t i = 0; i < 23; ++i) st = q[2 * 4 + 1] * st + a[2 * 4 + 1] * xv[size_t((1 * 23 + i) * 3 + 2)];
  CHECK(whole.state.to_vector<double>({b, p.c, p.h})[size_t((1 * 3 + 2) * 4 + 1)] == Approx(st).epsilon(1e-12));
}

TEST_CASE("ema gradients (from y and the returned state) match float64 finite differences, padded too", "[ema][grad]") {
  Params p(DType::f64, 2, 3);
  Dim b(2, "b");
  for (bool padded : {false, true}) {
    INFO("padded " << padded);
    Dim t = padded ? dynamic_dim(b, {7, 0}, "t") : Dim(7, "t");
    Tensor x = rnd({b, t, p.c}, 4, DType::f64), s0 = rnd({b, p.c, p.h}, 5, DType::f64), w = rnd({t, b, p.c}, 6, DType::f64);
    std::vector<Tensor> in{x, p.gain, p.decay, p.weight, s0};
    Tensor ws = rnd({b, p.c, p.h}, 7, DType::f64);
    auto loss = [&](const std::vector<Tensor>& v) {
      EmaResult r = ema(v[0], v[1], v[2], v[3], t, p.h, v[4]);
      return reduce(copy_masked(r.y * w, {t}), ReduceOp::sum, {b, t, p.c}, false) +
             reduce_sum(r.state * ws, {b, p.c, p.h});
    };
    std::vector<Tensor> req;
    for (const Tensor& v : in) req.push_back(v.with_requires_grad());
    auto g = grad(loss(req), req);
    for (size_t which = 0; which < in.size(); ++which) {
      auto base = in[which].to_vector<double>(in[which].dims());
      auto an = g[which].to_vector<double>(in[which].dims());
      for (size_t j = 0; j < base.size(); ++j) {
        auto at = [&](double delta) {
          auto v = base;
          v[j] += delta;
          std::vector<Tensor> moved = in;
          moved[which] = Tensor::from_vector<double>(in[which].dims(), v);
          return loss(moved).item<double>();
        };
        INFO("input " << which << " element " << j);
        CHECK(an[j] == Approx((at(1e-6) - at(-1e-6)) / 2e-6).epsilon(1e-6).margin(1e-8));
      }
    }
  }
}

TEST_CASE("ema: padded frames output 0, never reach valid outputs or gradients, and leave the state alone", "[ema][padding]") {
  Params p;
  Dim b(3, "b");
  Dim t = dynamic_dim(b, {9, 4, 0}, "t");
  Tensor valid = sequence_mask({t});
  auto run = [&](double pad) {
    Tensor x = where(valid, rnd({b, t, p.c}, 7, DType::f64), pad, true).detach().with_requires_grad();
    Tensor a = p.gain.with_requires_grad();
    EmaResult r = ema(x, a, p.decay, p.weight, t, p.h);
    auto g = grad(reduce_sum(square(r.y), {b, t, p.c}), {x, a});
    return std::vector<std::vector<double>>{r.y.to_vector<double>({b, t, p.c}), g[0].to_vector<double>({b, t, p.c}),
                                            g[1].to_vector<double>({p.c, p.h}), r.state.to_vector<double>({b, p.c, p.h})};
  };
  auto want = run(0);
  auto got = run(std::numeric_limits<double>::quiet_NaN());
  for (size_t i = 0; i < want.size(); ++i) CHECK_VEC_APPROX(got[i], want[i], 1e-12, 1e-14);
  // Padded frames: y = 0 and gradient 0; the empty sequence keeps the zero state.
  auto y = want[0], gx = want[1];
  for (int64_t tt = 4; tt < 9; ++tt)
    for (int64_t ci = 0; ci < 3; ++ci) {
      CHECK(y[size_t((1 * 9 + tt) * 3 + ci)] == 0.0);
      CHECK(gx[size_t((1 * 9 + tt) * 3 + ci)] == 0.0);
    }
  for (size_t i = 2 * 12; i < 3 * 12; ++i) CHECK(want[3][i] == 0.0);
  // The second sequence alone (4 frames) gives the same outputs and state.
  Dim t4(4, "t4");
  Dim one(1, "one");
  Tensor idx = Tensor::from_vector<int64_t>({one}, std::vector<int64_t>{1}).with_sparse_dim(b);
  Tensor x1 = slice(gather(where(valid, rnd({b, t, p.c}, 7, DType::f64), 0.0, true), idx), t, 0, 4, 1, t4).first;
  EmaResult alone = ema(x1, p.gain, p.decay, p.weight, t4, p.h);
  auto ya = alone.y.to_vector<double>({one, t4, p.c});
  for (int64_t tt = 0; tt < 4; ++tt)
    for (int64_t ci = 0; ci < 3; ++ci) CHECK(ya[size_t(tt * 3 + ci)] == Approx(y[size_t((9 + tt) * 3 + ci)]).epsilon(1e-12));
  CHECK_VEC_APPROX(alone.state.to_vector<double>({one, p.c, p.h}),
                   std::vector<double>(want[3].begin() + 12, want[3].begin() + 24), 1e-12, 1e-14);
}

TEST_CASE("ema: f32 over 16384 frames equals the FFT convolution to rounding", "[ema]") {
  Params p(DType::f32, 5, 16);
  Dim b(2, "b");
  for (int64_t L : {1, 1000, 16384}) {
    INFO("L " << L);
    Dim t(L, "t"), taps(L, "taps");
    Tensor x = random_tensor({b, t, p.c}, 3, -1.f, 1.f);
    auto f = causal_conv(x, p.kernel(taps), t, taps, ConvMethod::fft).to_vector<double>({b, t, p.c});
    auto s = ema(x, p.gain, p.decay, p.weight, t, p.h).y.to_vector<double>({b, t, p.c});
    CHECK_VEC_APPROX(s, f, 1e-4, 1e-4);
  }
}

TEST_CASE("ema errors name the op and the Dims", "[ema][errors]") {
  Params p(DType::f32);
  Dim b(2, "b"), t(5, "t"), other(3, "other");
  Tensor x = random_tensor({b, t, p.c}, 1);
  CHECK_THROWS_WITH(ema(x, p.gain, p.decay, p.weight, t, other), Contains("ema") && Contains("other"));
  CHECK_THROWS_WITH(ema(x, p.gain, rnd({p.c, other}, 1), p.weight, t, p.h), Contains("decay") && Contains("other"));
  CHECK_THROWS_WITH(ema(x, p.gain, p.decay.astype(DType::f64), p.weight, t, p.h), Contains("dtype"));
  CHECK_THROWS_WITH(ema(x.astype(DType::i32), p.gain, p.decay, p.weight, t, p.h), Contains("needs f32, f64, bf16 or f16") && Contains("i32"));
  CHECK_THROWS_WITH(ema(random_tensor({b, t}, 1), p.gain, p.decay, p.weight, t, p.h), Contains("c:3"));
  CHECK_THROWS_WITH(ema(x, p.gain, p.decay, p.weight, t, p.h, random_tensor({b, p.c}, 2)), Contains("state"));
  Dim t2 = dynamic_dim(other, {1, 2, 3}, "t2");
  CHECK_THROWS_WITH(ema(random_tensor({b, t2, p.c}, 1), p.gain, p.decay, p.weight, t2, p.h), Contains("lengths"));
}

// causal_conv: against a naive loop, the direct path against the FFT path over lengths from 1
// to 16384 (odd lengths, non-powers of two, kernels shorter and longer than the sequence),
// float64 finite differences for x and the kernel, padded sequences and errors.
#include <dimx/conv.h>

#include "module_check.h"

using namespace dimx;
using namespace dimx_test;
using Catch::Contains;

namespace {

// y[b, t, c] = sum_{j <= t, j < K} k[j, c] x[b, t - j, c] in double.
std::vector<double> naive(const std::vector<double>& x, const std::vector<double>& k, int64_t B, int64_t L, int64_t C,
                          int64_t K) {
  std::vector<double> y(size_t(B * L * C), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < L; ++t)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t j = 0; j < K && j <= t; ++j)
          y[size_t((b * L + t) * C + c)] += k[size_t(j * C + c)] * x[size_t((b * L + t - j) * C + c)];
  return y;
}

}  // namespace

TEST_CASE("causal_conv matches a naive loop, both paths, any layout", "[conv]") {
  Dim b(2, "b"), c(3, "c");
  for (int64_t L : {1, 2, 7, 33}) {
    for (int64_t K : {1, 4, 33, 50}) {
      INFO("L " << L << " K " << K);
      Dim t(L, "t"), k(K, "k");
      Tensor x = rnd({b, t, c}, 1, DType::f64), kern = rnd({k, c}, 2, DType::f64);
      auto want = naive(x.to_vector<double>({b, t, c}), kern.to_vector<double>({k, c}), 2, L, 3, K);
      for (ConvMethod m : {ConvMethod::direct, ConvMethod::fft, ConvMethod::automatic}) {
        Tensor y = causal_conv(x, kern, t, k, m);
        CHECK(y.dims() == Dims{b, t, c});
        CHECK_VEC_APPROX(y.to_vector<double>({b, t, c}), want, 1e-10, 1e-12);
      }
      // Another layout of x and the kernel: the same values.
      Tensor y2 = causal_conv(x.transpose_to({c, t, b}), kern.transpose_to({c, k}), t, k, ConvMethod::fft);
      CHECK_VEC_APPROX(y2.to_vector<double>({b, t, c}), want, 1e-10, 1e-12);
    }
  }
}

TEST_CASE("causal_conv: direct == FFT in f32 for lengths up to 16384", "[conv]") {
  Dim b(2, "b"), c(5, "c");
  for (int64_t L : {1, 3, 17, 100, 257, 1000, 4097, 16384}) {
    INFO("L " << L);
    Dim t(L, "t"), k(std::max<int64_t>(1, L / 2 + 1), "k");
    // A decaying kernel, as an EMA's, so values stay of order 1.
    std::vector<float> kv(size_t(k.size() * 5));
    for (int64_t j = 0; j < k.size(); ++j)
      for (int64_t ch = 0; ch < 5; ++ch) kv[size_t(j * 5 + ch)] = 0.3f * std::pow(0.97f + 0.005f * float(ch), float(j));
    Tensor kern = Tensor::from_vector<float>({k, c}, kv);
    Tensor x = random_tensor({b, t, c}, 3, -1.f, 1.f);
    auto d = causal_conv(x, kern, t, k, ConvMethod::direct).to_vector<double>({b, t, c});
    auto f = causal_conv(x, kern, t, k, ConvMethod::fft).to_vector<double>({b, t, c});
    CHECK_VEC_APPROX(f, d, 1e-4, 1e-5);
  }
}

TEST_CASE("causal_conv gradients match float64 finite differences, both paths", "[conv][grad]") {
  Dim b(2, "b"), c(2, "c"), t(9, "t"), k(5, "k");
  Tensor x = rnd({b, t, c}, 4, DType::f64), kern = rnd({k, c}, 5, DType::f64), w = rnd({b, t, c}, 6, DType::f64);
  for (ConvMethod m : {ConvMethod::direct, ConvMethod::fft}) {
    Tensor xg = x.with_requires_grad(), kg = kern.with_requires_grad();
    auto loss = [&](const Tensor& xx, const Tensor& kk) { return reduce_sum(causal_conv(xx, kk, t, k, m) * w, {b, t, c}); };
    auto g = grad(loss(xg, kg), {xg, kg});
    for (int which = 0; which < 2; ++which) {
      const Tensor& base_t = which == 0 ? x : kern;
      auto base = base_t.to_vector<double>(base_t.dims());
      auto an = g[size_t(which)].to_vector<double>(base_t.dims());
      for (size_t j = 0; j < base.size(); ++j) {
        auto at = [&](double delta) {
          auto v = base;
          v[j] += delta;
          Tensor p = Tensor::from_vector<double>(base_t.dims(), v);
          return (which == 0 ? loss(p, kern) : loss(x, p)).item<double>();
        };
        CHECK(an[j] == Approx((at(1e-6) - at(-1e-6)) / 2e-6).epsilon(1e-6).margin(1e-8));
      }
    }
  }
}

TEST_CASE("causal_conv: padded frames never reach valid outputs or gradients", "[conv][padding]") {
  Dim b(3, "b"), c(2, "c"), k(300, "k");
  Dim t = dynamic_dim(b, {200, 57, 0}, "t");
  Tensor kern = rnd({k, c}, 7, DType::f64, -0.05, 0.05);
  Tensor valid = sequence_mask({t});
  for (ConvMethod m : {ConvMethod::direct, ConvMethod::fft}) {
    auto run = [&](double pad) {
      Tensor x = where(valid, rnd({b, t, c}, 8, DType::f64), pad, true).detach().with_requires_grad();
      Tensor kg = kern.with_requires_grad();
      Tensor y = copy_masked(causal_conv(x, kg, t, k, m), {t});
      auto g = grad(reduce_sum(y * y, {b, t, c}), {x, kg});
      return std::vector<std::vector<double>>{y.to_vector<double>({b, t, c}), copy_masked(g[0], {t}).to_vector<double>({b, t, c}),
                                              g[1].to_vector<double>({k, c})};
    };
    auto want = run(0);
    auto got = run(std::numeric_limits<double>::quiet_NaN());
    for (size_t i = 0; i < want.size(); ++i) CHECK_VEC_APPROX(got[i], want[i], 1e-9, 1e-11);
  }
}

TEST_CASE("causal_conv errors name the op and the Dims", "[conv][errors]") {
  Dim b(2, "b"), c(3, "c"), t(5, "t"), k(2, "k"), other(3, "other");
  Tensor x = random_tensor({b, t, c}, 1);
  CHECK_THROWS_WITH(causal_conv(x, random_tensor({k, other}, 2), t, k), Contains("causal_conv") && Contains("other"));
  CHECK_THROWS_WITH(causal_conv(x, random_tensor({k, c}, 2), k, k), Contains("causal_conv") && Contains("k:2"));
  CHECK_THROWS_WITH(causal_conv(x, random_tensor({k, c}, 2).astype(DType::f64), t, k), Contains("dtype"));
  CHECK_THROWS_WITH(causal_conv(x.astype(DType::i32), random_tensor({k, c}, 2).astype(DType::i32), t, k),
                    Contains("needs f32, f64, bf16 or f16") && Contains("i32"));
  CHECK_THROWS_WITH(causal_conv(x, random_tensor({t, c}, 2), t, t), Contains("also in x"));
}

#pragma once
// Robustness checks that run on any device: test_robustness runs them on the CPU and test_gpu
// on cuda:0. Each is one class of hostile input from docs/reliability.md.
#include <dimx/autograd.h>
#include <dimx/nn.h>

#include <limits>

#include "test_util.h"

namespace dimx_test {

using Catch::Contains;

// Integer floordiv and mod of the minimum by -1 wrap (the minimum, 0) instead of trapping;
// add, sub, mul and neg wrap around in two's complement.
template <class T>
inline void check_integer_edges(dimx::Device dev) {
  using namespace dimx;
  constexpr T lo = std::numeric_limits<T>::min(), hi = std::numeric_limits<T>::max();
  Dim n(4, "n");
  Tensor a = Tensor::from_vector<T>({n}, std::vector<T>{lo, lo, hi, T(-7)}).to(dev);
  Tensor b = Tensor::from_vector<T>({n}, std::vector<T>{T(-1), T(-1), T(-1), T(-1)}).to(dev);
  CHECK(floordiv(a, b).template to_vector<T>() == std::vector<T>{lo, lo, T(-hi), T(7)});
  CHECK(mod(a, b).template to_vector<T>() == std::vector<T>{0, 0, 0, 0});
  Tensor one = Tensor::from_vector<T>({n}, std::vector<T>{1, 1, 1, 1}).to(dev);
  CHECK(add(a, one).template to_vector<T>() == std::vector<T>{T(lo + 1), T(lo + 1), lo, T(-6)});
  CHECK(sub(a, one).template to_vector<T>()[0] == hi);
  CHECK(neg(a).template to_vector<T>()[0] == lo);
  CHECK(mul(a, b).template to_vector<T>()[0] == lo);
  CHECK(reduce_sum(Tensor::from_vector<T>({n}, std::vector<T>{hi, 1, 0, 0}).to(dev), {n}).template item<T>() == lo);
}

// NaN in max/min/argmax/argmin and inf in logsumexp follow PyTorch: NaN wins and its first
// index is the arg; logsumexp of +inf is +inf; of NaN, NaN; of nothing but -inf, -inf.
inline void check_nan_reductions(dimx::Device dev) {
  using namespace dimx;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  Dim r(3, "row");
  for (int64_t n : {int64_t(5), int64_t(37)}) {  // short rows, and rows longer than a SIMD vector
    INFO("row length " << n);
    Dim c(n, "col");
    std::vector<float> v(size_t(3 * n));
    for (int64_t i = 0; i < 3 * n; ++i) v[size_t(i)] = float(i % 7) - 3.0f;
    v[size_t(0 * n + n - 2)] = nan;  // row 0: one NaN near the end
    v[size_t(1 * n + 1)] = nan;      // row 1: two NaNs, the first at 1
    v[size_t(1 * n + n - 1)] = nan;
    Tensor x = Tensor::from_vector<float>({r, c}, v).to(dev);
    for (const Tensor& t : {x, x.transpose_to({c, r})}) {  // rows (B == 1) and columns
      std::vector<float> mx = reduce_max(t, {c}).to_vector<float>({r}), mn = reduce_min(t, {c}).to_vector<float>({r});
      CHECK(std::isnan(mx[0]));
      CHECK(std::isnan(mx[1]));
      CHECK(mx[2] == 3.0f);
      CHECK(std::isnan(mn[0]));
      CHECK(mn[2] == -3.0f);
      int64_t row2_max = 0;
      while ((2 * n + row2_max) % 7 != 6) ++row2_max;
      CHECK(reduce_argmax(t, c).to_vector<int64_t>({r}) == std::vector<int64_t>{n - 2, 1, row2_max});
      CHECK(reduce_argmin(t, c).to_vector<int64_t>({r})[0] == n - 2);
      CHECK(reduce_argmin(t, c).to_vector<int64_t>({r})[1] == 1);
      std::vector<float> lse = reduce_logsumexp(t, {c}).to_vector<float>({r});
      CHECK(std::isnan(lse[0]));
      CHECK(std::isfinite(lse[2]));
    }
  }
  Dim k(3, "k");
  auto lse = [&](std::vector<float> v) {
    return reduce_logsumexp(Tensor::from_vector<float>({k}, v).to(dev), {k}).item<float>();
  };
  CHECK(lse({inf, 1.0f, -2.0f}) == inf);
  CHECK(lse({-inf, -inf, -inf}) == -inf);
  CHECK(std::isnan(lse({1.0f, nan, inf})));
  CHECK(lse({0.0f, 0.0f, 0.0f}) == Approx(std::log(3.0f)));
}

// A matmul that contracts a padded Dim selects the padding out of both operands: NaN, inf and
// 1e30 in padded frames change neither the result nor any gradient of the valid frames.
inline void check_padded_contraction(dimx::Device dev) {
  using namespace dimx;
  Dim batch(3, "batch"), feat(4, "feat"), out(2, "out");
  Dim time = dynamic_dim(batch, {5, 2, 0});
  Tensor valid = sequence_mask({time}).to(dev);
  auto fill = [&](const Tensor& x, double v) { return where(valid, x, v, true).detach().with_requires_grad(); };
  Tensor a0 = random_tensor({batch, time, feat}, 1).to(dev), b0 = random_tensor({time, batch, out}, 2).to(dev);
  Tensor w0 = random_tensor({feat, out}, 3).to(dev);
  auto run = [&](double pad) {
    Tensor a = fill(a0, pad), b = fill(b0, pad), w = w0.detach().with_requires_grad();
    // The padded Dim contracted directly, and a parameter broadcast over it (its gradient sums
    // over time), and a softmax over time.
    Tensor y = matmul(a, b, {time});
    Tensor z = reduce_sum(matmul(a, w, {feat}) * b, {time, batch});
    Tensor s = matmul(softmax(reduce_sum(a, {feat}), time), b, {time});
    // Sequences summed over while time stays: the padded frames of shorter sequences are left
    // out (a mean over batch divides by the sequences that have the frame).
    Tensor u = matmul(a, b, {batch});
    Tensor mean = reduce_mean(a, {batch});
    // (Summing u over time gains batch: time's lengths live there.)
    Tensor us = reduce_sum(u, u.dims()), ms = reduce_sum(mean * mean, mean.dims());
    Tensor loss = reduce_sum(y * y, y.dims()) + reduce_sum(z, z.dims()) + reduce_sum(s, s.dims()) +
                  reduce_sum(us, us.dims()) + reduce_sum(ms, ms.dims());
    auto g = grad(loss, {a, b, w});
    return std::vector<std::vector<double>>{y.to_vector<double>({batch, feat, out}), loss.to_vector<double>(),
                                            u.to_vector<double>({time, feat, out}), mean.to_vector<double>({time, feat}),
                                            copy_masked(g[0], {time}).to_vector<double>({batch, time, feat}),
                                            copy_masked(g[1], {time}).to_vector<double>({batch, time, out}),
                                            g[2].to_vector<double>({feat, out})};
  };
  auto want = run(0);
  for (double pad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(), 1e30}) {
    INFO("padding " << pad);
    auto got = run(pad);
    for (size_t i = 0; i < want.size(); ++i) {
      INFO("output " << i);
      CHECK_VEC_APPROX(got[i], want[i], 1e-5, 1e-5);
    }
  }
  // The mean over batch at frame t divides by the sequences that have it: t = 3 exists only
  // in sequence 0 (lengths 5, 2, 0).
  Tensor ones = where(valid, Tensor::ones({batch, time}).to(dev), 7.0, true);
  CHECK(reduce_mean(ones, {batch}).to_vector<float>() == std::vector<float>{1, 1, 1, 1, 1});
  CHECK(reduce_sum(ones, {batch}).to_vector<float>() == std::vector<float>{2, 2, 1, 1, 1});
  CHECK(reduce_max(where(valid, Tensor::zeros({batch, time}).to(dev), 9.0, true), {batch}).to_vector<float>() ==
        std::vector<float>(5, 0.0f));
}

// Attention through both paths (fused and unfused) with garbage in padded keys and queries.
inline void check_padded_attention(dimx::Device dev) {
  using namespace dimx;
  Dim batch(3, "batch"), heads(2, "heads"), dk(4, "dk"), dv(3, "dv");
  Dim time = dynamic_dim(batch, {5, 2, 4});
  Tensor valid = sequence_mask({time}).to(dev);
  Tensor q0 = random_tensor({batch, time, heads, dk}, 4).to(dev), k0 = random_tensor({batch, time, heads, dk}, 5).to(dev);
  Tensor v0 = random_tensor({batch, time, heads, dv}, 6).to(dev);
  for (bool fused : {true, false})
    for (bool causal : {false, true}) {
      INFO("fused " << fused << " causal " << causal);
      auto run = [&](double pad) {
        auto fill = [&](const Tensor& x) { return where(valid, x, pad, true).detach().with_requires_grad(); };
        Tensor q = fill(q0), k = fill(k0), v = fill(v0);
        nn::DotAttentionOptions o;
        o.fused = fused;
        if (causal) o.causal_query_dim = time;
        Tensor y = nn::dot_attention(q, k, v, dk, time, o);
        Tensor ym = copy_masked(y, {time});
        auto g = grad(reduce_sum(ym * ym, ym.dims()), {q, k, v});
        return std::vector<std::vector<double>>{ym.to_vector<double>({batch, time, heads, dv}),
                                                copy_masked(g[0], {time}).to_vector<double>({batch, time, heads, dk}),
                                                copy_masked(g[1], {time}).to_vector<double>({batch, time, heads, dk}),
                                                copy_masked(g[2], {time}).to_vector<double>({batch, time, heads, dv})};
      };
      auto want = run(0);
      for (double pad : {std::numeric_limits<double>::quiet_NaN(), -std::numeric_limits<double>::infinity(), 1e30}) {
        INFO("padding " << pad);
        auto got = run(pad);
        for (size_t i = 0; i < want.size(); ++i) {
          INFO("output " << i);
          CHECK_VEC_APPROX(got[i], want[i], 1e-5, 1e-5);
        }
      }
    }
}

// A Dim's lengths are its own: neither the tensor it was made from nor the one lengths()
// returns can change them.
inline void check_immutable_lengths(dimx::Device dev) {
  using namespace dimx;
  Dim batch(2, "batch");
  Tensor src = Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{3, 1}).to(dev);
  Dim time(src, "time");
  src.copy_from(Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{9, -4}));
  CHECK(time.lengths().to_vector<int32_t>() == std::vector<int32_t>{3, 1});
  CHECK(time.extent() == 3);
  auto set = Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{7, 7});
  CHECK_THROWS_WITH(time.lengths().copy_from(set), Contains("read-only"));
  CHECK_THROWS_WITH(time.lengths(dev).copy_from(set.to(dev)), Contains("read-only"));
  CHECK(time.lengths(dev).to_vector<int32_t>() == std::vector<int32_t>{3, 1});
}

// A causal attention state must be this module's and over the input's batch Dims.
inline void check_state_mismatch(dimx::Device dev) {
  using namespace dimx;
  Generator gen(3);
  Dim in(8, "in"), kt(8, "kt"), vt(8, "vt"), batch(2, "batch"), other(2, "other_batch");
  nn::CausalSelfAttention att(in, std::nullopt, kt, vt, 2, gen);
  nn::CausalSelfAttention another(in, std::nullopt, kt, vt, 2, gen);
  nn::to(att, dev);
  nn::to(another, dev);
  nn::eval(att);
  Tensor x = random_tensor({batch, in}, 1).to(dev);
  CHECK_NOTHROW(att(x, nn::single_step_dim(), att.default_initial_state({batch})));
  CHECK_THROWS_WITH(att(x, nn::single_step_dim(), att.default_initial_state({other})),
                    Contains("CausalSelfAttention") && Contains("other_batch") && Contains("does not fit"));
  CHECK_THROWS_WITH(att(x, nn::single_step_dim(), another.default_initial_state({batch})), Contains("does not fit"));
  Dim both(2, "b2");
  CHECK_THROWS_WITH(att(random_tensor({batch, both, in}, 2).to(dev), nn::single_step_dim(),
                        att.default_initial_state({batch})),
                    Contains("does not fit"));
}

}  // namespace dimx_test

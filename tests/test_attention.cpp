// dot_attention against a naive loop: padded keys, causal masking through a key Dim indexed by
// the query, padding invariance, float64 gradients, dropout and errors.
#include <dimx/nn.h>

#include <cstdlib>
#include <filesystem>

#include "module_check.h"

using namespace dimx;
using namespace dimx_test;

namespace {

struct Setup {
  Dim batch{3, "batch"};
  Dim time = dynamic_dim(batch, {5, 2, 4}, "time");
  Dim heads{2, "heads"};
  Dim key{4, "key"};
  Dim value{3, "value"};
};

// out[b, h, i, :] = sum_j softmax_j(q[b,h,i] . k[b,h,j] / sqrt(K)) v[b,h,j], j < len (and j <= i if causal).
std::vector<double> naive(const Setup& s, const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  const Dims qd{s.batch, s.heads, s.time, s.key}, vd{s.batch, s.heads, s.time, s.value};
  auto Q = q.to_vector<double>(qd), K = k.to_vector<double>(qd), V = v.to_vector<double>(vd);
  const int64_t B = 3, H = 2, T = s.time.extent(), D = 4, E = 3;
  std::vector<int32_t> lens = s.time.lengths().to_vector<int32_t>();
  std::vector<double> out(size_t(B * H * T * E), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        int64_t n = causal ? std::min<int64_t>(i + 1, lens[size_t(b)]) : lens[size_t(b)];
        std::vector<double> e(static_cast<size_t>(n));
        double m = -1e300, z = 0;
        for (int64_t j = 0; j < n; ++j) {
          double acc = 0;
          for (int64_t d = 0; d < D; ++d) acc += Q[size_t(((b * H + h) * T + i) * D + d)] * K[size_t(((b * H + h) * T + j) * D + d)];
          e[size_t(j)] = acc / 2.0;  // sqrt(4)
          m = std::max(m, e[size_t(j)]);
        }
        for (int64_t j = 0; j < n; ++j) z += std::exp(e[size_t(j)] - m);
        for (int64_t j = 0; j < n; ++j)
          for (int64_t c = 0; c < E; ++c)
            out[size_t(((b * H + h) * T + i) * E + c)] +=
                std::exp(e[size_t(j)] - m) / z * V[size_t(((b * H + h) * T + j) * E + c)];
      }
  return out;
}

// Only valid query frames are compared (padded queries are unspecified).
void check_valid(const Setup& s, const Tensor& out, const std::vector<double>& want) {
  const Dims od{s.batch, s.heads, s.time, s.value};
  auto got = out.to_vector<double>(od);
  std::vector<int32_t> lens = s.time.lengths().to_vector<int32_t>();
  const int64_t T = s.time.extent();
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i = 0; i < lens[size_t(b)]; ++i)
        for (int64_t c = 0; c < 3; ++c) {
          size_t at = size_t(((b * 2 + h) * T + i) * 3 + c);
          INFO("b " << b << " h " << h << " i " << i << " c " << c);
          CHECK(got[at] == Approx(want[at]).epsilon(1e-5).margin(1e-6));
          CHECK(std::isfinite(got[at]));
        }
}

}  // namespace

TEST_CASE("dot_attention: self-attention over padded sequences matches a naive loop", "[attention]") {
  Setup s;
  Tensor q = rnd({s.batch, s.time, s.heads, s.key}, 1), k = rnd({s.heads, s.batch, s.time, s.key}, 2);
  Tensor v = rnd({s.time, s.batch, s.heads, s.value}, 3);
  nn::DotAttentionOptions o;
  o.fused = GENERATE(false, true);
  Tensor out = nn::dot_attention(q, k, v, s.key, s.time, o);
  CHECK(out.ndim() == 4);
  CHECK(out.has_dim(s.time));
  CHECK(out.has_dim(s.value));
  check_valid(s, out, naive(s, q, k, v, false));
}

TEST_CASE("dimx::dot_attention: the op over a key Dim of k and v's own, and its errors", "[attention]") {
  // The op itself: k and v carry the keys' Dim (here causal), the scale is explicit.
  Setup s;
  Tensor q = rnd({s.batch, s.time, s.heads, s.key}, 4), k = rnd({s.batch, s.time, s.heads, s.key}, 5);
  Tensor v = rnd({s.batch, s.time, s.heads, s.value}, 6);
  const Dim keys = nn::causal_key_dim(s.time, s.time);
  const Tensor kc = replace_dim(k, s.time, keys).first, vc = replace_dim(v, s.time, keys).first;
  AttentionOptions o;
  o.scale = 0.5;  // 1 / sqrt(4)
  o.fused = GENERATE(false, true);
  check_valid(s, dot_attention(q, kc, vc, s.key, keys, o), naive(s, q, k, v, true));
  // q with the keys' Dim, dropout without a Generator or out of range, a bias over a Dim q lacks.
  CHECK_THROWS_WITH(dot_attention(kc, kc, vc, s.key, keys, o),
                    Catch::Contains("dot_attention") && Catch::Contains("must not have the keys' Dim"));
  AttentionOptions d = o;
  d.dropout = 0.2;
  CHECK_THROWS_WITH(dot_attention(q, kc, vc, s.key, keys, d), Catch::Contains("Generator"));
  d.dropout = 1.0;
  CHECK_THROWS_WITH(dot_attention(q, kc, vc, s.key, keys, d), Catch::Contains("[0, 1)"));
  AttentionOptions b = o;
  Dim other(3, "other");
  b.bias = rnd({other, keys}, 7);
  CHECK_THROWS_WITH(dot_attention(q, kc, vc, s.key, keys, b),
                    Catch::Contains("bias") && Catch::Contains("other") && Catch::Contains(keys.str()));
}

TEST_CASE("dot_attention: causal masking is a key Dim indexed by the query", "[attention]") {
  Setup s;
  Tensor q = rnd({s.batch, s.time, s.heads, s.key}, 4), k = rnd({s.batch, s.time, s.heads, s.key}, 5);
  Tensor v = rnd({s.batch, s.time, s.heads, s.value}, 6);
  nn::DotAttentionOptions o;
  o.causal_query_dim = s.time;
  o.fused = GENERATE(false, true);
  check_valid(s, nn::dot_attention(q, k, v, s.key, s.time, o), naive(s, q, k, v, true));
  Dim ck = nn::causal_key_dim(s.time, s.time);
  // lengths min(i + 1, len_b) over {query, batch}
  CHECK(ck.lengths().to_vector<int32_t>({s.time, s.batch}) ==
        std::vector<int32_t>{1, 1, 1, 2, 2, 2, 3, 2, 3, 4, 2, 4, 5, 2, 4});
}

TEST_CASE("dot_attention: each sequence of a padded batch equals that sequence alone", "[attention]") {
  Setup s;
  Tensor q = rnd({s.batch, s.time, s.heads, s.key}, 7), k = rnd({s.batch, s.time, s.heads, s.key}, 8);
  Tensor v = rnd({s.batch, s.time, s.heads, s.value}, 9);
  nn::DotAttentionOptions o;
  o.causal_query_dim = s.time;
  for (bool causal : {false, true}) {
    Tensor out = nn::dot_attention(q, k, v, s.key, s.time, causal ? o : nn::DotAttentionOptions{});
    auto full = out.to_vector<double>({s.batch, s.time, s.heads, s.value});
    std::vector<int32_t> lens = s.time.lengths().to_vector<int32_t>();
    for (int64_t b = 0; b < 3; ++b) {
      INFO("sequence " << b << (causal ? " causal" : ""));
      Dim t(lens[size_t(b)], "t");
      auto take = [&](const Tensor& x, const Dim& last) {
        Tensor xb = gather(x, Tensor::scalar(double(b), DType::i32), s.batch);
        return slice(xb, s.time, 0, lens[size_t(b)], 1, t).first.transpose_to({t, s.heads, last});
      };
      nn::DotAttentionOptions ob;
      if (causal) ob.causal_query_dim = t;
      Tensor alone = nn::dot_attention(take(q, s.key), take(k, s.key), take(v, s.value), s.key, t, ob);
      auto a = alone.to_vector<double>({t, s.heads, s.value});
      for (int64_t i = 0; i < lens[size_t(b)]; ++i)
        for (int64_t h = 0; h < 2; ++h)
          for (int64_t c = 0; c < 3; ++c)
            CHECK(full[size_t(((b * s.time.extent() + i) * 2 + h) * 3 + c)] ==
                  Approx(a[size_t((i * 2 + h) * 3 + c)]).epsilon(1e-5).margin(1e-6));
    }
  }
}

TEST_CASE("dot_attention: gradients of q, k and v match float64 finite differences", "[attention]") {
  Setup s;
  Tensor q = rnd({s.batch, s.time, s.heads, s.key}, 10, DType::f64), k = rnd({s.batch, s.time, s.heads, s.key}, 11, DType::f64);
  Tensor v = rnd({s.batch, s.time, s.heads, s.value}, 12, DType::f64), w = rnd({s.batch, s.time, s.heads, s.value}, 13, DType::f64);
  nn::DotAttentionOptions o;
  o.causal_query_dim = s.time;
  o.fused = GENERATE(false, true);
  INFO("fused " << *o.fused);
  auto loss = [&](const Tensor& a, const Tensor& b, const Tensor& c) {
    return reduce_sum(nn::dot_attention(a, b, c, s.key, s.time, o) * w, {s.batch, s.time, s.heads, s.value});
  };
  Tensor ql = q.with_requires_grad(), kl = k.with_requires_grad(), vl = v.with_requires_grad();
  std::vector<Tensor> g = grad(loss(ql, kl, vl), {ql, kl, vl});
  std::vector<Tensor> in{q, k, v};
  for (size_t i = 0; i < 3; ++i) {
    INFO("input " << i);
    const Dims& d = in[i].dims();
    auto base = in[i].to_vector<double>(d);
    auto an = g[i].to_vector<double>(d);
    for (size_t j = 0; j < base.size(); j += 3) {
      auto at = [&](double delta) {
        std::vector<double> p = base;
        p[j] += delta;
        std::vector<Tensor> x = in;
        x[i] = Tensor::from_vector<double>(d, p);
        NoGradGuard ng;
        return loss(x[0], x[1], x[2]).item<double>();
      };
      double num = (at(1e-6) - at(-1e-6)) / 2e-6;
      CHECK(an[j] == Approx(num).epsilon(1e-6).margin(1e-7));
    }
  }
}

// The fused primitive against the unfused path (checked against the naive loop above) on
// random layouts: self, padded, causal, cross-attention, broadcast k/v, odd sizes, f32 and f64.
TEST_CASE("dot_attention: the fused primitive matches the unfused path on random Dims and layouts", "[attention]") {
  Dim batch(3, "batch"), heads(2, "heads"), dec(1, "dec");
  for (DType dt : {DType::f32, DType::f64}) {
    const double tol = dt == DType::f32 ? 1e-5 : 1e-12;
    for (int64_t dk : {1, 4, 17, 64, 80}) {
      Dim key(dk, "key"), value(dk == 17 ? 3 : dk, "value");
      Dim time = dynamic_dim(batch, {7, 0, 3});  // a sequence without frames: rows with no key
      Dim stat(6, "stat"), enc = dynamic_dim(batch, {1, 4, 2}, "enc"), one(1, "one");
      struct Case {
        std::string name;
        Dim qt, kt;
        bool causal;
      };
      for (const Case& c : {Case{"static", stat, stat, false}, Case{"padded", time, time, false},
                            Case{"causal", time, time, true}, Case{"causal static", stat, stat, true},
                            Case{"cross", dec, enc, false}, Case{"cross static", stat, one, false}}) {
        INFO(c.name << " d=" << dk << " " << dtype_name(dt));
        uint32_t seed = uint32_t(dk * 31 + c.name.size());
        Tensor q = rnd({batch, c.qt, heads, key}, seed, dt);
        Tensor k = rnd({c.kt, batch, heads, key}, seed + 1, dt), v = rnd({batch, c.kt, heads, value}, seed + 2, dt);
        nn::DotAttentionOptions o;
        if (c.causal) o.causal_query_dim = c.qt;
        o.fused = false;
        Tensor want = nn::dot_attention(q, k, v, key, c.kt, o);
        o.fused = true;
        Tensor got = nn::dot_attention(q, k, v, key, c.kt, o);
        REQUIRE(got.dims().size() == want.dims().size());
        for (const Dim& dim : want.dims()) CHECK(got.has_dim(dim));
        // Valid query frames agree; a query that sees no key gets exactly 0.
        Tensor m = copy_masked(got, {c.qt}), mw = copy_masked(want, {c.qt});
        auto g = m.to_vector<double>(want.dims()), w = mw.to_vector<double>(want.dims());
        CHECK_VEC_APPROX(g, w, tol, tol);
        for (double x : got.to_vector<double>()) CHECK(std::isfinite(x));
      }
    }
  }
  // k and v shared over heads (broadcast), and q with an extra query Dim.
  Dim key(8, "key"), value(5, "value"), t(9, "t"), beam(2, "beam");
  Tensor q = rnd({beam, batch, heads, t, key}, 40), k = rnd({batch, t, key}, 41), v = rnd({t, value, batch}, 42);
  nn::DotAttentionOptions o;
  o.fused = false;
  Tensor want = nn::dot_attention(q, k, v, key, t, o);
  o.fused = true;
  Tensor got = nn::dot_attention(q, k, v, key, t, o);
  CHECK_VEC_APPROX(got.to_vector<double>(want.dims()), want.to_vector<double>(want.dims()), 1e-5, 1e-6);
}

// The fused backward (the device's, where it has one) against the unfused path's gradients on
// the same cases, with every operand's gradient; padded frames of k and v hold NaN, which must
// stay out of every gradient.
TEST_CASE("dot_attention: fused gradients match the unfused path on random Dims and layouts", "[attention]") {
  Dim batch(3, "batch"), heads(2, "heads"), dec(1, "dec");
  for (DType dt : {DType::f32, DType::f64}) {
    const double tol = dt == DType::f32 ? 2e-5 : 1e-11;
    for (int64_t dk : {1, 17, 64}) {
      Dim key(dk, "key"), value(dk == 17 ? 3 : dk, "value");
      Dim time = dynamic_dim(batch, {7, 0, 3});
      Dim stat(6, "stat"), enc = dynamic_dim(batch, {1, 4, 2}, "enc");
      struct Case {
        std::string name;
        Dim qt, kt;
        bool causal;
      };
      for (const Case& c : {Case{"static", stat, stat, false}, Case{"padded", time, time, false},
                            Case{"causal", time, time, true}, Case{"cross", dec, enc, false}}) {
        INFO(c.name << " d=" << dk << " " << dtype_name(dt));
        const uint32_t seed = uint32_t(dk * 37 + c.name.size());
        std::vector<std::vector<double>> results;
        for (bool fused : {false, true}) {
          nn::DotAttentionOptions o;
          if (c.causal) o.causal_query_dim = c.qt;
          o.fused = fused;
          const Tensor mask = c.kt.is_dynamic() ? sequence_mask({c.kt}) : Tensor::scalar(1, DType::boolean);
          Tensor q = rnd({batch, c.qt, heads, key}, seed, dt).with_requires_grad();
          Tensor k = where(mask, rnd({c.kt, batch, heads, key}, seed + 1, dt), std::nan("")).with_requires_grad();
          Tensor v = where(mask, rnd({batch, c.kt, heads, value}, seed + 2, dt), std::nan("")).with_requires_grad();
          Tensor out = copy_masked(nn::dot_attention(q, k, v, key, c.kt, o), {c.qt});
          // The weights over a fixed order (the two paths order the output's Dims differently).
          const Tensor w = rnd({batch, c.qt, heads, value}, seed + 3, dt);
          std::vector<Tensor> g = grad(reduce_sum(out * w, out.dims()), {q, k, v});
          std::vector<double> all;
          for (size_t i = 0; i < 3; ++i) {
            const Tensor x = std::vector<Tensor>{q, k, v}[i];
            auto e = copy_masked(g[i], {i == 0 ? c.qt : c.kt}).to_vector<double>(x.dims());
            all.insert(all.end(), e.begin(), e.end());
          }
          for (double e : all) REQUIRE(std::isfinite(e));
          results.push_back(all);
        }
        CHECK_VEC_APPROX(results[1], results[0], tol, tol);
      }
    }
  }
}

// The path counters, and DIMX_STRICT_FUSED=1 (ctest runs this case once more with it set):
// a fallback from the fused path is then an error that says why.
TEST_CASE("dot_attention: path counters and strict fused mode", "[attention][strict]") {
  const char* e = std::getenv("DIMX_STRICT_FUSED");
  const bool strict = e && std::string(e) == "1";
  Setup s;
  Generator gen(3);
  Tensor q = rnd({s.batch, s.time, s.heads, s.key}, 70).with_requires_grad();
  Tensor k = rnd({s.batch, s.time, s.heads, s.key}, 71).with_requires_grad();
  Tensor v = rnd({s.batch, s.time, s.heads, s.value}, 72).with_requires_grad();
  nn::reset_attention_path_counts();
  nn::DotAttentionOptions o;
  o.fused = true;
  Tensor out = nn::dot_attention(q, k, v, s.key, s.time, o);
  grad(reduce_sum(out, out.dims()), {q, k, v});
  nn::AttentionPathCounts c = nn::attention_path_counts();
  CHECK(c.fused_forward == 1);
  CHECK(c.fused_backward == 1);  // the CPU's fused backward
  CHECK(c.unfused_forward == 0);
  CHECK(c.unfused_backward == 0);
  CHECK(c.tf32_forward + c.tf32_backward == 0);
  // The CPU has no TF32: allowing it changes neither the path nor a bit of the result.
  set_allow_tf32(true);
  nn::reset_attention_path_counts();
  Tensor out_tf32 = nn::dot_attention(q, k, v, s.key, s.time, o);
  grad(reduce_sum(out_tf32, out_tf32.dims()), {q, k, v});
  set_allow_tf32(false);
  c = nn::attention_path_counts();
  CHECK(c.fused_forward == 1);
  CHECK(c.fused_backward == 1);
  CHECK(c.tf32_forward + c.tf32_backward == 0);
  CHECK(out_tf32.to_vector<double>(out.dims()) == out.to_vector<double>(out.dims()));
  nn::reset_attention_path_counts();
  nn::dot_attention(q, k, v, s.key, s.time, o);  // (the count below starts here)
  // Asked for unfused: counted, never an error.
  o.fused = false;
  nn::dot_attention(q, k, v, s.key, s.time, o);
  CHECK(nn::attention_path_counts().unfused_forward == 1);
  // Dropout in training runs fused too.
  o.fused = true;
  o.att_dropout = 0.1;
  o.training = true;
  o.gen = &gen;
  nn::dot_attention(q, k, v, s.key, s.time, o);
  CHECK(nn::attention_path_counts().fused_forward == 2);
  // Asked for fused, but k has a Dim q lacks (the energies would broadcast over it): a fallback.
  Dim extra(2, "extra");
  Tensor kx = rnd({s.batch, s.time, s.heads, s.key, extra}, 74);
  if (strict) {
    CHECK_THROWS_WITH(nn::dot_attention(q, kx, v, s.key, s.time, o),
                      Catch::Contains("dot_attention") && Catch::Contains("DIMX_STRICT_FUSED") &&
                          Catch::Contains("and dropout"));
  } else {
    nn::dot_attention(q, kx, v, s.key, s.time, o);
    CHECK(nn::attention_path_counts().unfused_forward == 2);
  }
  // k broadcast over heads: the fused backward cannot form its gradient (a sum over heads).
  o = {};
  o.fused = true;
  Tensor kb = rnd({s.batch, s.time, s.key}, 73).with_requires_grad();
  Tensor out2 = nn::dot_attention(q, kb, v, s.key, s.time, o);
  if (strict) {
    CHECK_THROWS_WITH(grad(reduce_sum(out2, out2.dims()), {q, kb, v}),
                      Catch::Contains("backward") && Catch::Contains("broadcasts"));
  } else {
    grad(reduce_sum(out2, out2.dims()), {q, kb, v});
    CHECK(nn::attention_path_counts().unfused_backward == 1);
  }
}

TEST_CASE("dot_attention: a query that sees no key gets 0 from the fused path", "[attention]") {
  Dim batch(2, "batch"), q(3, "q"), key(4, "key"), value(2, "value"), axis(5, "axis");
  // Key lengths over {batch, q}: row (1, 0) sees nothing, others see some.
  Dim keys(Tensor::from_vector<int32_t>({batch, q}, {5, 1, 3, 0, 2, 5}), "keys");
  Tensor qt = rnd({batch, q, key}, 50), k = rnd({batch, keys, key}, 51), v = rnd({batch, keys, value}, 52);
  nn::DotAttentionOptions o;
  o.fused = true;
  Tensor got = nn::dot_attention(qt, k, v, key, keys, o);
  o.fused = false;
  Tensor want = nn::dot_attention(qt, k, v, key, keys, o);
  auto g = got.to_vector<double>({batch, q, value});
  CHECK_VEC_APPROX(g, want.to_vector<double>({batch, q, value}), 1e-5, 1e-6);
  CHECK(g[6] == 0.0);
  CHECK(g[7] == 0.0);
  (void)axis;
}

TEST_CASE("dot_attention: padded query frames see no key on the fused path", "[attention]") {
  // Self-attention over a padded batch: the fused path skips the padded query rows (their
  // output is 0 and no gradient comes back through them, whatever their output gradient);
  // the valid rows and every gradient of a loss over the valid frames equal the unfused path's.
  Dim batch(3, "batch"), heads(2, "heads"), key(4, "key");
  Dim time = dynamic_dim(batch, {6, 2, 4}, "time");
  const Dim keys = time.copy("keys");
  const Tensor q = rnd({batch, time, heads, key}, 53).with_requires_grad();
  // Padded keys and values NaN: they must never reach a valid output or gradient.
  auto nan_keys = [&](uint32_t seed) {
    const Tensor x = copy_masked(rnd({batch, time, heads, key}, seed), {time}, std::numeric_limits<double>::quiet_NaN());
    return replace_dim(x, time, keys).first.contiguous().with_requires_grad();
  };
  const Tensor k = nan_keys(54), v = nan_keys(55);
  const Tensor w = rnd({batch, time, heads, key}, 56);  // nonzero on padded frames too
  std::vector<std::vector<double>> runs;
  for (bool fused : {true, false}) {
    AttentionOptions o;
    o.fused = fused;
    const Tensor out = dot_attention(q, k, v, key, keys, o);
    const std::vector<Tensor> g = grad(reduce_sum(copy_masked(out, {time}) * w, w.dims()), {q, k, v});
    if (fused) {
      const std::vector<double> all = out.to_vector<double>({batch, time, heads, key});
      const std::vector<double> gq = g[0].to_vector<double>({batch, time, heads, key});
      const std::vector<int32_t> lens{6, 2, 4};
      for (int64_t b = 0; b < 3; ++b)
        for (int64_t t = lens[size_t(b)]; t < 6; ++t)
          for (int64_t i = 0; i < 8; ++i) {
            CHECK(all[size_t((b * 6 + t) * 8 + i)] == 0.0);
            CHECK(gq[size_t((b * 6 + t) * 8 + i)] == 0.0);
          }
      // Even an output gradient on the padded rows sends nothing back through them.
      const Tensor gp = grad(out, {q}, w.transpose_to(out.dims()))[0];
      const std::vector<double> gpv = gp.to_vector<double>({batch, time, heads, key});
      for (int64_t t = 2; t < 6; ++t) CHECK(gpv[size_t((1 * 6 + t) * 8)] == 0.0);
    }
    std::vector<double> r = copy_masked(out, {time}).to_vector<double>({batch, time, heads, key});
    for (size_t i = 0; i < 3; ++i) {
      const Dim& rows = i == 0 ? time : keys;
      const std::vector<double> x = copy_masked(g[i], {rows}).to_vector<double>({batch, rows, heads, key});
      r.insert(r.end(), x.begin(), x.end());
    }
    runs.push_back(r);
  }
  CHECK_VEC_APPROX(runs[0], runs[1], 1e-5, 1e-6);
}

// The fused path lays out each row's key lengths once per Dims and device and keeps them with
// the Dim that has the lengths; a call with other query Dims or another layout over the same
// key Dim must get its own (a query Dim without lengths sees every key; one with lengths
// sees none past its end), and a repeated call the same result.
TEST_CASE("dot_attention: the fused path's row lengths follow each call's Dims", "[attention]") {
  Dim batch(3, "batch"), heads(2, "heads"), key(4, "key");
  const Dim keys = dynamic_dim(batch, {5, 2, 4}, "keys");
  const Dim time = dynamic_dim(batch, {3, 5, 1}, "time"), stat(5, "stat");
  const Tensor k = rnd({batch, keys, heads, key}, 60), v = rnd({batch, keys, heads, key}, 61);
  struct Case {
    const char* name;
    Tensor q;
    Dim rows;
  };
  const std::vector<Case> cases{{"padded queries", rnd({batch, time, heads, key}, 62), time},
                                {"static queries", rnd({batch, stat, heads, key}, 63), stat},
                                {"heads first", rnd({heads, batch, time, key}, 64), time},
                                {"padded queries again", rnd({batch, time, heads, key}, 62), time}};
  std::vector<double> first;
  for (const Case& c : cases) {
    INFO(c.name);
    AttentionOptions o;
    o.fused = false;
    const Tensor want = copy_masked(dot_attention(c.q, k, v, key, keys, o), {c.rows});
    o.fused = true;
    const Tensor got = copy_masked(dot_attention(c.q, k, v, key, keys, o), {c.rows});
    const std::vector<double> g = got.to_vector<double>(want.dims());
    CHECK_VEC_APPROX(g, want.to_vector<double>(want.dims()), 1e-5, 1e-6);
    if (first.empty()) first = g;
    else if (std::string(c.name) == "padded queries again") CHECK(g == first);
  }
}

TEST_CASE("dot_attention: fused and unfused gradients agree", "[attention]") {
  Setup s;
  for (bool causal : {false, true}) {
    INFO((causal ? "causal" : "padded"));
    nn::DotAttentionOptions o;
    if (causal) o.causal_query_dim = s.time;
    std::vector<std::vector<double>> results;
    for (bool fused : {false, true}) {
      o.fused = fused;
      Tensor q = rnd({s.batch, s.time, s.heads, s.key}, 60, DType::f64).with_requires_grad();
      Tensor k = rnd({s.heads, s.time, s.batch, s.key}, 61, DType::f64).with_requires_grad();
      Tensor v = rnd({s.time, s.batch, s.value, s.heads}, 62, DType::f64).with_requires_grad();
      Tensor out = copy_masked(nn::dot_attention(q, k, v, s.key, s.time, o), {s.time});
      std::vector<Tensor> g = grad(reduce_sum(square(out), out.dims()), {q, k, v});
      std::vector<double> all;
      for (size_t i = 0; i < 3; ++i) {
        auto x = g[i].to_vector<double>(std::vector<Tensor>{q, k, v}[i].dims());
        all.insert(all.end(), x.begin(), x.end());
      }
      results.push_back(all);
    }
    CHECK_VEC_APPROX(results[1], results[0], 1e-10, 1e-12);
  }
}

// Dropout in training: the fused path drops exactly the weights the unfused path (dropout() of
// the weights, from the same Generator state) drops, in the forward and, regenerated, in the
// backward; both leave the Generator at the same state.
TEST_CASE("dot_attention: fused dropout drops the weights the unfused path drops", "[attention]") {
  Setup s;
  Dim bias_key(s.time.extent(), "bias_key");
  for (DType dt : {DType::f64, DType::f32})
    // padded, causal, padded with a bias, mask shared over rows, and q, k, v laid out
    // {batch, heads, time} (batch and heads merge there, but not in the mask, whose Dims are in
    // creation order: batch, time, heads, keys)
    for (int variant = 0; variant < 5; ++variant) {
      INFO("dtype " << dtype_name(dt) << ", variant " << variant);
      nn::DotAttentionOptions o;
      o.att_dropout = 0.3;
      o.training = true;
      if (variant == 1) o.causal_query_dim = s.time;
      if (variant == 3) o.att_dropout_broadcast = true;
      std::vector<std::vector<double>> results;
      uint64_t offsets[2];
      for (bool fused : {false, true}) {
        o.fused = fused;
        Generator gen(11);
        gen.advance(5);
        o.gen = &gen;
        // rnd lays its tensors out in a permuted order; variant 4 lays them out as named.
        auto laid = [&](const Dims& dims, uint32_t seed) {
          Tensor t = rnd(dims, seed, dt);
          return (variant == 4 ? t.transpose_to(dims) : t).with_requires_grad();
        };
        const bool bh = variant == 4;
        Tensor q = laid(bh ? Dims{s.batch, s.heads, s.time, s.key} : Dims{s.batch, s.time, s.heads, s.key}, 80);
        Tensor k = laid(bh ? Dims{s.batch, s.heads, s.time, s.key} : Dims{s.heads, s.time, s.batch, s.key}, 81);
        Tensor v = laid(bh ? Dims{s.batch, s.heads, s.time, s.value} : Dims{s.time, s.batch, s.value, s.heads}, 82);
        Tensor bias = rnd({s.heads, s.time, bias_key}, 83, dt).with_requires_grad();
        if (variant == 2) {
          o.bias = bias;
          o.bias_key_dim = bias_key;
        }
        nn::reset_attention_path_counts();
        Tensor out = copy_masked(nn::dot_attention(q, k, v, s.key, s.time, o), {s.time});
        std::vector<Tensor> g = variant == 2 ? grad(reduce_sum(square(out), out.dims()), {q, k, v, bias})
                                             : grad(reduce_sum(square(out), out.dims()), {q, k, v});
        const nn::AttentionPathCounts c = nn::attention_path_counts();
        CHECK(c.fused_forward == (fused ? 1 : 0));
        CHECK(c.fused_backward == (fused ? 1 : 0));
        std::vector<double> all = out.to_vector<double>({s.batch, s.time, s.heads, s.value});
        for (size_t i = 0; i < 3; ++i) {
          auto x = g[i].to_vector<double>(std::vector<Tensor>{q, k, v}[i].dims());
          all.insert(all.end(), x.begin(), x.end());
        }
        if (variant == 2) {
          auto x = g[3].to_vector<double>(bias.dims());
          all.insert(all.end(), x.begin(), x.end());
        }
        results.push_back(all);
        offsets[fused] = gen.offset();
      }
      CHECK(offsets[0] == offsets[1]);
      if (dt == DType::f64) CHECK_VEC_APPROX(results[1], results[0], 1e-10, 1e-12);
      else CHECK_VEC_APPROX(results[1], results[0], 1e-4, 1e-5);
    }
}

// The keep rate, read off the output: with q = 0 every visible key has weight 1 / n, and with
// v one-hot per key, out[i, j] = kept(i, j) / (n (1 - p)).
TEST_CASE("dot_attention: fused dropout keeps 1 - p of the weights", "[attention]") {
  Dim batch(4, "batch"), time(64, "time"), key(8, "key"), keys_v(64, "keys_v");
  for (double p : {0.1, 0.5, 0.9}) {
    INFO("p = " << p);
    std::vector<double> onehot(size_t(64 * 64), 0.0);
    for (int64_t j = 0; j < 64; ++j) onehot[size_t(j * 64 + j)] = 1.0;
    Tensor v = Tensor::from_vector<double>({time, keys_v}, onehot);
    Tensor q = Tensor::zeros({batch, time, key}, DType::f64), k = rnd({time, key}, 90, DType::f64);
    nn::DotAttentionOptions o;
    o.fused = true;
    o.training = true;
    o.att_dropout = p;
    Generator gen(7);
    o.gen = &gen;
    const std::vector<double> out = nn::dot_attention(q, k, v, key, time, o).to_vector<double>({batch, time, keys_v});
    int64_t kept = 0;
    const double w = 1.0 / (64 * (1 - p));
    for (double x : out) {
      REQUIRE((x == 0.0 || std::abs(x - w) < 1e-12));
      kept += x != 0.0;
    }
    const double n = double(out.size()), rate = double(kept) / n;
    CHECK(std::abs(rate - (1 - p)) < 4 * std::sqrt(p * (1 - p) / n));  // 4 standard deviations
  }
}

TEST_CASE("dot_attention: q, k and v sliced from one projection get their gradients in one buffer", "[attention]") {
  // A fused projection {batch, time, heads, 3 * key} split into q | k | v: the fused backward
  // writes the three gradients straight into one buffer shaped like the projection.
  Setup s;
  Dim packed(3 * s.key.size(), "packed"), val(s.key.size(), "val");
  for (bool causal : {false, true}) {
    INFO((causal ? "causal" : "padded"));
    nn::DotAttentionOptions o;
    if (causal) o.causal_query_dim = s.time;
    const Dims layout{s.batch, s.time, s.heads, packed};
    Tensor p = rnd(layout, 63, DType::f64).transpose_to(layout).contiguous().with_requires_grad();
    const int64_t e = s.key.size();
    auto loss_of = [&](const Tensor& q, const Tensor& k, const Tensor& v) {
      Tensor out = copy_masked(nn::dot_attention(q, k, v, s.key, s.time, o), {s.time});
      return reduce_sum(square(out), out.dims());
    };
    // Reference: q, k and v as separate leaves (copies), their gradients side by side.
    Tensor k0 = slice(p.detach(), packed, 0, e, 1, s.key).first.contiguous().with_requires_grad();
    Tensor v0 = slice(p.detach(), packed, e, 2 * e, 1, val).first.contiguous().with_requires_grad();
    Tensor q0 = slice(p.detach(), packed, 2 * e, 3 * e, 1, s.key).first.contiguous().with_requires_grad();
    std::vector<Tensor> g0 = grad(loss_of(q0, k0, v0), {q0, k0, v0});
    std::vector<double> want;
    for (const auto& [g, d] : {std::pair{g0[0], s.key}, {g0[1], s.key}, {g0[2], val}}) {
      const std::vector<double> x = g.to_vector<double>({s.batch, s.time, s.heads, d});
      want.insert(want.end(), x.begin(), x.end());
    }
    // The sliced version, in the slices' order k | v | q: the buffer is filled wherever they lie.
    Tensor k = slice(p, packed, 0, e, 1, s.key).first, v = slice(p, packed, e, 2 * e, 1, val).first;
    Tensor q = slice(p, packed, 2 * e, 3 * e, 1, s.key).first;
    Profiler prof;
    Tensor gp = grad(loss_of(q, k, v), {p})[0];
    for (const Profiler::Entry& en : prof.entries()) CHECK(en.context != "slice");  // no per-slice copies or adds
    std::vector<double> got;
    const std::vector<double> all = gp.to_vector<double>({s.batch, s.time, s.heads, packed});
    // Reorder k | v | q into q | k | v per (batch, time, heads) row.
    for (size_t part : {2, 0, 1})
      for (size_t r = 0; r < all.size() / size_t(3 * e); ++r)
        got.insert(got.end(), all.begin() + long(r * 3 * e + part * e), all.begin() + long(r * 3 * e + (part + 1) * e));
    CHECK_VEC_APPROX(got, want, 1e-10, 1e-12);
  }
}

TEST_CASE("dot_attention: an additive bias, fused == unfused, forward and gradients", "[attention]") {
  // The bias over any subset of q's Dims and the keys, broadcast over the rest: the fused
  // primitive (CPU) against matmul + bias + softmax + matmul, outputs and the gradients of q,
  // k, v and the bias, float64.
  Setup s;
  Dim qt(3, "qt");
  struct Case {
    const char* name;
    Dims bias_dims;
    bool self;
  };
  Dim kb(s.time.extent(), "kb");  // the keys' Dim of a self-attention bias
  const std::vector<Case> cases{{"{batch, heads, qt, time}", {s.batch, s.heads, qt, s.time}, false},
                                {"{heads, qt, time}", {s.heads, qt, s.time}, false},
                                {"{time, heads}", {s.time, s.heads}, false},
                                {"{qt, batch}", {qt, s.batch}, false},
                                {"self, causal: {heads, time, kb}", {s.heads, s.time, kb}, true},
                                {"self, causal: {kb, batch}", {kb, s.batch}, true}};
  for (const Case& c : cases) {
    INFO(c.name);
    std::vector<std::vector<double>> results;
    for (bool fused : {false, true}) {
      nn::DotAttentionOptions o;
      o.fused = fused;
      const Dim query = c.self ? s.time : qt;
      // NaN in every padded key frame of k, v and the bias: never reaches a valid output.
      const double nan = std::numeric_limits<double>::quiet_NaN();
      auto nan_padded = [&](const Tensor& t) { return t.has_dim(s.time) ? copy_masked(t, {s.time}, nan) : t; };
      Tensor q = rnd({s.batch, query, s.heads, s.key}, 70, DType::f64).with_requires_grad();
      Tensor k = nan_padded(rnd({s.heads, s.time, s.batch, s.key}, 71, DType::f64)).with_requires_grad();
      Tensor v = nan_padded(rnd({s.time, s.batch, s.value, s.heads}, 72, DType::f64)).with_requires_grad();
      Tensor bias = rnd(c.bias_dims, 73, DType::f64, -2, 2);
      if (!c.self && bias.has_dim(s.batch)) bias = nan_padded(bias);
      bias = bias.with_requires_grad();
      o.bias = bias;
      if (c.self) {
        o.causal_query_dim = s.time;
        o.bias_key_dim = kb;
      }
      nn::reset_attention_path_counts();
      Tensor out = copy_masked(nn::dot_attention(q, k, v, s.key, s.time, o), {c.self ? s.time : qt});
      CHECK(nn::attention_path_counts().fused_forward == (fused ? 1 : 0));
      std::vector<Tensor> g = grad(reduce_sum(square(out), out.dims()), {q, k, v, bias});
      CHECK(nn::attention_path_counts().unfused_backward == 0);
      std::vector<double> all = out.to_vector<double>({s.batch, query, s.heads, s.value});
      const std::vector<Tensor> ins{q, k, v, bias};
      for (size_t i = 0; i < 4; ++i) {
        REQUIRE(g[i].defined());
        // Valid frames only (a padded frame's gradient is unspecified).
        const Tensor gi = g[i].has_dim(s.time) && g[i].has_dim(s.batch) ? copy_masked(g[i], {s.time}) : g[i];
        auto x = gi.to_vector<double>(ins[i].dims());
        for (double e : x) CHECK(std::isfinite(e));
        all.insert(all.end(), x.begin(), x.end());
      }
      results.push_back(all);
    }
    CHECK_VEC_APPROX(results[1], results[0], 1e-10, 1e-12);
  }
}

TEST_CASE("dot_attention: the bias's gradient matches float64 finite differences", "[attention]") {
  Setup s;
  Dim qt(3, "qt");
  Tensor q = rnd({s.batch, qt, s.heads, s.key}, 74, DType::f64);
  Tensor k = rnd({s.batch, s.time, s.heads, s.key}, 75, DType::f64);
  Tensor v = rnd({s.batch, s.time, s.heads, s.value}, 76, DType::f64);
  Tensor bias = rnd({s.heads, qt, s.time}, 77, DType::f64, -2, 2).contiguous().with_requires_grad();
  Tensor w = rnd({s.batch, qt, s.heads, s.value}, 78, DType::f64);
  nn::DotAttentionOptions o;
  o.bias = bias;
  auto loss = [&] { return reduce_sum(nn::dot_attention(q, k, v, s.key, s.time, o) * w, {s.batch, qt, s.heads, s.value}); };
  const std::vector<double> analytic = grad(loss(), {bias})[0].to_vector<double>(bias.dims());
  // Padded key frames get no weight, so the bias there has no effect: its gradient is 0.
  const std::vector<double> numeric = finite_diff(bias, [&] { return loss().item<double>(); });
  CHECK_VEC_APPROX(analytic, numeric, 1e-7, 1e-8);
}

TEST_CASE("dot_attention: a bias over the wrong Dims or dtype is an error naming them", "[attention][errors]") {
  Setup s;
  Dim qt(3, "qt"), other(2, "other"), kb(4, "kb");
  Tensor q = rnd({s.batch, qt, s.heads, s.key}, 79), k = rnd({s.batch, s.time, s.heads, s.key}, 80);
  Tensor v = rnd({s.batch, s.time, s.heads, s.value}, 81);
  nn::DotAttentionOptions o;
  o.bias = rnd({s.heads, other}, 82);
  CHECK_THROWS_WITH(nn::dot_attention(q, k, v, s.key, s.time, o), Catch::Contains("dot_attention") && Catch::Contains("other"));
  o.bias = rnd({s.heads, s.key}, 83);
  CHECK_THROWS_WITH(nn::dot_attention(q, k, v, s.key, s.time, o), Catch::Contains("bias") && Catch::Contains("key"));
  o.bias = rnd({s.heads, s.time}, 84, DType::f64);
  CHECK_THROWS_WITH(nn::dot_attention(q, k, v, s.key, s.time, o), Catch::Contains("dtype"));
  o.bias = rnd({s.heads, kb}, 85);
  o.bias_key_dim = kb;  // extent 4, axis has 5
  CHECK_THROWS_WITH(nn::dot_attention(q, k, v, s.key, s.time, o), Catch::Contains("bias_key_dim") && Catch::Contains("kb"));
}

// The bias a relative table gives (i, j), by loops: table[.., j - i + tq - 1] over
// {batch, heads, query, keys} (the table's other Dims broadcast).
Tensor relative_by_loops(const Tensor& table, const Dim& batch, const Dim& heads, const Dim& query, const Dim& keys,
                         const Dim& positions) {
  Tensor t = table;
  for (const Dim& d : {batch, heads})
    if (!t.has_dim(d)) t = expand_dim(t, d);
  const std::vector<double> tv = t.to_vector<double>({batch, heads, positions});
  const int64_t B = batch.extent(), H = heads.extent(), TQ = query.extent(), TK = keys.extent(), P = positions.extent();
  std::vector<double> out;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < TQ; ++i)
        for (int64_t j = 0; j < TK; ++j) out.push_back(tv[size_t((b * H + h) * P + (j - i + TQ - 1))]);
  return Tensor::from_vector<double>({batch, heads, query, keys}, out);
}

// A float64 key-side leaf over `dims` (which hold `time`) with `time` renamed to the key Dim kd
// and its padded frames NaN: they must never reach a valid output or gradient.
Tensor nan_padded_keys(const Dims& dims, uint32_t seed, const Dim& time, const Dim& kd) {
  const Tensor x = copy_masked(rnd(dims, seed, DType::f64), {time}, std::numeric_limits<double>::quiet_NaN());
  return replace_dim(x, time, kd).first.contiguous().with_requires_grad();
}

TEST_CASE("dot_attention: a relative bias read in place equals the bias it stands for", "[attention]") {
  // A table by relative position (j - i) against the same bias written out over {query, keys}
  // by loops: outputs and the gradients of q, k, v and the table (the written-out bias's
  // gradient summed along each diagonal), float64; padded and causal keys; the CPU's fused
  // primitive reads the table in place (nothing gathered over {query, keys}).
  Setup s;
  const Dim keys = s.time.copy("keys");
  const Dim causal = nn::causal_key_dim(s.time, s.time);
  const Dim positions(s.time.extent() * 2 - 1, "positions");
  struct Case {
    const char* name;
    Dims table_dims;
    bool causal;
  };
  const std::vector<Case> cases{{"{positions, heads}", {positions, s.heads}, false},
                                {"{positions}: shared by batch and heads", {positions}, false},
                                {"{batch, positions, heads}", {s.batch, positions, s.heads}, false},
                                {"causal, {heads, positions}", {s.heads, positions}, true}};
  for (const Case& c : cases) {
    INFO(c.name);
    const Dim& kd = c.causal ? causal : keys;
    const Tensor q = rnd({s.batch, s.time, s.heads, s.key}, 90, DType::f64).with_requires_grad();
    const Tensor k = nan_padded_keys({s.batch, s.time, s.heads, s.key}, 91, s.time, kd);
    const Tensor v = nan_padded_keys({s.time, s.batch, s.value, s.heads}, 92, s.time, kd);
    const Tensor table = rnd(c.table_dims, 93, DType::f64, -2, 2).with_requires_grad();
    const Tensor w = copy_masked(rnd({s.batch, s.time, s.heads, s.value}, 94, DType::f64), {s.time});
    AttentionOptions o;
    o.scale = 0.5;
    o.fused = true;
    auto run = [&](const AttentionOptions& opt, const Tensor& b) {
      Tensor out = copy_masked(dot_attention(q, k, v, s.key, kd, opt), {s.time});
      std::vector<Tensor> g = grad(reduce_sum(out * w, out.dims()), {q, k, v, b});
      std::vector<double> all = out.to_vector<double>({s.batch, s.time, s.heads, s.value});
      for (size_t i = 0; i < 3; ++i) {
        // k's and v's frames as the sequence's time frames (a causal key Dim's lengths also
        // run over the queries); valid frames only.
        Tensor gi = g[i].has_dim(kd) ? replace_dim(g[i], kd, s.time).first : g[i];
        auto x = copy_masked(gi, {s.time}).to_vector<double>({s.batch, s.time, s.heads, i == 2 ? s.value : s.key});
        all.insert(all.end(), x.begin(), x.end());
      }
      return std::pair{all, g[3]};
    };
    nn::reset_attention_path_counts();
    AttentionOptions r = o;
    r.relative_bias = RelativeBias{table, s.time, positions};
    auto [got, dtable] = run(r, table);
    const AttentionPathCounts pc = attention_path_counts();
    CHECK(pc.fused_forward == 1);
    CHECK(pc.fused_backward == 1);
    CHECK(pc.relative_bias_gathered == 0);
    // The reference: the bias written out, a leaf of its own; its gradient summed by diagonal.
    const Tensor full = replace_dim(relative_by_loops(table, s.batch, s.heads, s.time, keys, positions), keys, kd)
                            .first.with_requires_grad();
    AttentionOptions f = o;
    f.bias = full;
    auto [want, dfull] = run(f, full);
    CHECK_VEC_APPROX(got, want, 1e-11, 1e-12);
    const std::vector<double> gf = dfull.to_vector<double>({s.batch, s.heads, s.time, kd});
    const int64_t T = s.time.extent(), P = positions.extent();
    std::vector<double> by_diag(size_t(3 * 2 * P), 0.0);
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t i = 0; i < T; ++i)
          for (int64_t j = 0; j < T; ++j)
            by_diag[size_t((b * 2 + h) * P + j - i + T - 1)] += gf[size_t(((b * 2 + h) * T + i) * T + j)];
    Tensor expect = Tensor::from_vector<double>({s.batch, s.heads, positions}, by_diag);
    for (const Dim& d : {s.batch, s.heads})
      if (!table.has_dim(d)) expect = reduce_sum(expect, {d});
    CHECK_VEC_APPROX(dtable.to_vector<double>(table.dims()), expect.to_vector<double>(table.dims()), 1e-11, 1e-12);
    // Two backward runs agree bit for bit.
    CHECK(run(r, table).second.to_vector<double>(table.dims()) == dtable.to_vector<double>(table.dims()));
    // Unfused, or with a bias as well: gathered over {query, keys} first, the same values.
    AttentionOptions u = r;
    u.fused = false;
    nn::reset_attention_path_counts();
    CHECK_VEC_APPROX(run(u, table).first, want, 1e-11, 1e-12);
    CHECK(attention_path_counts().relative_bias_gathered == 1);
    AttentionOptions both = r;
    both.bias = Tensor::zeros({s.heads, kd}, DType::f64);
    nn::reset_attention_path_counts();
    CHECK_VEC_APPROX(run(both, table).first, want, 1e-11, 1e-12);
    CHECK(attention_path_counts().relative_bias_gathered == 1);
    CHECK(attention_path_counts().fused_forward == 1);
  }
}

TEST_CASE("dot_attention: a relative bias where q has a second query Dim is gathered, same values", "[attention]") {
  // q over {beam, time}: two query Dims, so the in-place view (one row index) does not apply;
  // the op gathers the table over {time, keys} and the fused primitive reads that.
  Setup s;
  const Dim beam(2, "beam"), keys = s.time.copy("keys"), positions(s.time.extent() * 2 - 1, "positions");
  const Tensor q = rnd({s.batch, beam, s.time, s.heads, s.key}, 105, DType::f64).with_requires_grad();
  const Tensor k = replace_dim(rnd({s.batch, s.time, s.heads, s.key}, 106, DType::f64), s.time, keys).first;
  const Tensor v = replace_dim(rnd({s.batch, s.time, s.heads, s.value}, 107, DType::f64), s.time, keys).first;
  const Tensor table = rnd({s.heads, positions}, 108, DType::f64, -2, 2).with_requires_grad();
  AttentionOptions r;
  r.fused = true;
  r.relative_bias = RelativeBias{table, s.time, positions};
  nn::reset_attention_path_counts();
  const Tensor got = dot_attention(q, k, v, s.key, keys, r);
  CHECK(attention_path_counts().relative_bias_gathered == 1);
  CHECK(attention_path_counts().fused_forward == 1);
  const std::vector<Tensor> gg = grad(reduce_sum(copy_masked(got, {s.time}), got.dims()), {q, table});
  AttentionOptions f;
  f.fused = true;
  const Tensor full = relative_by_loops(table, s.batch, s.heads, s.time, keys, positions).with_requires_grad();
  f.bias = full;
  const Tensor want = dot_attention(q, k, v, s.key, keys, f);
  const std::vector<Tensor> gw = grad(reduce_sum(copy_masked(want, {s.time}), want.dims()), {q, full});
  const Dims od{s.batch, beam, s.time, s.heads, s.value};
  CHECK_VEC_APPROX(copy_masked(got, {s.time}).to_vector<double>(od), copy_masked(want, {s.time}).to_vector<double>(od),
                   1e-11, 1e-12);
  CHECK_VEC_APPROX(copy_masked(gg[0], {s.time}).to_vector<double>(q.dims()),
                   copy_masked(gw[0], {s.time}).to_vector<double>(q.dims()), 1e-11, 1e-12);
  // The table's gradient: the written-out bias's, summed along each diagonal and over the batch.
  const std::vector<double> gf = gw[1].to_vector<double>({s.batch, s.heads, s.time, keys});
  const int64_t T = s.time.extent(), P = positions.extent();
  std::vector<double> by_diag(size_t(2 * P), 0.0);
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j < T; ++j) by_diag[size_t(h * P + j - i + T - 1)] += gf[size_t(((b * 2 + h) * T + i) * T + j)];
  CHECK_VEC_APPROX(gg[1].to_vector<double>({s.heads, positions}), by_diag, 1e-11, 1e-12);
}

TEST_CASE("dot_attention: the relative table's gradient matches float64 finite differences; bf16 and errors",
          "[attention]") {
  Setup s;
  const Dim keys = s.time.copy("keys");
  const Dim positions(s.time.extent() * 2 - 1, "positions");
  Tensor q = rnd({s.batch, s.time, s.heads, s.key}, 95, DType::f64);
  Tensor k = replace_dim(rnd({s.batch, s.time, s.heads, s.key}, 96, DType::f64), s.time, keys).first;
  Tensor v = replace_dim(rnd({s.batch, s.time, s.heads, s.value}, 97, DType::f64), s.time, keys).first;
  Tensor table = rnd({s.heads, positions}, 98, DType::f64, -2, 2).contiguous().with_requires_grad();
  Tensor w = copy_masked(rnd({s.batch, s.time, s.heads, s.value}, 99, DType::f64), {s.time});
  AttentionOptions o;
  o.relative_bias = RelativeBias{table, s.time, positions};
  auto loss = [&] { return reduce_sum(dot_attention(q, k, v, s.key, keys, o) * w, {s.batch, s.time, s.heads, s.value}); };
  const std::vector<double> analytic = grad(loss(), {table})[0].to_vector<double>(table.dims());
  const std::vector<double> numeric = finite_diff(table, [&] { return loss().item<double>(); });
  CHECK_VEC_APPROX(analytic, numeric, 1e-7, 1e-8);

  // bf16 on the CPU runs in f32 with the table read in place: within bf16's rounding of f64.
  {
    AttentionOptions h;
    h.relative_bias = RelativeBias{table.detach().astype(DType::bf16), s.time, positions};
    nn::reset_attention_path_counts();
    Tensor got = dot_attention(q.astype(DType::bf16), k.astype(DType::bf16), v.astype(DType::bf16), s.key, keys, h);
    CHECK(attention_path_counts().relative_bias_gathered == 0);
    AttentionOptions r;
    r.relative_bias = RelativeBias{table.detach().astype(DType::bf16).astype(DType::f64), s.time, positions};
    Tensor want = dot_attention(q.astype(DType::bf16).astype(DType::f64), k.astype(DType::bf16).astype(DType::f64),
                                v.astype(DType::bf16).astype(DType::f64), s.key, keys, r);
    const Dims d{s.batch, s.time, s.heads, s.value};
    CHECK_VEC_APPROX(copy_masked(got.astype(DType::f64), {s.time}).to_vector<double>(d),
                     copy_masked(want, {s.time}).to_vector<double>(d), 2e-2, 2e-2);
  }

  // Errors name the op and the Dims.
  const Dim short_pos(positions.extent() - 1, "short_pos"), other(2, "other");
  AttentionOptions e;
  e.relative_bias = RelativeBias{rnd({s.heads, short_pos}, 100, DType::f64), s.time, short_pos};
  CHECK_THROWS_WITH(dot_attention(q, k, v, s.key, keys, e),
                    Catch::Contains("dot_attention") && Catch::Contains("short_pos") && Catch::Contains("extent 9"));
  e.relative_bias = RelativeBias{rnd({s.heads, positions, other}, 101, DType::f64), s.time, positions};
  CHECK_THROWS_WITH(dot_attention(q, k, v, s.key, keys, e), Catch::Contains("relative_bias") && Catch::Contains("other"));
  e.relative_bias = RelativeBias{rnd({s.heads, positions}, 102, DType::f64), other, positions};
  CHECK_THROWS_WITH(dot_attention(q, k, v, s.key, keys, e), Catch::Contains("relative_bias.query") && Catch::Contains("other"));
  e.relative_bias = RelativeBias{rnd({s.heads, positions}, 102, DType::f64), s.heads, positions};
  CHECK_THROWS_WITH(dot_attention(q, k, v, s.key, keys, e),
                    Catch::Contains("relative_bias.query") && Catch::Contains("heads") && Catch::Contains("k and v lack"));
  e.relative_bias = RelativeBias{rnd({s.heads, positions}, 103, DType::f32), s.time, positions};
  CHECK_THROWS_WITH(dot_attention(q, k, v, s.key, keys, e), Catch::Contains("dtype"));
  e.relative_bias = RelativeBias{rnd({s.heads, s.time}, 104, DType::f64), s.time, s.heads};
  CHECK_THROWS_WITH(dot_attention(q, k, v, s.key, keys, e), Catch::Contains("positions") && Catch::Contains("heads"));
}

TEST_CASE("dot_attention: a relative bias with a row scale (the gru_rel_pos gate) read in place", "[attention]") {
  // term(i, j) = scale[.., i] * table[.., j - i + T - 1]: the fused primitive reads both in
  // place; the unfused path (the scaled table gathered over {query, keys}, then autograd
  // through the gather and the product) is the reference, float64; padded and causal keys;
  // a scale per (batch, heads, query), NaN on the padded query frames (a gate computed from
  // padding), and one over the queries alone (shared by the problems).
  Setup s;
  const Dim keys = s.time.copy("keys");
  const Dim causal = nn::causal_key_dim(s.time, s.time);
  const Dim positions(s.time.extent() * 2 - 1, "positions");
  for (const bool is_causal : {false, true})
    for (const bool per_problem : {true, false}) {
      INFO((is_causal ? "causal" : "padded") << ", scale " << (per_problem ? "{batch, heads, time}" : "{time}"));
      const Dim& kd = is_causal ? causal : keys;
      const Tensor q = rnd({s.batch, s.time, s.heads, s.key}, 110, DType::f64).with_requires_grad();
      const Tensor k = nan_padded_keys({s.batch, s.time, s.heads, s.key}, 111, s.time, kd);
      const Tensor v = nan_padded_keys({s.batch, s.time, s.heads, s.value}, 112, s.time, kd);
      const Tensor table = rnd({positions, s.heads}, 113, DType::f64, -2, 2).with_requires_grad();
      const Tensor scale =
          (per_problem ? where(sequence_mask({s.time}), rnd({s.heads, s.time, s.batch}, 114, DType::f64, 0.5, 2),
                               std::numeric_limits<double>::quiet_NaN())
                       : rnd({s.time}, 114, DType::f64, 0.5, 2))
              .with_requires_grad();
      const Tensor w = copy_masked(rnd({s.batch, s.time, s.heads, s.value}, 115, DType::f64), {s.time});
      AttentionOptions o;
      o.scale = 0.5;
      o.relative_bias = RelativeBias{table, s.time, positions, scale};
      auto run = [&](bool fused) {
        AttentionOptions opt = o;
        opt.fused = fused;
        Tensor out = copy_masked(dot_attention(q, k, v, s.key, kd, opt), {s.time});
        std::vector<Tensor> g = grad(reduce_sum(out * w, out.dims()), {q, k, v, table, scale});
        std::vector<double> all = out.to_vector<double>({s.batch, s.time, s.heads, s.value});
        for (size_t i = 0; i < 3; ++i) {
          Tensor gi = g[i].has_dim(kd) ? replace_dim(g[i], kd, s.time).first : g[i];
          auto x = copy_masked(gi, {s.time}).to_vector<double>({s.batch, s.time, s.heads, i == 2 ? s.value : s.key});
          all.insert(all.end(), x.begin(), x.end());
        }
        for (size_t i = 3; i < 5; ++i) {
          auto x = g[i].to_vector<double>((i == 3 ? table : scale).dims());
          all.insert(all.end(), x.begin(), x.end());
        }
        return all;
      };
      nn::reset_attention_path_counts();
      const std::vector<double> got = run(true);
      const AttentionPathCounts pc = attention_path_counts();
      CHECK(pc.fused_forward == 1);
      CHECK(pc.fused_backward == 1);
      CHECK(pc.relative_bias_gathered == 0);
      nn::reset_attention_path_counts();
      const std::vector<double> want = run(false);
      CHECK(attention_path_counts().relative_bias_gathered == 1);
      CHECK_VEC_APPROX(got, want, 1e-11, 1e-12);
      CHECK(run(true) == got);  // bit for bit again
    }

  // The scale's gradient against float64 finite differences, through the fused path.
  Tensor q = rnd({s.batch, s.time, s.heads, s.key}, 116, DType::f64);
  Tensor k = replace_dim(rnd({s.batch, s.time, s.heads, s.key}, 117, DType::f64), s.time, keys).first;
  Tensor v = replace_dim(rnd({s.batch, s.time, s.heads, s.value}, 118, DType::f64), s.time, keys).first;
  Tensor table = rnd({s.heads, positions}, 119, DType::f64, -2, 2);
  Tensor scale = rnd({s.batch, s.heads, s.time}, 120, DType::f64, 0.5, 2).contiguous().with_requires_grad();
  Tensor w = copy_masked(rnd({s.batch, s.time, s.heads, s.value}, 121, DType::f64), {s.time});
  AttentionOptions o;
  o.fused = true;
  o.relative_bias = RelativeBias{table, s.time, positions, scale};
  auto loss = [&] { return reduce_sum(dot_attention(q, k, v, s.key, keys, o) * w, {s.batch, s.time, s.heads, s.value}); };
  const std::vector<double> analytic = grad(loss(), {scale})[0].to_vector<double>(scale.dims());
  const std::vector<double> numeric = finite_diff(scale, [&] { return loss().item<double>(); });
  CHECK_VEC_APPROX(analytic, numeric, 1e-7, 1e-8);

  // Errors name the op and the Dims.
  const Dim other(2, "other");
  AttentionOptions e;
  e.relative_bias = RelativeBias{table, s.time, positions, rnd({s.time, s.key}, 122, DType::f64)};
  CHECK_THROWS_WITH(dot_attention(q, k, v, s.key, keys, e),
                    Catch::Contains("relative_bias.scale") && Catch::Contains("key"));
  e.relative_bias = RelativeBias{table, s.time, positions, rnd({s.time, other}, 123, DType::f64)};
  CHECK_THROWS_WITH(dot_attention(q, k, v, s.key, keys, e),
                    Catch::Contains("relative_bias.scale") && Catch::Contains("other"));
  e.relative_bias = RelativeBias{table, s.time, positions, rnd({s.time}, 124, DType::f32)};
  CHECK_THROWS_WITH(dot_attention(q, k, v, s.key, keys, e), Catch::Contains("relative_bias.scale") && Catch::Contains("dtype"));
}

TEST_CASE("dot_attention: dropout only in training, and errors name the Dims", "[attention]") {
  Setup s;
  Tensor q = rnd({s.batch, s.time, s.heads, s.key}, 14), k = rnd({s.batch, s.time, s.heads, s.key}, 15);
  Tensor v = rnd({s.batch, s.time, s.heads, s.value}, 16);
  Generator gen(1);
  nn::DotAttentionOptions o;
  o.att_dropout = 0.5;
  o.gen = &gen;
  auto eval_out = nn::dot_attention(q, k, v, s.key, s.time, o).to_vector<float>({s.batch, s.time, s.heads, s.value});
  CHECK(eval_out == nn::dot_attention(q, k, v, s.key, s.time).to_vector<float>({s.batch, s.time, s.heads, s.value}));
  o.training = true;
  CHECK(nn::dot_attention(q, k, v, s.key, s.time, o).to_vector<float>({s.batch, s.time, s.heads, s.value}) != eval_out);
  o.gen = nullptr;
  CHECK_THROWS_WITH(nn::dot_attention(q, k, v, s.key, s.time, o), Catch::Contains("Generator"));
  CHECK_THROWS_WITH(nn::dot_attention(q, k, v, s.value, s.time), Catch::Contains("dot_attention") && Catch::Contains("value"));
  CHECK_THROWS_WITH(nn::dot_attention(q, k, v, s.key, s.heads.copy()), Catch::Contains("dot_attention"));
}

TEST_CASE("positional encodings match their closed forms", "[attention]") {
  Dim q(3, "q"), kv(4, "kv"), f(6, "f"), t(5, "t");
  auto [rel, rd] = nn::relative_positional_encoding(q, kv, f, 1, DType::f64);
  CHECK(rd.size() == 3 - 1 + 4);
  CHECK(nn::relative_positional_encoding(q, kv, f, 1).second == rd);
  auto r = rel.to_vector<double>({rd, f});
  for (int64_t i = 0; i < 6; ++i) {
    double p = double(i - 2 - 1);
    for (int64_t k = 0; k < 3; ++k) {
      double w = std::pow(1e4, -2.0 * double(k) / 6.0);
      CHECK(r[size_t(i * 6 + k)] == Approx(std::sin(p * w)).margin(1e-12));
      CHECK(r[size_t(i * 6 + 3 + k)] == Approx(std::cos(p * w)).margin(1e-12));
    }
  }
  Tensor s = nn::sinusoidal_positional_encoding(t, f, 2, 1e4, DType::f64);
  auto sv = s.to_vector<double>({t, f});
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t k = 0; k < 3; ++k) {
      double w = std::pow(1e4, -double(k) / 2.0);
      CHECK(sv[size_t(i * 6 + k)] == Approx(std::sin(double(i + 2) * w)).margin(1e-12));
      CHECK(sv[size_t(i * 6 + 3 + k)] == Approx(std::cos(double(i + 2) * w)).margin(1e-12));
    }
  CHECK_THROWS_WITH(nn::sinusoidal_positional_encoding(t, Dim(5, "odd")), Catch::Contains("odd:5"));
}

TEST_CASE("SelfAttention matches torch.nn.MultiheadAttention with mapped weights", "[attention]") {
  std::string path = (std::filesystem::path(__FILE__).parent_path() / "golden" / "self_attention.safetensors").string();
  SafeTensors f = SafeTensors::open(path);
  Dim batch(3, "batch"), e(8, "model"), kt(8, "key_total"), vt(8, "value_total");
  Dim time(f.load("lengths", {batch}, DType::i32), "time");
  Generator gen(0);
  nn::SelfAttention att(e, e, kt, vt, 2, gen, true, 0.0);
  LoadReport rep = nn::load_state(att, f, /*strict=*/false);
  CHECK(rep.missing.empty());
  CHECK(nn::named_parameters(att).size() == 4);
  nn::eval(att);
  Tensor x = f.load("x", {batch, time, e});
  Tensor out = att(x, time);
  Tensor want = f.load("out", {batch, time, e});
  auto g = copy_masked(out, {time}).to_vector<double>({batch, time, e});
  auto w = copy_masked(want, {time}).to_vector<double>({batch, time, e});
  CHECK_VEC_APPROX(g, w, 1e-5, 1e-5);
  CHECK_THROWS_WITH(nn::SelfAttention(e, std::nullopt, Dim(7, "kt7"), vt, 2, gen), Catch::Contains("num_heads"));
}

TEST_CASE("SelfAttention: parameter gradients match float64 finite differences", "[attention]") {
  Dim batch(2, "batch"), e(6, "model"), kt(4, "kt"), vt(6, "vt"), p(5, "p");
  Dim time = dynamic_dim(batch, {4, 2}, "time");
  Generator gen(3);
  nn::SelfAttention att(e, p, kt, vt, 2, gen, true, 0.0, false, DType::f64);
  {
    NoGradGuard ng;  // non-zero biases, so their gradients are exercised too
    att.qkv.bias->copy_from(random_uniform(att.qkv.bias->dims(), gen, -0.5, 0.5, DType::f64));
  }
  Tensor x = rnd({batch, time, e}, 20, DType::f64), w = rnd({batch, time, p}, 21, DType::f64);
  check_param_grads(att, [&] { return reduce_sum(att(x, time) * w, {batch, time, p}); });
}

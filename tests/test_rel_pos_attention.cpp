// RelPosSelfAttention (Transformer-XL and Shaw settings) against ESPnet-style PyTorch math and
// a direct O(T^2) loop; the causal variant's decoding invariants; learned and single-step
// relative encodings against closed forms; gradients of every parameter.
#include <dimx/nn.h>

#include <filesystem>

#include "module_check.h"

using namespace dimx;
using namespace dimx_test;

namespace {

struct Setup {
  Dim batch{3, "batch"};
  Dim time = dynamic_dim(batch, {5, 2, 4}, "time");
  Dim model{6, "model"}, kt{4, "kt"}, vt{6, "vt"}, out{5, "out"};
};

nn::RelPosSelfAttentionOptions transformer_xl(DType dt = DType::f64) {
  nn::RelPosSelfAttentionOptions o;
  o.att_dropout = 0;
  o.dtype = dt;
  return o;
}

nn::RelPosSelfAttentionOptions shaw(DType dt = DType::f64) {
  nn::RelPosSelfAttentionOptions o = transformer_xl(dt);
  o.with_bias = o.with_linear_pos = o.with_pos_bias = o.separate_pos_emb_per_head = false;
  o.learnable_pos_emb = true;
  o.learnable_pos_emb_clipping = 2;  // shorter than the sequences, so clipping matters
  return o;
}

// Non-zero biases, so every parameter shapes the output.
void randomize_biases(nn::RelPosSelfAttention& att, Generator& gen) {
  NoGradGuard ng;
  for (auto& [name, p] : nn::named_parameters(att))
    if (name.find("bias") != std::string::npos) p->copy_from(random_uniform(p->dims(), gen, -0.5, 0.5, p->dtype()));
}

// out[b, i] = proj(sum_j softmax_j(((q_i + u) . k_j + (q_i + v) . P_h(j - i)) / sqrt(dk)) v_j)
// over valid keys j (j <= i if causal), straight from the parameters, in double.
std::vector<double> naive(const nn::RelPosSelfAttention& att, const Setup& s, const Tensor& x, bool causal) {
  const int64_t B = 3, T = s.time.extent(), E = s.model.size(), H = att.heads.size();
  const int64_t dk = att.key_dim_per_head.size(), dv = att.value_dim_per_head.size(), P = 2 * dk + dv;
  const int64_t O = att.proj ? att.proj->out_dim.size() : H * dv;
  auto X = x.to_vector<double>({s.batch, s.time, s.model});
  auto W = att.qkv.weight.to_vector<double>({att.qkv_dim, s.model});
  std::vector<double> bias = att.qkv.bias ? att.qkv.bias->to_vector<double>() : std::vector<double>(size_t(H * P), 0.0);
  std::vector<double> zero(size_t(H * dk), 0.0);
  auto U = att.pos_bias_u ? att.pos_bias_u->to_vector<double>({att.heads, att.key_dim_per_head}) : zero;
  auto V = att.pos_bias_v ? att.pos_bias_v->to_vector<double>({att.heads, att.key_dim_per_head}) : zero;
  // P_h(r)[d]: linear_pos of the sinusoid (all sines, then all cosines), or the clipped learned row.
  auto pos = [&](int64_t h, int64_t r, int64_t d) {
    if (att.learned_pos_emb) {
      const auto& e = *att.learned_pos_emb;
      auto table = e.pos_emb.to_vector<double>({e.clipped_dim, e.feat_dim});
      int64_t row = std::clamp<int64_t>(r, -e.clipping, e.clipping) + e.clipping;
      return table[size_t(row * e.feat_dim.size() + d)];
    }
    auto Wp = att.linear_pos->weight.to_vector<double>({att.key_dim_total, s.model});
    double acc = 0;
    for (int64_t f = 0; f < E; ++f) {
      int64_t k = f % (E / 2);
      double w = std::pow(1e4, -2.0 * double(k) / double(E)), a = double(r) * w;
      acc += Wp[size_t((h * dk + d) * E + f)] * (f < E / 2 ? std::sin(a) : std::cos(a));
    }
    return acc;
  };
  auto proj = [&](const std::vector<double>& in) {
    if (!att.proj) return in;
    auto Wo = att.proj->weight.to_vector<double>({att.proj->out_dim, att.value_dim_total});
    auto bo = att.proj->bias ? att.proj->bias->to_vector<double>() : std::vector<double>(size_t(O), 0.0);
    std::vector<double> y(static_cast<size_t>(O));
    for (int64_t o = 0; o < O; ++o) {
      y[size_t(o)] = bo[size_t(o)];
      for (int64_t c = 0; c < H * dv; ++c) y[size_t(o)] += Wo[size_t(o * H * dv + c)] * in[size_t(c)];
    }
    return y;
  };
  auto lens = s.time.lengths().to_vector<int32_t>();
  std::vector<double> result(size_t(B * T * O), 0.0);
  for (int64_t b = 0; b < B; ++b) {
    // qkv[t][h * P + c]
    std::vector<double> qkv(static_cast<size_t>(T * H * P));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t r = 0; r < H * P; ++r) {
        double acc = bias[size_t(r)];
        for (int64_t e = 0; e < E; ++e) acc += W[size_t(r * E + e)] * X[size_t((b * T + t) * E + e)];
        qkv[size_t(t * H * P + r)] = acc;
      }
    for (int64_t i = 0; i < lens[size_t(b)]; ++i) {
      std::vector<double> merged(size_t(H * dv), 0.0);
      for (int64_t h = 0; h < H; ++h) {
        const int64_t n = causal ? i + 1 : lens[size_t(b)];
        std::vector<double> sc(static_cast<size_t>(n));
        double m = -1e300, z = 0;
        for (int64_t j = 0; j < n; ++j) {
          double acc = 0;
          for (int64_t d = 0; d < dk; ++d) {
            double q = qkv[size_t(i * H * P + h * P + d)], k = qkv[size_t(j * H * P + h * P + dk + d)];
            acc += (q + U[size_t(h * dk + d)]) * k + (q + V[size_t(h * dk + d)]) * pos(h, j - i, d);
          }
          sc[size_t(j)] = acc / std::sqrt(double(dk));
          m = std::max(m, sc[size_t(j)]);
        }
        for (double& e : sc) z += (e = std::exp(e - m));
        for (int64_t j = 0; j < n; ++j)
          for (int64_t c = 0; c < dv; ++c)
            merged[size_t(h * dv + c)] += sc[size_t(j)] / z * qkv[size_t(j * H * P + h * P + 2 * dk + c)];
      }
      auto y = proj(merged);
      for (int64_t o = 0; o < O; ++o) result[size_t((b * T + i) * O + o)] = y[size_t(o)];
    }
  }
  return result;
}

}  // namespace

TEST_CASE("RelPosSelfAttention matches ESPnet-style relative-position attention (PyTorch)", "[attention]") {
  SafeTensors f = SafeTensors::open(
      (std::filesystem::path(__FILE__).parent_path() / "golden" / "rel_pos_self_attention.safetensors").string());
  Dim batch(3, "batch"), e(8, "model"), kt(8, "kt"), vt(8, "vt");
  Dim time(f.load("lengths", {batch}, DType::i32), "time");
  Generator gen(0);
  nn::RelPosSelfAttentionOptions o;
  o.att_dropout = 0;
  nn::RelPosSelfAttention att(e, e.copy("out"), kt, vt, 2, gen, o);
  LoadReport rep = nn::load_state(att, f, /*strict=*/false);
  CHECK(rep.missing.empty());
  CHECK(nn::named_parameters(att).size() == 7);
  nn::eval(att);
  Tensor y = att(f.load("x", {batch, time, e}), time);
  Dim out = att.proj->out_dim;
  CHECK_VEC_APPROX(valid(y, {batch, time, out}, time),
                   valid(f.load("out", {batch, time, e}).with_feature_dim(std::nullopt), {batch, time, e}, time), 1e-5,
                   1e-5);
}

TEST_CASE("RelPosSelfAttention equals a direct O(T^2) loop (Transformer-XL and Shaw settings)", "[attention]") {
  Setup s;
  for (bool learned : {false, true}) {
    INFO((learned ? "Shaw 2018" : "Transformer-XL"));
    Generator gen(learned ? 2 : 1);
    nn::RelPosSelfAttention att(s.model, s.out, s.kt, s.vt, 2, gen, learned ? shaw() : transformer_xl());
    randomize_biases(att, gen);
    CHECK(bool(att.learned_pos_emb) == learned);
    CHECK(bool(att.linear_pos) != learned);
    Tensor x = rnd({s.time, s.model, s.batch}, 3, DType::f64);
    CHECK_VEC_APPROX(valid(att(x, s.time), {s.batch, s.time, s.out}, s.time), naive(att, s, x, false), 1e-9, 1e-9);
    // The causal variant with the same parameters (same seed), whole sequence.
    Generator gen2(learned ? 2 : 1);
    nn::RelPosCausalSelfAttention causal(s.model, s.out, s.kt, s.vt, 2, gen2, learned ? shaw() : transformer_xl());
    randomize_biases(causal, gen2);
    CHECK(causal.qkv.weight.to_vector<double>({causal.qkv_dim, s.model}) ==
          att.qkv.weight.to_vector<double>({att.qkv_dim, s.model}));
    auto [yc, st] = causal(x, s.time, causal.default_initial_state({s.batch}));
    CHECK_VEC_APPROX(valid(yc, {s.batch, s.time, s.out}, s.time), naive(att, s, x, true), 1e-9, 1e-9);
  }
}

TEST_CASE("RelPosCausalSelfAttention: whole sequence == step by step == two chunks with state", "[attention]") {
  Setup s;
  for (bool learned : {false, true}) {
    INFO((learned ? "Shaw 2018" : "Transformer-XL"));
    Generator gen(4);
    nn::RelPosCausalSelfAttention att(s.model, s.out, s.kt, s.vt, 2, gen, learned ? shaw(DType::f32) : transformer_xl(DType::f32));
    randomize_biases(att, gen);
    check_decoding_invariants(att, s.batch, s.time, s.out, rnd({s.batch, s.time, s.model}, 5), 2e-6);
  }
}

TEST_CASE("RelPosSelfAttention: each sequence of a padded batch equals that sequence alone", "[attention]") {
  Setup s;
  Generator gen(6);
  nn::RelPosSelfAttention att(s.model, s.out, s.kt, s.vt, 2, gen, transformer_xl(DType::f32));
  randomize_biases(att, gen);
  Tensor x = rnd({s.batch, s.time, s.model}, 7);
  auto full = valid(att(x, s.time), {s.batch, s.time, s.out}, s.time);
  const std::vector<int32_t> lens = s.time.lengths().to_vector<int32_t>();
  for (int64_t b = 0; b < 3; ++b) {
    Dim t(lens[size_t(b)], "t");
    Tensor xb = slice(gather(x, Tensor::scalar(double(b), DType::i32).with_sparse_dim(s.batch), s.batch), s.time, 0,
                      lens[size_t(b)], 1, t).first;
    auto alone = att(xb, t).to_vector<double>({t, s.out});
    for (int64_t i = 0; i < lens[size_t(b)]; ++i)
      for (int64_t c = 0; c < 5; ++c)
        CHECK(alone[size_t(i * 5 + c)] == Approx(full[size_t((b * s.time.extent() + i) * 5 + c)]).margin(1e-6));
  }
}

TEST_CASE("RelPosSelfAttention: parameter gradients match float64 finite differences", "[attention]") {
  Setup s;
  for (bool learned : {false, true}) {
    INFO((learned ? "Shaw 2018" : "Transformer-XL"));
    Generator gen(8);
    nn::RelPosCausalSelfAttention att(s.model, s.out, s.kt, s.vt, 2, gen, learned ? shaw() : transformer_xl());
    randomize_biases(att, gen);
    Tensor x = rnd({s.batch, s.time, s.model}, 9, DType::f64), w = rnd({s.batch, s.time, s.out}, 10, DType::f64);
    check_param_grads(att, [&] {
      Tensor y = att(x, s.time, att.default_initial_state({s.batch})).first;
      Tensor y2 = static_cast<const nn::RelPosSelfAttention&>(att)(x, s.time);
      return reduce_sum(copy_masked(y + y2, {s.time}) * w, {s.batch, s.time, s.out});
    });
  }
}

TEST_CASE("relative encodings: learned (clipped, causal, full matrix) and single-step sinusoids", "[attention]") {
  Dim f(4, "f"), q(3, "q"), kv(5, "kv");
  Generator gen(9);
  nn::LearnedRelativePositionalEncoding enc(f, gen, 2);
  CHECK(enc.clipped_dim.size() == 5);
  auto table = enc.pos_emb.to_vector<double>({enc.clipped_dim, f});
  auto row = [&](int64_t r, int64_t lo, int64_t hi) { return std::clamp<int64_t>(r, lo, hi) + 2; };
  auto [p, rel] = enc(q, kv, 1);
  CHECK(rel.size() == 3 - 1 + 5);
  CHECK(rel == nn::relative_positional_encoding(q, kv, f, 1).second);
  auto pv = p.to_vector<double>({rel, f});
  for (int64_t i = 0; i < rel.size(); ++i)
    for (int64_t c = 0; c < 4; ++c)
      CHECK(pv[size_t(i * 4 + c)] == table[size_t(row(i - 2 - 1, -2, 2) * 4 + c)]);
  auto m = enc.full_matrix(q, kv, 1).to_vector<double>({q, kv, f});
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 5; ++j)
      for (int64_t c = 0; c < 4; ++c)
        CHECK(m[size_t((i * 5 + j) * 4 + c)] == table[size_t(row(j - i - 1, -2, 2) * 4 + c)]);
  nn::LearnedRelativePositionalEncoding causal(f, gen, 2, /*causal=*/true);
  CHECK(causal.clipped_dim.size() == 3);
  auto ct = causal.pos_emb.to_vector<double>({causal.clipped_dim, f});
  auto cm = causal.full_matrix(q, kv).to_vector<double>({q, kv, f});
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 5; ++j)
      CHECK(cm[size_t((i * 5 + j) * 4)] == ct[size_t(row(j - i, -2, 0) * 4)]);
  CHECK_THROWS_WITH(enc.full_matrix(q, q), Catch::Contains("full_matrix"));

  // Single step: key j of a sequence of length len sits at r = j - (len - 1).
  Dim batch(2, "batch");
  Dim keys = dynamic_dim(batch, {4, 2}, "keys");
  auto st = nn::relative_positional_encoding_step(keys, f, DType::f64).to_vector<double>({batch, keys, f});
  const int32_t lens[2] = {4, 2};
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t j = 0; j < lens[b]; ++j)
      for (int64_t k = 0; k < 2; ++k) {
        double r = double(j - (lens[b] - 1)), w = std::pow(1e4, -2.0 * double(k) / 4.0);
        CHECK(st[size_t((b * 4 + j) * 4 + k)] == Approx(std::sin(r * w)).margin(1e-12));
        CHECK(st[size_t((b * 4 + j) * 4 + 2 + k)] == Approx(std::cos(r * w)).margin(1e-12));
      }
}

// CausalSelfAttention with its state (whole sequence == step by step == chunks, padding
// invariance, gradients) and CrossAttention (torch golden, reuse of the encoder state).
#include <dimx/nn.h>

#include <filesystem>

#include "module_check.h"

using namespace dimx;
using namespace dimx_test;

namespace {

std::string golden(const char* name) {
  return (std::filesystem::path(__FILE__).parent_path() / "golden" / name).string();
}

struct Setup {
  Dim batch{3, "batch"};
  Dim time = dynamic_dim(batch, {5, 2, 4}, "time");
  Dim model{6, "model"}, kt{4, "kt"}, vt{6, "vt"}, out{5, "out"};
};

}  // namespace

TEST_CASE("CausalSelfAttention: whole sequence == step by step == two chunks with state", "[attention]") {
  Setup s;
  Generator gen(1);
  nn::CausalSelfAttention att(s.model, s.out, s.kt, s.vt, 2, gen, true, 0.0);
  check_decoding_invariants(att, s.batch, s.time, s.out, rnd({s.batch, s.time, s.model}, 2), 2e-6);
}

TEST_CASE("CausalSelfAttention: the whole sequence is causal dot_attention, per sequence alone", "[attention]") {
  Setup s;
  Generator gen(2);
  nn::CausalSelfAttention att(s.model, s.out, s.kt, s.vt, 2, gen, true, 0.0);
  Tensor x = rnd({s.time, s.batch, s.model}, 3);
  auto [y, st] = att(x, s.time, att.default_initial_state({s.batch}));
  // The same parameters through SelfAttention's pieces with the causal option.
  auto [q, k, v] = att.qkv_heads(x);
  nn::DotAttentionOptions o;
  o.causal_query_dim = s.time;
  Tensor want = att.merge_heads(nn::dot_attention(q, k, v, att.key_dim_per_head, s.time, o));
  CHECK_VEC_APPROX(valid(y, {s.batch, s.time, s.out}, s.time), valid(want, {s.batch, s.time, s.out}, s.time), 1e-6,
                   1e-6);
  // Each sequence alone gives its frames of the padded batch.
  const std::vector<int32_t> lens = s.time.lengths().to_vector<int32_t>();
  auto full = valid(y, {s.batch, s.time, s.out}, s.time);
  for (int64_t b = 0; b < 3; ++b) {
    Dim t(lens[size_t(b)], "t"), one(1, "one");
    Tensor xb = slice(gather(x, Tensor::scalar(double(b), DType::i32).with_sparse_dim(s.batch), s.batch), s.time, 0,
                      lens[size_t(b)], 1, t).first;
    auto alone = att(expand_dim(xb, one), t, att.default_initial_state({one})).first.to_vector<double>({one, t, s.out});
    for (int64_t i = 0; i < lens[size_t(b)]; ++i)
      for (int64_t c = 0; c < 5; ++c)
        CHECK(alone[size_t(i * 5 + c)] == Approx(full[size_t((b * s.time.extent() + i) * 5 + c)]).margin(1e-6));
  }
}

TEST_CASE("CausalSelfAttention: parameter gradients through a carried state", "[attention]") {
  Setup s;
  Generator gen(4);
  nn::CausalSelfAttention att(s.model, s.out, s.kt, s.vt, 2, gen, true, 0.0, false, DType::f64);
  {
    NoGradGuard ng;
    att.qkv.bias->copy_from(random_uniform(att.qkv.bias->dims(), gen, -0.5, 0.5, DType::f64));
  }
  Tensor x = rnd({s.batch, s.time, s.model}, 5, DType::f64);
  auto [x1, t1] = slice(x, s.time, 0, 3);
  auto [x2, t2] = slice(x, s.time, 3);
  Tensor w1 = rnd({s.batch, t1, s.out}, 6, DType::f64), w2 = rnd({s.batch, t2, s.out}, 7, DType::f64);
  // The second chunk's loss reaches the parameters through the first chunk's keys and values.
  check_param_grads(att, [&] {
    auto [y1, st] = att(x1, t1, att.default_initial_state({s.batch}));
    Tensor y2 = att(x2, t2, st).first;
    return reduce_sum(copy_masked(y1, {t1}) * w1, {s.batch, t1, s.out}) +
           reduce_sum(copy_masked(y2, {t2}) * w2, {s.batch, t2, s.out});
  });
}

TEST_CASE("CausalSelfAttention: bad states and inputs name the op and the Dims", "[attention]") {
  Setup s;
  Generator gen(5);
  nn::CausalSelfAttention att(s.model, std::nullopt, s.kt, s.vt, 2, gen);
  Tensor x = rnd({s.batch, s.time, s.model}, 8);
  auto st = att.default_initial_state({s.batch});
  CHECK(st.accum_axis.extent() == 0);
  CHECK_THROWS_WITH(att(x, s.out, st), Catch::Contains("CausalSelfAttention") && Catch::Contains("out:5"));
  nn::CausalSelfAttentionState bad{st.k_accum, st.v_accum, s.time};
  CHECK_THROWS_WITH(att(frame(x, s.time, 0), nn::single_step_dim(), bad),
                    Catch::Contains("CausalSelfAttention") && Catch::Contains("time"));
  CHECK_THROWS_WITH(att.default_initial_state({s.time}), Catch::Contains("static"));
}

TEST_CASE("CrossAttention matches torch.nn.MultiheadAttention (kdim != embed_dim)", "[attention]") {
  SafeTensors f = SafeTensors::open(golden("cross_attention.safetensors"));
  Dim batch(3, "batch"), e(8, "model"), enc_dim(6, "enc"), kt(8, "kt"), vt(8, "vt"), dec(4, "dec");
  Dim enc_time(f.load("lengths", {batch}, DType::i32), "enc_time");
  Generator gen(0);
  nn::CrossAttention att(enc_dim, e, e.copy("out"), kt, vt, 2, gen, true, 0.0);
  nn::load_state(att, f, /*strict=*/false);
  nn::eval(att);
  Tensor x = f.load("x", {batch, dec, e}), enc = f.load("encoder", {batch, enc_time, enc_dim});
  nn::CrossAttentionState state = att.transform_encoder(enc, enc_time);
  Tensor y = att(x, state);
  Dim out = att.proj->out_dim;
  CHECK_VEC_APPROX(y.to_vector<double>({batch, dec, out}), f.load("out", {batch, dec, e}).to_vector<double>(), 1e-5,
                   1e-5);
  // Decoding one query at a time reuses the state and gives the same rows.
  for (int64_t t = 0; t < 4; ++t) {
    Tensor yt = att(frame(x, dec, t), state);
    auto want = gather(y, Tensor::scalar(double(t), DType::i32).with_sparse_dim(dec), dec).to_vector<double>({batch, out});
    CHECK_VEC_APPROX(yt.to_vector<double>({batch, out}), want, 1e-6, 1e-6);
  }
  CHECK_THROWS_WITH(att(enc, state), Catch::Contains("CrossAttention"));
  CHECK_THROWS_WITH(att.transform_encoder(x, dec), Catch::Contains("enc:6"));
}

TEST_CASE("CrossAttention: parameter gradients match float64 finite differences", "[attention]") {
  Setup s;
  Dim enc_dim(3, "enc"), dec(2, "dec");
  Generator gen(6);
  nn::CrossAttention att(enc_dim, s.model, s.out, s.kt, s.vt, 2, gen, true, 0.0, false, DType::f64);
  {
    NoGradGuard ng;
    att.query.bias->copy_from(random_uniform(att.query.bias->dims(), gen, -0.5, 0.5, DType::f64));
    att.key_value.bias->copy_from(random_uniform(att.key_value.bias->dims(), gen, -0.5, 0.5, DType::f64));
  }
  Tensor enc = rnd({s.batch, s.time, enc_dim}, 9, DType::f64), x = rnd({s.batch, dec, s.model}, 10, DType::f64);
  Tensor w = rnd({s.batch, dec, s.out}, 11, DType::f64);
  check_param_grads(att, [&] { return reduce_sum(att(x, att.transform_encoder(enc, s.time)) * w, {s.batch, dec, s.out}); });
}

TEST_CASE("attention_weights: the weights the modules attend with, causal or not", "[attention]") {
  Dim batch(2, "batch"), e(8, "model"), kt(8, "kt"), vt(8, "vt");
  Dim time = dynamic_dim(batch, {5, 3}, "time");
  Generator gen(4);
  Tensor x = random_normal({batch, time, e}, gen);
  nn::CausalSelfAttention att(e, e, kt, vt, 2, gen, true, 0.0);
  nn::RelPosSelfAttentionOptions ro;
  ro.att_dropout = 0;
  nn::RelPosCausalSelfAttention rel(e, e, kt, vt, 2, gen, ro);
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    auto [w, keys] = att.attention_weights(x, time, causal);
    // Each valid query's weights sum to 1; causal: nothing on later keys.
    Tensor sums = copy_masked(reduce_sum(w, {keys}), {time});
    for (double s : sums.to_vector<double>(sums.dims())) CHECK((s == Approx(1.0).epsilon(1e-5) || s == 0.0));
    if (causal) {
      auto v = w.to_vector<double>({batch, att.heads, time, keys});
      for (int64_t q = 0; q < 5; ++q)
        for (int64_t k = q + 1; k < 5; ++k) CHECK(v[size_t(q * 5 + k)] == 0.0);  // batch 0, head 0
    }
  }
  // Against the modules' own outputs on the whole sequence (causal).
  auto [w, keys] = att.attention_weights(x, time, true);
  auto [q_, k_, vv] = att.qkv_heads(x);
  Dim kv = time.copy("kv_for_test");
  Tensor vkeys = replace_dim(replace_dim(vv, time, kv).first, kv, keys).first;
  Tensor mine = copy_masked(att.merge_heads(matmul(w, vkeys, {keys})), {time});
  Tensor theirs = copy_masked(att(x, time, att.default_initial_state({batch})).first, {time});
  CHECK_VEC_APPROX(mine.to_vector<double>({batch, time, e}), theirs.to_vector<double>({batch, time, e}), 1e-5, 1e-6);
  auto [wr, keys_r] = rel.attention_weights(x, time, true);
  Tensor sums = copy_masked(reduce_sum(wr, {keys_r}), {time});
  for (double s : sums.to_vector<double>(sums.dims())) CHECK((s == Approx(1.0).epsilon(1e-5) || s == 0.0));
  auto vr = wr.to_vector<double>({batch, rel.heads, time, keys_r});
  for (int64_t q = 0; q < 5; ++q)
    for (int64_t k = q + 1; k < 5; ++k) CHECK(vr[size_t(q * 5 + k)] == 0.0);
}

// nn::beats::MultiheadAttention against the PyTorch reference written from the spec
// (tests/reference/beats_reference.py, golden files tests/golden/beats_*.safetensors), float64
// finite differences for every parameter and input, incremental decoding against the full
// forward, padding invariance and errors.
#include <dimx/io.h>
#include <dimx/nn/beats.h>

#include <filesystem>
#include <map>

#include "module_check.h"

using namespace dimx;
using namespace dimx_test;
namespace beats = dimx::nn::beats;
using Catch::Contains;

namespace {

constexpr double kInfD = std::numeric_limits<double>::infinity();

// One golden case: the module built from the file's flags with the file's weights, and the
// file's tensors over Dims (time-first as fairseq: query [T, B, E], key [S, B, kdim]).
struct Golden : GoldenFile {
  Dim batch, time, src, embed;
  std::optional<Dim> kdim, vdim;
  std::optional<beats::MultiheadAttention> m;

  explicit Golden(const std::string& name, DType dtype = DType::f32)
      : GoldenFile("beats_" + name),
        batch(std::stoll(meta.at("B")), "batch"),
        time(std::stoll(meta.at("T")), "time"),
        src(std::stoll(meta.at("S")), "src"),
        embed(std::stoll(meta.at("embed_dim")), "embed") {
    beats::Options o;
    o.self_attention = flag("self_attention");
    o.encoder_decoder_attention = flag("encoder_decoder_attention");
    if (!o.self_attention) {
      kdim = Dim(std::stoll(meta.at("kdim")), "kdim");
      vdim = o.encoder_decoder_attention || meta.at("vdim") == meta.at("kdim") ? *kdim : Dim(std::stoll(meta.at("vdim")), "vdim");
      o.kdim = kdim;
      o.vdim = vdim;
    }
    o.bias = flag("bias");
    o.add_bias_kv = flag("add_bias_kv");
    o.add_zero_attn = flag("add_zero_attn");
    o.q_noise = std::stod(meta.at("q_noise"));
    o.qn_block_size = std::stoll(meta.at("qn_block_size"));
    o.has_relative_attention_bias = flag("has_relative_attention_bias");
    o.num_buckets = std::stoll(meta.at("num_buckets"));
    o.max_distance = std::stoll(meta.at("max_distance"));
    o.gru_rel_pos = flag("gru_rel_pos");
    o.rescale_init = flag("rescale_init");
    o.dtype = dtype;
    Generator gen(1);
    m.emplace(embed, std::stoll(meta.at("num_heads")), gen, o);
    nn::eval(*m);
    load_module(*m);
  }
  std::vector<int32_t> lengths() const { return GoldenFile::lengths(batch); }
  // The key Dim of the keys as the file stores them: the query's time for self-attention.
  const Dim& keys_in_file() const { return flag("self_attention") ? time : src; }
};

// The module's inputs from a golden file. With `as_lengths` the key padding is the key Dim's
// own lengths; otherwise the bool key_padding_mask is passed (both must agree).
beats::Inputs inputs_of(const Golden& g, bool as_lengths, Dim& key_axis, DType dt = DType::f32) {
  beats::Inputs in;
  const bool self = g.flag("self_attention");
  key_axis = g.keys_in_file();
  if (g.has("io.lengths") && as_lengths && !self) key_axis = dynamic_dim(g.batch, g.lengths(), "src_len");
  if (!self) {
    in.key = g.get("io.key", {key_axis, g.batch, *g.kdim}, dt);
    in.key_axis = key_axis;
    if (g.has("io.value")) in.value = g.get("io.value", {key_axis, g.batch, *g.vdim}, dt);
  }
  if (g.has("io.key_padding_mask") && !(as_lengths && !self))
    in.key_padding_mask = g.get("io.key_padding_mask", {g.batch, g.keys_in_file()}, DType::i64) > 0.0;
  if (g.has("io.attn_mask")) {
    Dim cols(g.keys_in_file().extent(), "mask_cols");
    in.attn_mask = g.get("io.attn_mask", {g.time, cols}, dt);
  }
  return in;
}

// Weights over dimx's key Dim (each sequence's valid keys, then the extra bias/zero keys, then
// padding) in the file's column order [keys.., extras..] with S columns of real keys.
std::vector<double> unpack_weights(const Tensor& w, const Dims& lead, const Dim& query, const Dim& keys, int64_t S,
                                   int64_t extra, const std::vector<int32_t>& lens, const Dim& batch) {
  Dims order = lead;
  order.insert(order.end(), {query, keys});
  const std::vector<double> v = copy_masked(w, {keys}).to_vector<double>(order);
  const int64_t K = keys.extent(), T = query.extent(), cols = S + extra;
  int64_t rows = 1;
  for (const Dim& d : lead) rows *= d.extent();
  std::vector<double> out(size_t(rows * T * cols), 0.0);
  const size_t bpos = size_t(std::find(lead.begin(), lead.end(), batch) - lead.begin());
  for (int64_t r = 0; r < rows; ++r) {
    // the batch index of lead row r
    int64_t rem = r, b = 0;
    for (size_t i = lead.size(); i-- > 0;) {
      const int64_t e = lead[i].extent();
      if (i == bpos) b = rem % e;
      rem /= e;
    }
    const int64_t L = lens.empty() ? S : lens[size_t(b)];
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < std::min<int64_t>(K, L + extra); ++j) {
        const int64_t col = j < L ? j : S + (j - L);
        out[size_t((r * T + t) * cols + col)] = v[size_t((r * T + t) * K + j)];
      }
  }
  return out;
}

void check_attn(const Golden& g, const beats::Output& out, const std::string& key = "io.attn", double tol = 1e-5) {
  INFO(key);
  CHECK_VEC_APPROX(out.attn.to_vector<double>({g.time, g.batch, g.embed}),
                   g.get(key, {g.time, g.batch, g.embed}).to_vector<double>(), tol, tol);
}

int64_t extra_keys(const Golden& g) { return int64_t(g.flag("add_bias_kv")) + int64_t(g.flag("add_zero_attn")); }

// Forward of one golden case both ways (mask and lengths), checked against attn, weights and
// the position bias.
void check_case(const std::string& name) {
  INFO("case " << name);
  Golden g(name);
  for (bool as_lengths : {false, true}) {
    INFO("key padding as " << (as_lengths ? "the key Dim's lengths" : "a bool mask"));
    Dim key_axis = g.time;
    beats::Inputs in = inputs_of(g, as_lengths, key_axis);
    in.need_head_weights = g.flag("need_head_weights");
    beats::Output out = (*g.m)(g.get("io.query", {g.time, g.batch, g.embed}), g.time, in);
    check_attn(g, out);
    const int64_t S = g.keys_in_file().extent();
    std::vector<int32_t> lens = g.has("io.lengths") ? g.lengths() : std::vector<int32_t>{};
    if (in.need_head_weights) {
      CHECK_VEC_APPROX(unpack_weights(out.weights, {g.m->heads, g.batch}, g.time, out.keys, S, extra_keys(g), lens, g.batch),
                       g.get("io.weights", {g.m->heads, g.batch, g.time, Dim(S + extra_keys(g), "cols")}).to_vector<double>(),
                       1e-5, 1e-6);
    } else {
      CHECK_VEC_APPROX(unpack_weights(out.weights, {g.batch}, g.time, out.keys, S, extra_keys(g), lens, g.batch),
                       g.get("io.weights", {g.batch, g.time, Dim(S + extra_keys(g), "cols")}).to_vector<double>(), 1e-5,
                       1e-6);
    }
    if (g.has("io.position_bias") && !g.has("io.position_bias_in")) {
      REQUIRE(out.position_bias.defined());
      Dim cols(S, "cols");
      Tensor want = g.get("io.position_bias", {g.m->heads, g.time, cols});
      Tensor got = out.position_bias;
      Dim bias_keys = got.dims()[0];
      for (const Dim& d : got.dims())
        if (d != g.m->heads && d != g.time) bias_keys = d;
      // Only the columns dimx has (the key Dim ends at the longest sequence).
      auto w = want.to_vector<double>();
      auto gv = got.to_vector<double>({g.m->heads, g.time, bias_keys});
      const int64_t K = bias_keys.extent();
      for (int64_t h = 0; h < g.m->heads.size(); ++h)
        for (int64_t t = 0; t < g.time.extent(); ++t)
          for (int64_t j = 0; j < K; ++j) {
            INFO("bias h " << h << " t " << t << " j " << j);
            CHECK(gv[size_t((h * g.time.extent() + t) * K + j)] ==
                  Approx(w[size_t((h * g.time.extent() + t) * S + j)]).margin(1e-6));
          }
    }
  }
}

}  // namespace

TEST_CASE("beats: relative_position_bucket matches the spec's check values and the reference tables", "[beats]") {
  Dim n(10, "n");
  Tensor rel = Tensor::from_vector<int64_t>({n}, std::vector<int64_t>{-1, 0, 1, 79, 80, 100, 799, 5000, -800, -5000});
  CHECK(beats::relative_position_bucket(rel, 320, 800).to_vector<int64_t>() ==
        std::vector<int64_t>{1, 0, 161, 239, 240, 247, 319, 319, 159, 159});
  const GoldenFile buckets("beats_buckets");
  const SafeTensors& f = buckets.file;
  Dim r(1611, "rel"), rs(321, "rel_small");
  Tensor rel_big = f.load("io.rel", {r});
  CHECK(beats::relative_position_bucket(rel_big, 320, 800).to_vector<int64_t>() ==
        f.load("io.bucket_320_800", {r}, DType::i64).to_vector<int64_t>());
  Tensor rel_small = f.load("io.rel_small", {rs});
  CHECK(beats::relative_position_bucket(rel_small, 32, 128).to_vector<int64_t>() ==
        f.load("io.bucket_32_128", {rs}, DType::i64).to_vector<int64_t>());
  CHECK(beats::relative_position_bucket(rel_small, 12, 16).to_vector<int64_t>() ==
        f.load("io.bucket_12_16", {rs}, DType::i64).to_vector<int64_t>());
  CHECK_THROWS_WITH(beats::relative_position_bucket(rel, 2, 8), Contains("num_buckets"));
  CHECK_THROWS_WITH(beats::relative_position_bucket(rel.astype(DType::f32), 32, 128), Contains("integer"));
}

TEST_CASE("beats: golden files, every flag combination, mask or lengths", "[beats][golden]") {
  for (const char* name : {"self", "cross_kdim_vdim", "encdec", "add_bias_kv", "add_zero_attn", "relbias", "relbias_gru",
                           "masks", "head_weights", "rescale_init", "nobias", "relbias_zero_attn", "all_extras",
                           "fully_padded", "qnoise_eval"})
    check_case(name);
}

TEST_CASE("beats: a passed position_bias, with and without batch Dims, is gated and returned as passed", "[beats][golden]") {
  Golden g("position_bias_given");
  Dim key_axis = g.time;
  Dim cols(g.time.extent(), "cols");
  for (bool batched : {false, true}) {
    INFO("batched " << batched);
    beats::Inputs in = inputs_of(g, false, key_axis);
    in.position_bias = batched ? g.get("io.position_bias_in_batched", {g.batch, g.m->heads, g.time, cols})
                               : g.get("io.position_bias_in", {g.m->heads, g.time, cols});
    beats::Output out = (*g.m)(g.get("io.query", {g.time, g.batch, g.embed}), g.time, in);
    check_attn(g, out, batched ? "io.attn_batched" : "io.attn");
    CHECK(out.position_bias.has_dim(g.m->heads));
    CHECK(out.position_bias.has_dim(g.time));
    CHECK(out.position_bias.has_dim(g.batch) == batched);
  }
}

TEST_CASE("beats: before_softmax returns the shifted, masked scores and the values", "[beats][golden]") {
  Golden g("before_softmax");
  for (bool as_lengths : {false, true}) {
    Dim key_axis = g.time;
    beats::Inputs in = inputs_of(g, as_lengths, key_axis);
    in.before_softmax = true;
    beats::Output out = (*g.m)(g.get("io.query", {g.time, g.batch, g.embed}), g.time, in);
    CHECK(!out.attn.defined());
    const auto lens = g.lengths();
    const int64_t S = g.src.extent(), T = g.time.extent(), H = g.m->heads.size(), K = out.keys.extent();
    auto want = g.get("io.w", {g.batch, g.m->heads, g.time, Dim(S, "cols")}).to_vector<double>();
    auto got = out.w.to_vector<double>({g.batch, g.m->heads, g.time, out.keys});
    auto vw = g.get("io.v", {g.batch, g.m->heads, Dim(S, "cols2"), g.m->head_dim}).to_vector<double>();
    auto vg = out.v.to_vector<double>({g.batch, g.m->heads, out.keys, g.m->head_dim});
    const int64_t d = g.m->head_dim.size();
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t t = 0; t < T; ++t) {
          // The shift is the row max over the visible keys in dimx (the padding rule); compare
          // the scores relative to their own row max.
          double mw = -kInfD, mg = -kInfD;
          for (int64_t j = 0; j < lens[size_t(b)]; ++j) {
            mw = std::max(mw, want[size_t(((b * H + h) * T + t) * S + j)]);
            mg = std::max(mg, got[size_t(((b * H + h) * T + t) * K + j)]);
          }
          for (int64_t j = 0; j < S; ++j) {
            INFO("b " << b << " h " << h << " t " << t << " j " << j);
            const double w = want[size_t(((b * H + h) * T + t) * S + j)];
            if (j >= lens[size_t(b)]) {
              CHECK(w == -kInfD);
              if (j < K) CHECK(got[size_t(((b * H + h) * T + t) * K + j)] == -kInfD);
              continue;
            }
            const double gj = got[size_t(((b * H + h) * T + t) * K + j)];
            if (w == -kInfD) CHECK(gj == -kInfD);
            else CHECK(gj - mg == Approx(w - mw).margin(1e-4));
          }
        }
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t j = 0; j < lens[size_t(b)]; ++j)
          for (int64_t c = 0; c < d; ++c)
            CHECK(vg[size_t(((b * H + h) * K + j) * d + c)] == Approx(vw[size_t(((b * H + h) * S + j) * d + c)]).margin(1e-6));
  }
}

TEST_CASE("beats: a state_dict saved from torch loads strictly, and saves back under the same names", "[beats][io]") {
  Golden g("all_extras");
  const std::string path = (std::filesystem::temp_directory_path() / "dimx_beats_state.safetensors").string();
  std::vector<std::pair<std::string, Tensor>> params;
  for (const auto& k : g.file.keys())
    if (k.rfind("io.", 0) != 0) params.push_back({k, g.file.load(k)});
  save_safetensors(path, params);
  beats::Options o = g.m->options;
  Generator gen(9);
  beats::MultiheadAttention fresh(g.embed, 4, gen, o);
  LoadReport rep = nn::load_state(fresh, path, /*strict=*/true);
  CHECK(rep.loaded.size() == params.size());
  for (auto& [name, t] : nn::named_parameters(fresh)) {
    INFO(name);
    CHECK(t->to_vector<float>() == g.file.load(name).to_vector<float>());
  }
  std::filesystem::remove(path);
}

TEST_CASE("beats: every parameter and input gradient matches float64 finite differences", "[beats][grad]") {
  Golden g("all_extras", DType::f64);
  Dim key_axis = g.time;
  beats::Inputs in = inputs_of(g, true, key_axis, DType::f64);
  Tensor q = g.get("io.query", {g.time, g.batch, g.embed}, DType::f64);
  Tensor r = rnd({g.time, g.batch, g.embed}, 5, DType::f64);
  auto loss = [&]() {
    beats::Output out = (*g.m)(q, g.time, in);
    return reduce_sum(out.attn * r, {g.time, g.batch, g.embed});
  };
  check_param_grads(*g.m, loss, 3);
  // Inputs: the query, key and value.
  Tensor qv = q.with_requires_grad(), kv = in.key.with_requires_grad(), vv = in.value.with_requires_grad();
  beats::Inputs in2 = in;
  in2.key = kv;
  in2.value = vv;
  auto l2 = [&](const Tensor& qq, const beats::Inputs& ii) {
    return reduce_sum(copy_masked((*g.m)(qq, g.time, ii).attn, {}) * r, {g.time, g.batch, g.embed});
  };
  std::vector<Tensor> grads = grad(l2(qv, in2), {qv, kv, vv});
  const Tensor* xs[] = {&q, &in.key, &in.value};
  for (int which = 0; which < 3; ++which) {
    INFO("input " << which);
    const Tensor& x = *xs[which];
    auto base = x.to_vector<double>(x.dims());
    auto an = grads[size_t(which)].to_vector<double>(x.dims());
    for (size_t j = 0; j < base.size(); j += 7) {
      auto at = [&](double delta) {
        std::vector<double> v = base;
        v[j] += delta;
        Tensor xp = Tensor::from_vector<double>(x.dims(), v);
        beats::Inputs ii = in;
        NoGradGuard ng;
        if (which == 0) return l2(xp, ii).item<double>();
        (which == 1 ? ii.key : ii.value) = xp;
        return l2(q, ii).item<double>();
      };
      CHECK(an[j] == Approx((at(1e-6) - at(-1e-6)) / 2e-6).epsilon(1e-6).margin(1e-7));
    }
  }
}

TEST_CASE("beats: gradients with relative bias, gate, attn_mask, self-attention and padding (float64)", "[beats][grad]") {
  Golden g("relbias_gru", DType::f64);
  Dim key_axis = g.time;
  Dim time = dynamic_dim(g.batch, g.lengths(), "time");
  beats::Inputs in;
  Tensor q = g.get("io.query", {time, g.batch, g.embed}, DType::f64);
  Dim cols(g.time.extent(), "cols");
  in.attn_mask = rnd({time, cols}, 4, DType::f64);
  Tensor r = rnd({time, g.batch, g.embed}, 6, DType::f64);
  auto loss = [&]() {
    return reduce_sum(copy_masked((*g.m)(q, time, in).attn, {time}) * r, {time, g.batch, g.embed});
  };
  check_param_grads(*g.m, loss, 2);
}

TEST_CASE("beats: decoding step by step and in chunks equals the full causal forward", "[beats][decoding]") {
  for (const char* name : {"incremental", "incremental_relbias"}) {
    INFO(name);
    Golden g(name);
    const auto lens = g.lengths();
    Dim time = dynamic_dim(g.batch, lens, "time");
    Tensor x = g.get("io.query", {time, g.batch, g.embed});
    beats::Inputs full_in;
    full_in.causal = true;
    beats::Output full = (*g.m)(x, time, full_in);
    // The full causal forward equals the reference (which masks causally with attn_mask).
    auto want = g.get("io.attn", {g.time, g.batch, g.embed}).to_vector<double>();
    auto got = copy_masked(full.attn, {time}).to_vector<double>({time, g.batch, g.embed});
    const int64_t T = time.extent(), B = g.batch.size(), E = g.embed.size();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b < B; ++b)
        if (t < lens[size_t(b)])
          for (int64_t e = 0; e < E; ++e) {
            INFO("t " << t << " b " << b);
            CHECK(got[size_t((t * B + b) * E + e)] == Approx(want[size_t((t * B + b) * E + e)]).margin(1e-5));
          }
    // One step at a time.
    auto expect = [&](int64_t t, int64_t b, int64_t e) { return got[size_t((t * B + b) * E + e)]; };
    {
      std::optional<beats::State> st = g.m->initial_state({g.batch});
      for (int64_t t = 0; t < T; ++t) {
        Tensor xt = frame(x, time, t);
        beats::Inputs in;
        in.incremental_state = st;
        in.causal = true;
        beats::Output o = (*g.m)(xt, nn::single_step_dim(), in);
        st = o.state;
        auto y = o.attn.to_vector<double>({g.batch, g.embed});
        for (int64_t b = 0; b < B; ++b)
          if (t < lens[size_t(b)])
            for (int64_t e = 0; e < E; ++e) {
              INFO("step " << t << " b " << b);
              CHECK(y[size_t(b * E + e)] == Approx(expect(t, b, e)).margin(1e-5));
            }
      }
    }
    // One step at a time for the sequences still running (nn::decoding_step): a finished
    // sequence takes no step, and its history keeps its length.
    {
      std::optional<beats::State> st = g.m->initial_state({g.batch});
      for (int64_t t = 0; t < T; ++t) {
        const Tensor active = less(Tensor::scalar(double(t), DType::i32), time.lengths(), true);
        const Dim step = nn::decoding_step(active);
        beats::Inputs in;
        in.incremental_state = st;
        in.causal = true;
        beats::Output o = (*g.m)(expand_dim(frame(x, time, t), step), step, in);
        st = o.state;
        auto y = reduce_sum(o.attn, {step}).to_vector<double>({g.batch, g.embed});
        for (int64_t b = 0; b < B; ++b)
          for (int64_t e = 0; e < E; ++e) {
            INFO("active step " << t << " b " << b);
            CHECK(y[size_t(b * E + e)] == Approx(t < lens[size_t(b)] ? expect(t, b, e) : 0.0).margin(1e-5));
          }
      }
      CHECK(st->accum_axis.lengths().to_vector<int32_t>() == lens);
    }
    // Chunks of 2, 1 and 3 frames (the sequences end at different points of a chunk).
    {
      std::optional<beats::State> st = g.m->initial_state({g.batch});
      int64_t start = 0;
      for (int64_t n : {2, 1, 3}) {
        auto [xc, tc] = slice(x, time, start, start + n);
        beats::Inputs in;
        in.incremental_state = st;
        in.causal = true;
        beats::Output o = (*g.m)(xc, tc, in);
        st = o.state;
        auto y = copy_masked(o.attn, {tc}).to_vector<double>({tc, g.batch, g.embed});
        const auto cl = tc.lengths().to_vector<int32_t>();
        for (int64_t i = 0; i < tc.extent(); ++i)
          for (int64_t b = 0; b < B; ++b)
            if (i < cl[size_t(b)])
              for (int64_t e = 0; e < E; ++e) {
                INFO("chunk at " << start << " frame " << i << " b " << b);
                CHECK(y[size_t((i * B + b) * E + e)] == Approx(expect(start + i, b, e)).margin(1e-5));
              }
        start += n;
      }
      CHECK(st->accum_axis.lengths().to_vector<int32_t>() == lens);
    }
  }
}

TEST_CASE("beats: encoder-decoder decoding keeps the encoder's keys with static_kv", "[beats][decoding]") {
  Golden g("incremental_encdec");
  Dim enc = dynamic_dim(g.batch, g.lengths(), "enc");
  Tensor key = g.get("io.key", {enc, g.batch, *g.kdim});
  Tensor x = g.get("io.query", {g.time, g.batch, g.embed});
  auto want = g.get("io.attn", {g.time, g.batch, g.embed}).to_vector<double>();
  const int64_t B = g.batch.size(), E = g.embed.size();
  std::optional<beats::State> st = g.m->initial_state({g.batch});
  for (int64_t t = 0; t < g.time.extent(); ++t) {
    beats::Inputs in;
    in.incremental_state = st;
    in.static_kv = true;
    if (t == 0) {
      in.key = key;
      in.key_axis = enc;
    }
    beats::Output o = (*g.m)(frame(x, g.time, t), nn::single_step_dim(), in);
    st = o.state;
    CHECK(st->accum_axis == enc);
    auto y = o.attn.to_vector<double>({g.batch, g.embed});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t e = 0; e < E; ++e) CHECK(y[size_t(b * E + e)] == Approx(want[size_t((t * B + b) * E + e)]).margin(1e-5));
  }
}

TEST_CASE("beats: a sequence alone equals the same sequence in a padded batch", "[beats][padding]") {
  Golden g("all_extras");
  const auto lens = g.lengths();
  Dim src = dynamic_dim(g.batch, lens, "src_len");
  Dim tq = dynamic_dim(g.batch, {5, 3, 4}, "tq");
  Tensor q = g.get("io.query", {tq, g.batch, g.embed});
  beats::Inputs in;
  in.key = g.get("io.key", {src, g.batch, *g.kdim});
  in.value = g.get("io.value", {src, g.batch, *g.vdim});
  in.key_axis = src;
  Tensor batch_out = copy_masked((*g.m)(q, tq, in).attn, {tq});
  for (int64_t b = 0; b < 3; ++b) {
    INFO("sequence " << b);
    Dim one(1, "one");
    Tensor idx = Tensor::from_vector<int64_t>({one}, std::vector<int64_t>{b}).with_sparse_dim(g.batch);
    Dim ts(lens[size_t(b)], "ts"), qs(std::vector<int>{5, 3, 4}[size_t(b)], "qs");
    auto alone_of = [&](const Tensor& t, const Dim& axis, const Dim& to) {
      return slice(gather(t, idx), axis, 0, to.extent(), 1, to).first;
    };
    beats::Inputs ia;
    ia.key = alone_of(in.key, src, ts);
    ia.value = alone_of(in.value, src, ts);
    ia.key_axis = ts;
    Tensor qa = alone_of(q, tq, qs);
    auto got = (*g.m)(qa, qs, ia).attn.to_vector<double>({qs, one, g.embed});
    auto all = alone_of(batch_out, tq, qs).to_vector<double>({qs, one, g.embed});
    CHECK_VEC_APPROX(got, all, 1e-5, 1e-6);
  }
}

TEST_CASE("beats: training applies dropout and q_noise without touching the stored weights", "[beats]") {
  Generator gen(3);
  Dim e(16, "embed"), t(5, "t"), b(2, "b");
  beats::Options o;
  o.self_attention = true;
  o.q_noise = 0.5;
  o.qn_block_size = 4;
  o.dropout = 0.3;
  beats::MultiheadAttention m(e, 4, gen, o);
  Tensor x = random_tensor({b, t, e}, 3);
  auto before = m.q_proj.weight.to_vector<float>();
  nn::eval(m);
  Tensor y_eval = m(x, t).attn;
  nn::train(m);
  CHECK_THROWS_WITH(m(x, t), Contains("Generator"));
  Generator g1(7), g2(7), g3(8);
  beats::Inputs in;
  in.gen = &g1;
  Tensor y1 = m(x, t, in).attn;
  in.gen = &g2;
  Tensor y2 = m(x, t, in).attn;
  in.gen = &g3;
  Tensor y3 = m(x, t, in).attn;
  CHECK(y1.to_vector<float>() == y2.to_vector<float>());    // same seed, same noise
  CHECK(y1.to_vector<float>() != y3.to_vector<float>());    // another seed, other noise
  CHECK(y1.to_vector<float>() != y_eval.to_vector<float>());
  CHECK(m.q_proj.weight.to_vector<float>() == before);      // never written back
  // The gradient reaches the stored weights through the noise.
  in.gen = &g1;
  Tensor l = reduce_sum(m(x, t, in).attn, {b, t, e});
  CHECK(grad(l, {m.q_proj.weight})[0].defined());
}

TEST_CASE("beats: dropout in training takes the fused primitive and drops what the unfused path drops", "[beats]") {
  // need_weights keeps the unfused path; without it the scores, the gated position bias and
  // the key padding go to the fused primitive, which drops the same weights (same Generator
  // state): the outputs and the gradients agree.
  Generator gen(4);
  Dim e(16, "embed"), b(2, "b");
  Dim t = dynamic_dim(b, {7, 4}, "t");
  beats::Options o;
  o.self_attention = true;
  o.dropout = 0.25;
  o.has_relative_attention_bias = true;
  o.num_buckets = 8;
  o.max_distance = 16;
  o.gru_rel_pos = true;
  beats::MultiheadAttention m(e, 4, gen, o);
  nn::train(m);
  Tensor x = random_tensor({b, t, e}, 5);
  std::vector<std::vector<double>> runs;
  for (bool need_weights : {true, false}) {
    Generator g(9);
    beats::Inputs in;
    in.gen = &g;
    in.need_weights = need_weights;
    nn::reset_attention_path_counts();
    Tensor y = copy_masked(m(x, t, in).attn, {t});
    std::vector<Tensor> grads = grad(reduce_sum(square(y), y.dims()), {m.q_proj.weight, m.k_proj.weight, m.v_proj.weight});
    CHECK(nn::attention_path_counts().fused_forward == (need_weights ? 0 : 1));
    // The fused path reads the T5 table and the gate in place: nothing over {query, key}.
    CHECK(nn::attention_path_counts().relative_bias_gathered == 0);
    std::vector<double> all = y.to_vector<double>({b, t, e});
    for (const Tensor& gr : grads) {
      const std::vector<double> v = gr.to_vector<double>();
      all.insert(all.end(), v.begin(), v.end());
    }
    runs.push_back(all);
  }
  CHECK_VEC_APPROX(runs[1], runs[0], 1e-4, 1e-5);
}

TEST_CASE("beats: the bias in relative form passes between layers and equals the tensor form", "[beats]") {
  // BEATs' encoder: the first layer computes the T5 bias, the next ones get it passed. In
  // relative form (a table over positions, the gate as its row scale) it is read in place;
  // passed as the {heads, query, keys} tensor it is added as a bias. Both give the same
  // outputs and gradients, causal or not; Output::position_bias is formed only when asked.
  // The padded input frames hold NaN (so do the gate's padded rows): nothing valid sees them.
  Generator gen(6);
  Dim e(16, "embed"), b(2, "b"), heads(4, "heads");
  Dim t = dynamic_dim(b, {9, 5}, "t");
  beats::Options first;
  first.self_attention = true;
  first.has_relative_attention_bias = true;
  first.num_buckets = 8;
  first.max_distance = 16;
  first.gru_rel_pos = true;
  first.heads = heads;
  beats::Options next = first;
  next.has_relative_attention_bias = false;
  beats::MultiheadAttention m1(e, 4, gen, first), m2(e, 4, gen, next);
  Tensor x = where(sequence_mask({t}), random_tensor({b, t, e}, 7), std::numeric_limits<double>::quiet_NaN())
                 .with_requires_grad();
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    std::vector<std::vector<double>> runs;
    for (bool relative : {true, false}) {
      beats::Inputs in;
      in.need_weights = false;
      in.causal = causal;
      in.need_position_bias = !relative;
      nn::reset_attention_path_counts();
      beats::Output a = m1(x, t, in);
      CHECK(a.relative_position_bias.has_value());
      CHECK(a.position_bias.defined() == !relative);
      if (relative) in.relative_position_bias = a.relative_position_bias;
      else in.position_bias = a.position_bias;
      beats::Output c = m2(a.attn, t, in);
      CHECK(nn::attention_path_counts().fused_forward == 2);
      CHECK(nn::attention_path_counts().relative_bias_gathered == 0);
      Tensor y = copy_masked(c.attn, {t});
      std::vector<Tensor> wrt{x, m1.relative_attention_bias->weight, m1.grep_linear->weight, *m1.grep_a,
                              m2.grep_linear->weight, *m2.grep_a, m2.q_proj.weight};
      std::vector<Tensor> grads = grad(reduce_sum(square(y), y.dims()), wrt);
      std::vector<double> all = y.to_vector<double>({b, t, e});
      for (const Tensor& gr : grads) {
        const std::vector<double> v = (gr.has_dim(t) ? copy_masked(gr, {t}) : gr).to_vector<double>();
        all.insert(all.end(), v.begin(), v.end());
      }
      for (double v : all) REQUIRE(std::isfinite(v));
      runs.push_back(all);
    }
    CHECK_VEC_APPROX(runs[0], runs[1], 1e-5, 1e-6);
  }
  // The relative form gathered is the tensor form; unpadded rows of the fused and the
  // weights' path agree with it too.
  beats::Inputs in;
  in.need_weights = false;
  beats::Output a = m1(x, t, in);
  REQUIRE(a.position_bias.defined());
  const Tensor gathered = relative_bias_term(*a.relative_position_bias, a.keys);
  CHECK_VEC_APPROX(gathered.to_vector<double>(a.position_bias.dims()), a.position_bias.to_vector<double>(), 0, 0);
  in.need_weights = true;
  beats::Output w = m1(x, t, in);
  CHECK_VEC_APPROX(copy_masked(w.attn, {t}).to_vector<double>({b, t, e}),
                   copy_masked(a.attn, {t}).to_vector<double>({b, t, e}), 1e-5, 1e-6);

  // A causal chunk continuing an empty decoding state (as a training step with a state runs)
  // keeps the relative form too, and equals the causal forward without a state.
  {
    beats::Inputs c;
    c.need_weights = false;
    c.causal = true;
    const Tensor want = copy_masked(m1(x, t, c).attn, {t});
    c.incremental_state = m1.initial_state({b});
    beats::Output st = m1(x, t, c);
    CHECK(st.relative_position_bias.has_value());
    CHECK_VEC_APPROX(copy_masked(st.attn, {t}).to_vector<double>({b, t, e}), want.to_vector<double>({b, t, e}), 1e-5,
                     1e-6);
  }

  // Errors: both forms, a gated table, another query Dim, decoding.
  in.need_weights = false;
  in.relative_position_bias = a.relative_position_bias;
  in.position_bias = a.position_bias;
  CHECK_THROWS_WITH(m2(x, t, in), Contains("beats::MultiheadAttention") && Contains("not both"));
  in.position_bias = Tensor();
  RelativeBias gated = *a.relative_position_bias;
  gated.scale = Tensor::ones({b, t}, DType::f32);
  in.relative_position_bias = gated;
  CHECK_THROWS_WITH(m2(x, t, in), Contains("ungated"));
  Dim other = dynamic_dim(b, {9, 5}, "other");
  in.relative_position_bias = a.relative_position_bias;
  CHECK_THROWS_WITH(m2(replace_dim(x, t, other).first, other, in), Contains("'t") && Contains("'other"));
  in.incremental_state = m2.initial_state({b});
  CHECK_THROWS_WITH(m2(x, t, in), Contains("decoding"));
  // Keys of another length: the positions' extent is named.
  beats::Inputs shorter;
  shorter.need_weights = false;
  Dim t2 = dynamic_dim(b, {6, 5}, "t2");
  RelativeBias r2 = *m1(random_tensor({b, t2, e}, 8), t2, shorter).relative_position_bias;
  r2.query = t;
  shorter.relative_position_bias = r2;
  CHECK_THROWS_WITH(m2(x, t, shorter), Contains("positions") && Contains("extent"));
}

TEST_CASE("beats: a query row with no visible key gives zero weights and a zero row, never NaN", "[beats]") {
  Golden g("fully_padded");
  Dim src = dynamic_dim(g.batch, g.lengths(), "src_len");
  Tensor q = g.get("io.query", {g.time, g.batch, g.embed});
  for (bool need_weights : {true, false}) {
    beats::Inputs in;
    in.need_weights = need_weights;
    beats::Output out = (*g.m)(q, g.time, [&] {
      beats::Inputs i2 = in;
      Dim key_axis = g.time;
      i2.key_padding_mask = inputs_of(g, false, key_axis).key_padding_mask;
      return i2;
    }());
    auto y = out.attn.to_vector<double>({g.time, g.batch, g.embed});
    for (double v : y) CHECK(std::isfinite(v));
    for (int64_t t = 0; t < g.time.extent(); ++t)
      for (int64_t e = 0; e < g.embed.size(); ++e) CHECK(y[size_t((t * 3 + 1) * g.embed.size() + e)] == 0.0);
  }
}

TEST_CASE("beats: errors name the module and the Dims", "[beats][errors]") {
  Generator gen(1);
  Dim e(16, "embed"), k(12, "kdim"), v(10, "vdim"), t(4, "t"), b(2, "b"), s(3, "s");
  CHECK_THROWS_WITH(beats::MultiheadAttention(e, 3, gen), Contains("beats::MultiheadAttention") && Contains("multiple"));
  CHECK_THROWS_WITH(beats::MultiheadAttention(e, -1, gen), Contains("num_heads"));
  beats::Options o;
  o.self_attention = true;
  o.kdim = k;
  CHECK_THROWS_WITH(beats::MultiheadAttention(e, 4, gen, o), Contains("self_attention") && Contains("kdim"));
  o = {};
  o.q_noise = 0.1;
  o.qn_block_size = 5;
  CHECK_THROWS_WITH(beats::MultiheadAttention(e, 4, gen, o), Contains("qn_block_size"));
  o = {};
  o.encoder_decoder_attention = true;
  o.kdim = k;
  o.vdim = v;
  CHECK_THROWS_WITH(beats::MultiheadAttention(e, 4, gen, o), Contains("vdim"));
  o = {};
  o.has_relative_attention_bias = true;
  o.num_buckets = 2;
  CHECK_THROWS_WITH(beats::MultiheadAttention(e, 4, gen, o), Contains("num_buckets"));

  o = {};
  o.kdim = k;
  o.vdim = v;
  beats::MultiheadAttention cross(e, 4, gen, o);
  Tensor q = random_tensor({b, t, e}, 1);
  beats::Inputs in;
  in.key = random_tensor({b, s, k}, 2);
  in.value = random_tensor({b, s, v}, 3);
  CHECK_THROWS_WITH(cross(q, t, in), Contains("key_axis"));
  in.key_axis = s;
  CHECK_NOTHROW(cross(q, t, in));
  in.static_kv = true;
  CHECK_THROWS_WITH(cross(q, t, in), Contains("static_kv") && Contains("encoder_decoder_attention"));
  in.static_kv = false;
  in.attn_mask = random_tensor({t, Dim(5, "wrong")}, 4);
  CHECK_THROWS_WITH(cross(q, t, in), Contains("attn_mask") && Contains("wrong"));
  in.attn_mask = Tensor();
  in.key_padding_mask = Tensor::zeros({b, Dim(3, "other")}, DType::boolean);
  CHECK_THROWS_WITH(cross(q, t, in), Contains("key_padding_mask") && Contains("s:3"));
  in.key_padding_mask = Tensor();
  in.position_bias = random_tensor({cross.heads, t, Dim(4, "wrong_keys")}, 5);
  CHECK_THROWS_WITH(cross(q, t, in), Contains("position_bias"));
  in.position_bias = Tensor();
  in.value = random_tensor({b, s, k}, 3);
  CHECK_THROWS_WITH(cross(q, t, in), Contains("vdim"));
}

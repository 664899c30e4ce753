// nn::torchscale::MultiheadAttention and xpos against the PyTorch reference written from the
// spec (tests/reference/torchscale_reference.py, golden files tests/golden/torchscale_*), float64
// finite differences, incremental decoding against the full forward, padding invariance, errors.
#include <dimx/io.h>
#include <dimx/nn/torchscale.h>

#include <filesystem>
#include <map>

#include "module_check.h"

using namespace dimx;
using namespace dimx_test;
namespace ts = dimx::nn::torchscale;
using Catch::Contains;

namespace {


// One golden case (batch-first: query [B, T, E], key/value [B, S, E]).
struct Golden : GoldenFile {
  Dim batch, time, src, embed;
  int64_t split;
  std::optional<ts::MultiheadAttention> m;

  explicit Golden(const std::string& name, DType dtype = DType::f32)
      : GoldenFile("torchscale_" + name),
        batch(std::stoll(meta.at("B")), "batch"),
        time(std::stoll(meta.at("T")), "time"),
        src(std::stoll(meta.at("S")), "src"),
        embed(std::stoll(meta.at("embed_dim")), "embed"),
        split(std::stoll(meta.at("split_position"))) {
    ts::Options o;
    o.self_attention = flag("self_attention");
    o.encoder_decoder_attention = flag("encoder_decoder_attention");
    o.subln = flag("subln");
    o.layernorm_eps = std::stod(meta.at("layernorm_eps"));
    o.xpos_rel_pos = flag("xpos_rel_pos");
    o.xpos_scale_base = std::stod(meta.at("xpos_scale_base"));
    o.multiway = flag("multiway");
    o.dtype = dtype;
    Generator gen(1);
    m.emplace(embed, std::stoll(meta.at("num_heads")), gen, o);
    nn::eval(*m);
    load_module(*m);
  }
  bool self_keys() const { return meta.at("key_value") == "key = value = query"; }
  std::vector<int32_t> lengths() const { return GoldenFile::lengths(batch); }
  const Dim& keys_in_file() const { return self_keys() ? time : src; }
};

ts::Inputs inputs_of(const Golden& g, bool as_lengths, Dim& qaxis, DType dt = DType::f32) {
  ts::Inputs in;
  in.split_position = g.split;
  qaxis = g.time;
  if (g.has("io.lengths") && as_lengths) qaxis = dynamic_dim(g.batch, g.lengths(), "time_len");
  if (!g.self_keys()) {
    in.key = g.get("io.key", {g.batch, g.src, g.embed}, dt);
    in.value = g.get("io.value", {g.batch, g.src, g.embed}, dt);
    in.key_axis = g.src;
  }
  if (g.has("io.key_padding_mask") && !as_lengths)
    in.key_padding_mask = g.get("io.key_padding_mask", {g.batch, g.keys_in_file()}, DType::i64) > 0.0;
  Dim cols(g.keys_in_file().extent(), "cols");
  if (g.has("io.attn_mask")) in.attn_mask = g.get("io.attn_mask", {g.time, cols}, dt);
  if (g.has("io.rel_pos")) {
    const bool batched = g.file.info("io.rel_pos").shape.size() == 4;
    in.rel_pos = batched ? g.get("io.rel_pos", {g.batch, g.m->heads, g.time, cols}, dt)
                         : g.get("io.rel_pos", {g.m->heads, g.time, cols}, dt);
  }
  if (qaxis != g.time) {
    if (in.attn_mask.defined()) in.attn_mask = replace_dim(in.attn_mask, g.time, qaxis).first;
    if (in.rel_pos.defined()) in.rel_pos = replace_dim(in.rel_pos, g.time, qaxis).first;
  }
  return in;
}

void check_case(const std::string& name) {
  INFO("case " << name);
  Golden g(name);
  for (bool as_lengths : {false, true}) {
    if (as_lengths && !g.has("io.lengths")) continue;
    INFO("key padding as " << (as_lengths ? "the time Dim's lengths" : "a bool mask"));
    Dim qaxis = g.time;
    ts::Inputs in = inputs_of(g, as_lengths, qaxis);
    Tensor q = g.get("io.query", {g.batch, g.time, g.embed});
    if (qaxis != g.time) q = replace_dim(q, g.time, qaxis).first;
    ts::Output out = (*g.m)(q, qaxis, in);
    auto want = g.get("io.attn", {g.batch, g.time, g.embed}).to_vector<double>();
    auto got = out.attn.to_vector<double>({g.batch, qaxis, g.embed});
    // With the lengths, only the valid query frames are defined.
    const int64_t B = g.batch.size(), T = g.time.extent(), E = g.embed.size(), S = g.keys_in_file().extent();
    const std::vector<int32_t> lens = as_lengths ? g.lengths() : std::vector<int32_t>(size_t(B), int32_t(T));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < lens[size_t(b)]; ++t)
        for (int64_t e = 0; e < E; ++e) {
          INFO("b " << b << " t " << t << " e " << e);
          CHECK(got[size_t((b * T + t) * E + e)] == Approx(want[size_t((b * T + t) * E + e)]).margin(1e-5));
        }
    const int64_t H = g.m->heads.size(), K = out.keys.extent();
    auto ww = g.get("io.weights", {g.m->heads, g.batch, g.time, Dim(S, "wcols")}).to_vector<double>();
    auto wg = copy_masked(out.weights, {out.keys}).to_vector<double>({g.m->heads, g.batch, qaxis, out.keys});
    for (int64_t h = 0; h < H; ++h)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < lens[size_t(b)]; ++t)
          for (int64_t j = 0; j < S; ++j) {
            INFO("weights h " << h << " b " << b << " t " << t << " j " << j);
            const double w = ww[size_t(((h * B + b) * T + t) * S + j)];
            CHECK((j < K ? wg[size_t(((h * B + b) * T + t) * K + j)] : 0.0) == Approx(w).margin(1e-6));
          }
  }
}

}  // namespace

TEST_CASE("torchscale: xpos matches the closed form, with offsets and downscaling", "[torchscale][xpos]") {
  const GoldenFile closed_form("xpos_closed_form");
  const SafeTensors& f = closed_form.file;
  Dim l(7, "l"), d(8, "d");
  Tensor x = f.load("io.x", {l, d});
  for (int base : {32, 512})
    for (int offset : {0, 3})
      for (bool down : {false, true}) {
        INFO("base " << base << " offset " << offset << " downscale " << down);
        const std::string key = "io.base" + std::to_string(base) + ".offset" + std::to_string(offset) + (down ? ".downscale" : "");
        CHECK_VEC_APPROX(ts::xpos(x, l, d, offset, down, base).to_vector<double>({l, d}),
                         f.load(key, {l, d}).to_vector<double>(), 1e-5, 1e-6);
      }
  // A dynamic axis centres each sequence on its own length: a sequence alone == in a batch.
  Dim b(2, "b");
  Dim t = dynamic_dim(b, {7, 4}, "t");
  Tensor xb = rnd({b, t, d}, 3);
  Tensor yb = ts::xpos(xb, t, d, 0, true, 32);
  Dim t4(4, "t4");
  Tensor x1 = slice(gather(xb, Tensor::scalar(1, DType::i64).with_sparse_dim(b)), t, 0, 4, 1, t4).first;
  CHECK_VEC_APPROX(ts::xpos(x1, t4, d, 0, true, 32).to_vector<double>({t4, d}),
                   slice(gather(yb, Tensor::scalar(1, DType::i64).with_sparse_dim(b)), t, 0, 4, 1, t4).first.to_vector<double>({t4, d}),
                   1e-6, 1e-7);
  // Its gradient (float64 central differences).
  Tensor x64 = rnd({l, d}, 5, DType::f64).with_requires_grad();
  Tensor w = rnd({l, d}, 6, DType::f64);
  auto loss = [&](const Tensor& xx) { return reduce_sum(ts::xpos(xx, l, d, 2, false, 32) * w, {l, d}); };
  auto g = grad(loss(x64), {x64})[0].to_vector<double>({l, d});
  auto base = x64.to_vector<double>({l, d});
  for (size_t j = 0; j < base.size(); j += 3) {
    auto at = [&](double delta) {
      auto v = base;
      v[j] += delta;
      return loss(Tensor::from_vector<double>({l, d}, v)).item<double>();
    };
    CHECK(g[j] == Approx((at(1e-6) - at(-1e-6)) / 2e-6).epsilon(1e-6).margin(1e-8));
  }
  CHECK_THROWS_WITH(ts::xpos(rnd({l, Dim(5, "odd")}, 1), l, Dim(5, "odd")), Contains("not in"));
  Dim odd(5, "odd");
  CHECK_THROWS_WITH(ts::xpos(rnd({l, odd}, 1), l, odd), Contains("even"));
  CHECK_THROWS_WITH(ts::xpos(x, l, d, -1), Contains("offset"));
}

namespace {

// XPOS by loops over elements in f64 (the formula of the original composite): x row-major over
// {batch, time, heads, feat}; per batch entry its length along time and its offset. Padded
// frames (t >= length) are rotated by the same formula.
std::vector<double> naive_xpos(const std::vector<double>& x, int64_t B, int64_t T, int64_t H, int64_t D,
                               const std::vector<int64_t>& len, const std::vector<int64_t>& off, bool down,
                               double base) {
  std::vector<double> y(x.size());
  const int64_t P = D / 2;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < P; ++i) {
          const double n = double(len[size_t(b)] + off[size_t(b)]), r = double(off[size_t(b)] + t);
          const double m = std::floor(-n / 2) + r;
          const double z = (2.0 * double(i) + 0.4 * double(D)) / (1.4 * double(D));
          double s = std::pow(z, m / base);
          if (down) s = 1 / s;
          const double theta = r * std::pow(10000.0, -double(i) / double(P));
          const size_t e = size_t(((b * T + t) * H + h) * D + 2 * i);
          y[e] = s * (x[e] * std::cos(theta) - x[e + 1] * std::sin(theta));
          y[e + 1] = s * (x[e + 1] * std::cos(theta) + x[e] * std::sin(theta));
        }
  return y;
}

}  // namespace

TEST_CASE("torchscale: xpos equals the element loop in every layout, with offsets per sequence and padding", "[torchscale][xpos]") {
  Dim batch(3, "batch"), heads(2, "heads"), feat(8, "feat");
  const std::vector<int32_t> lens{6, 3, 0};
  for (bool dynamic : {false, true})
    for (bool with_offset : {false, true})
      for (bool down : {false, true})
        for (DType dt : {DType::f32, DType::f64}) {
          Dim time = dynamic ? dynamic_dim(batch, lens, "time") : Dim(6, "time");
          std::vector<int64_t> len(3, 6), off(3, 0);
          if (dynamic) len = {6, 3, 0};
          Tensor offset;
          if (with_offset) {
            off = {2, 0, 5};
            offset = Tensor::from_vector<int64_t>({batch}, off);
          }
          Tensor x = rnd({batch, time, heads, feat}, 7, dt);
          const auto want = naive_xpos(x.to_vector<double>({batch, time, heads, feat}), 3, 6, 2, 8, len, off, down, 32);
          const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
          // Every layout: the feature Dim innermost (read in place, heads broadcasting the
          // positions) or not (copied first).
          for (const Tensor& xl : layouts(x)) {
            INFO("dynamic " << dynamic << " offset " << with_offset << " down " << down << " " << dtype_name(dt)
                            << " layout " << dims_str(xl.dims()));
            Tensor y = ts::xpos(xl, time, feat, offset, down, 32);
            CHECK(y.dtype() == dt);
            CHECK(y.ndim() == 4);
            CHECK_VEC_APPROX(y.to_vector<double>({batch, time, heads, feat}), want, tol, tol);
          }
        }
}

TEST_CASE("torchscale: xpos reads strided views in place: heads of a packed projection, a time slice", "[torchscale][xpos]") {
  Dim batch(2, "batch"), time(5, "time"), heads(3, "heads"), feat(6, "feat"), three(3, "three");
  // q, k, v packed per frame as {three, heads, feat}: q is a strided view (rows 3 * 18 apart).
  Tensor qkv = rnd({batch, time, three, heads, feat}, 11);
  Dim one(1, "one");
  Tensor q = squeeze(slice(qkv, three, 0, 1, 1, one).first, one);
  const auto want = naive_xpos(q.to_vector<double>({batch, time, heads, feat}), 2, 5, 3, 6, {5, 5}, {0, 0}, false, 512);
  CHECK_VEC_APPROX(ts::xpos(q, time, feat).to_vector<double>({batch, time, heads, feat}), want, 1e-5, 1e-6);
  // Heads outside time: {batch, heads, time, feat}, a slice of a longer time axis.
  Dim long_time(9, "long_time");
  Tensor big = rnd({batch, heads, long_time, feat}, 12);
  Tensor xs = slice(big, long_time, 2, 7, 1, time).first;
  const auto want2 = naive_xpos(xs.to_vector<double>({batch, time, heads, feat}), 2, 5, 3, 6, {5, 5}, {3, 3}, true, 32);
  CHECK_VEC_APPROX(ts::xpos(xs, time, feat, 3, true, 32).to_vector<double>({batch, time, heads, feat}), want2, 1e-5,
                   1e-6);
}

TEST_CASE("torchscale: xpos of bf16 and f16 computes in f32 and keeps the dtype", "[torchscale][xpos][half]") {
  Dim time(7, "time"), feat(16, "feat");
  for (DType dt : {DType::bf16, DType::f16}) {
    Tensor x = rnd({time, feat}, 13).astype(dt);
    Tensor y = ts::xpos(x, time, feat, 2, true, 64);
    CHECK(y.dtype() == dt);
    CHECK(vec_identical(y.to_vector<float>({time, feat}),
                        ts::xpos(x.astype(DType::f32), time, feat, 2, true, 64).astype(dt).to_vector<float>({time, feat})));
  }
}

TEST_CASE("torchscale: xpos gradient of a strided, padded x with offsets matches float64 finite differences", "[torchscale][xpos][grad]") {
  Dim batch(2, "batch"), heads(2, "heads"), feat(4, "feat"), long_time(7, "long_time");
  Dim time = dynamic_dim(batch, {5, 3}, "time");
  Tensor big = rnd({batch, long_time, heads, feat}, 14, DType::f64).with_requires_grad();
  Tensor offset = Tensor::from_vector<int64_t>({batch}, std::vector<int64_t>{1, 4});
  Tensor c = rnd({batch, time, heads, feat}, 15, DType::f64);
  auto loss_t = [&] {
    Tensor x = slice(big, long_time, 1, 6, 1, time).first;  // a strided view over padded frames
    return reduce_sum(copy_masked(ts::xpos(x, time, feat, offset, true, 16) * c, {time}), {batch, time, heads, feat});
  };
  auto g = grad(loss_t(), {big})[0].to_vector<double>(big.dims());
  auto base = big.to_vector<double>();
  for (size_t j = 0; j < base.size(); ++j) {
    auto at = [&](double delta) {
      NoGradGuard ng;
      auto v = base;
      v[j] += delta;
      big.copy_from(Tensor::from_vector<double>(big.dims(), v));
      const double l = loss_t().item<double>();
      big.copy_from(Tensor::from_vector<double>(big.dims(), base));
      return l;
    };
    INFO("entry " << j);
    CHECK(g[j] == Approx((at(1e-6) - at(-1e-6)) / 2e-6).epsilon(1e-6).margin(1e-8));
  }
}

TEST_CASE("torchscale: xpos is one backend primitive each way", "[torchscale][xpos]") {
  Dim batch(2, "batch"), time(5, "time"), heads(2, "heads"), feat(8, "feat");
  Tensor x = rnd({batch, time, heads, feat}, 16).with_requires_grad();
  Profiler prof;
  grad(reduce_sum(ts::xpos(x, time, feat, 1, true, 32), {batch, time, heads, feat}), {x});
  int forward = 0, inverse = 0;
  for (const auto& e : prof.entries()) {
    if (e.primitive.rfind("xpos_inverse ", 0) == 0) inverse += int(e.calls);
    else if (e.primitive.rfind("xpos ", 0) == 0) forward += int(e.calls);
  }
  INFO(prof.report(40));
  CHECK(forward == 1);
  CHECK(inverse == 1);
}

TEST_CASE("torchscale: golden files, every flag combination", "[torchscale][golden]") {
  for (const char* name : {"plain_self", "xpos", "xpos_base32", "subln", "xpos_subln", "multiway_a", "multiway_b",
                           "multiway_split", "key_padding", "attn_mask", "attn_mask_nonfinite", "rel_pos_nobatch",
                           "rel_pos_batch", "encdec", "cross", "combined"})
    check_case(name);
}

TEST_CASE("torchscale: multiway names are zeta's, and the split position routes by Dim", "[torchscale]") {
  Golden g("multiway_split");
  auto names = nn::named_tensors(*g.m);
  std::vector<std::string> got;
  for (auto& [n, t] : names) got.push_back(n);
  CHECK(std::find(got.begin(), got.end(), "q_proj.A.weight") != got.end());
  CHECK(std::find(got.begin(), got.end(), "inner_attn_ln.B.bias") != got.end());
  CHECK(std::find(got.begin(), got.end(), "xpos.scale") != got.end());
  // xpos.scale is a buffer: loaded and saved, never a parameter an optimizer updates.
  for (auto& [n, t] : nn::named_parameters(*g.m)) CHECK(n != "xpos.scale");
  // All A == split -1 == a plain module with A's weights.
  Golden a("multiway_a");
  ts::Options o = a.m->options;
  o.multiway = false;
  Generator gen(4);
  ts::MultiheadAttention plain(a.embed, 4, gen, o);
  for (auto& [n, t] : nn::named_tensors(plain)) {
    std::string wn = n;
    auto dot = wn.find('.');
    if (n != "xpos.scale") wn.insert(dot, ".A");
    t->copy_from(a.file.load(wn, t->dims(), t->dtype()));
  }
  nn::eval(plain);
  Tensor q = a.get("io.query", {a.batch, a.time, a.embed});
  ts::Inputs in;
  in.split_position = -1;
  CHECK_VEC_APPROX((*a.m)(q, a.time, in).attn.to_vector<double>({a.batch, a.time, a.embed}),
                   plain(q, a.time).attn.to_vector<double>({a.batch, a.time, a.embed}), 1e-6, 1e-6);
}

TEST_CASE("torchscale: every parameter's and the query's gradient match float64 finite differences", "[torchscale][grad]") {
  Golden g("multiway_split", DType::f64);
  Dim time = dynamic_dim(g.batch, {6, 4, 5}, "time");
  Tensor q = g.get("io.query", {g.batch, time, g.embed}, DType::f64);
  Dim cols(6, "cols");
  ts::Inputs in;
  in.split_position = g.split;
  in.rel_pos = rnd({g.m->heads, time, cols}, 3, DType::f64);
  in.causal = true;
  Tensor r = rnd({g.batch, time, g.embed}, 4, DType::f64);
  auto loss = [&](const Tensor& qq) {
    return reduce_sum(copy_masked((*g.m)(qq, time, in).attn, {time}) * r, {g.batch, time, g.embed});
  };
  check_param_grads(*g.m, [&] { return loss(q); }, 3);
  Tensor qg = q.with_requires_grad();
  auto an = copy_masked(grad(loss(qg), {qg})[0], {time}).to_vector<double>({g.batch, time, g.embed});
  auto base = q.to_vector<double>({g.batch, time, g.embed});
  const auto lens = std::vector<int32_t>{6, 4, 5};
  for (size_t j = 0; j < base.size(); j += 5) {
    const int64_t t = int64_t(j / 16) % 6, b = int64_t(j / 96);
    if (t >= lens[size_t(b)]) continue;
    auto at = [&](double delta) {
      auto v = base;
      v[j] += delta;
      NoGradGuard ng;
      return loss(Tensor::from_vector<double>({g.batch, time, g.embed}, v)).item<double>();
    };
    CHECK(an[j] == Approx((at(1e-6) - at(-1e-6)) / 2e-6).epsilon(1e-6).margin(1e-7));
  }
}

TEST_CASE("torchscale: decoding a prefix then single tokens, and chunks, equals the full causal forward", "[torchscale][decoding]") {
  Golden g("incremental");
  // The full causal forward equals the reference (causal attn_mask there).
  Tensor x = g.get("io.query", {g.batch, g.time, g.embed});
  ts::Inputs causal;
  causal.causal = true;
  ts::Output full = (*g.m)(x, g.time, causal);
  CHECK_VEC_APPROX(full.attn.to_vector<double>({g.batch, g.time, g.embed}), g.get("io.attn", {g.batch, g.time, g.embed}).to_vector<double>(),
                   1e-5, 1e-5);
  // On a padded batch: the whole causal forward, then a 3-token prefix and single tokens, and
  // chunks of 2, 1, 3 frames (sequences end inside chunks), each continuing the state.
  const std::vector<int32_t> lens{7, 4, 6};
  Dim time = dynamic_dim(g.batch, lens, "time");
  Tensor xp = replace_dim(x, g.time, time).first;
  const auto want = copy_masked((*g.m)(xp, time, causal).attn, {time}).to_vector<double>({g.batch, time, g.embed});
  const int64_t B = 3, T = 7, E = 16;
  for (const std::vector<int64_t>& schedule : {std::vector<int64_t>{3, 1, 1, 1, 1}, std::vector<int64_t>{2, 1, 3, 1}}) {
    INFO("schedule starting with " << schedule[0]);
    std::optional<ts::State> st = g.m->initial_state({g.batch});
    int64_t start = 0;
    for (int64_t n : schedule) {
      ts::Inputs in;
      in.causal = true;
      in.incremental_state = st;
      std::vector<double> y;
      Dim tc = time;
      std::vector<int32_t> cl;
      if (n == 1) {
        ts::Output o = (*g.m)(frame(xp, time, start), nn::single_step_dim(), in);
        st = o.state;
        y = o.attn.to_vector<double>({g.batch, g.embed});
        cl.assign(3, 1);
      } else {
        auto [xc, c] = slice(xp, time, start, start + n);
        tc = c;
        ts::Output o = (*g.m)(xc, tc, in);
        st = o.state;
        y = copy_masked(o.attn, {tc}).to_vector<double>({g.batch, tc, g.embed});
        cl = tc.lengths().to_vector<int32_t>();
      }
      const int64_t tn = n == 1 ? 1 : tc.extent();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < tn; ++i)
          if (start + i < lens[size_t(b)] && i < cl[size_t(b)])
            for (int64_t e = 0; e < E; ++e) {
              INFO("frame " << start + i << " b " << b);
              CHECK(y[size_t((b * tn + i) * E + e)] == Approx(want[size_t((b * T + start + i) * E + e)]).margin(2e-5));
            }
      start += n;
    }
  }
}

TEST_CASE("torchscale: a sequence alone equals the same sequence in a padded batch", "[torchscale][padding]") {
  Golden g("combined");
  const std::vector<int32_t> lens{6, 4, 5};
  Dim time = dynamic_dim(g.batch, lens, "time");
  Tensor q = g.get("io.query", {g.batch, time, g.embed});
  ts::Inputs in;
  in.causal = true;
  Tensor all = copy_masked((*g.m)(q, time, in).attn, {time});
  for (int64_t b = 0; b < 3; ++b) {
    Dim one(1, "one"), ts_(lens[size_t(b)], "alone");
    Tensor idx = Tensor::from_vector<int64_t>({one}, std::vector<int64_t>{b}).with_sparse_dim(g.batch);
    Tensor qa = slice(gather(q, idx), time, 0, ts_.extent(), 1, ts_).first;
    auto got = (*g.m)(qa, ts_, in).attn.to_vector<double>({one, ts_, g.embed});
    auto want = slice(gather(all, idx), time, 0, ts_.extent(), 1, ts_).first.to_vector<double>({one, ts_, g.embed});
    CHECK_VEC_APPROX(got, want, 1e-5, 1e-6);
  }
}

TEST_CASE("torchscale: errors name the module and the Dims", "[torchscale][errors]") {
  Generator gen(1);
  Dim e(16, "embed"), t(4, "t"), b(2, "b"), s(3, "s");
  ts::Options o;
  o.self_attention = o.encoder_decoder_attention = true;
  CHECK_THROWS_WITH(ts::MultiheadAttention(e, 4, gen, o), Contains("torchscale::MultiheadAttention") && Contains("both"));
  o = {};
  o.xpos_rel_pos = true;
  CHECK_THROWS_WITH(ts::MultiheadAttention(e, 4, gen, o), Contains("self_attention"));
  o.self_attention = true;
  CHECK_THROWS_WITH(ts::MultiheadAttention(Dim(12, "e12"), 4, gen, o), Contains("even"));
  CHECK_THROWS_WITH(ts::MultiheadAttention(e, 5, gen), Contains("multiple"));
  ts::MultiheadAttention m(e, 4, gen, o);
  Tensor q = random_tensor({b, t, e}, 1);
  ts::Inputs in;
  in.key = random_tensor({b, s, e}, 2);
  CHECK_THROWS_WITH(m(q, t, in), Contains("key_axis"));
  in = {};
  in.key_padding_mask = Tensor::zeros({b, Dim(4, "other")}, DType::boolean);
  CHECK_THROWS_WITH(m(q, t, in), Contains("key_padding_mask"));
  in = {};
  in.attn_mask = random_tensor({t, Dim(5, "wrong")}, 4);
  CHECK_THROWS_WITH(m(q, t, in), Contains("attn_mask") && Contains("wrong"));
  in = {};
  in.rel_pos = random_tensor({Dim(4, "other_heads"), t, Dim(4, "k")}, 5);
  CHECK_THROWS_WITH(m(q, t, in), Contains("rel_pos") && Contains("heads"));
  in = {};
  in.split_position = -3;
  CHECK_THROWS_WITH(m(q, t, in), Contains("split_position"));
}

TEST_CASE("torchscale: dropout in training takes the fused primitive and drops what the unfused path drops", "[torchscale]") {
  Dim batch(2, "batch"), embed(16, "embed");
  Dim time = dynamic_dim(batch, {9, 6}, "time");
  ts::Options o;
  o.self_attention = true;
  o.xpos_rel_pos = true;
  o.dropout = 0.25;
  Generator gen(2);
  ts::MultiheadAttention m(embed, 4, gen, o);
  nn::train(m);
  Tensor x = random_normal({batch, time, embed}, gen);
  std::vector<std::vector<double>> runs;
  for (bool need_weights : {true, false}) {
    Generator g(9);
    ts::Inputs in;
    in.gen = &g;
    in.need_weights = need_weights;
    nn::reset_attention_path_counts();
    Tensor y = copy_masked(m(x, time, in).attn, {time});
    std::vector<Tensor> params;
    for (Tensor* p : nn::parameters(m)) params.push_back(*p);
    std::vector<Tensor> grads = grad(reduce_sum(square(y), y.dims()), params);
    CHECK(nn::attention_path_counts().fused_forward == (need_weights ? 0 : 1));
    std::vector<double> all = y.to_vector<double>({batch, time, embed});
    for (const Tensor& gr : grads) {
      const std::vector<double> v = gr.to_vector<double>();
      all.insert(all.end(), v.begin(), v.end());
    }
    runs.push_back(all);
  }
  CHECK_VEC_APPROX(runs[1], runs[0], 1e-4, 1e-5);
}

TEST_CASE("torchscale: without weights, masks or dropout the scores take the fused attention primitive (on the CPU)", "[torchscale]") {
  Dim batch(2, "batch"), time(9, "time"), embed(16, "embed");
  for (bool xpos : {false, true}) {
    ts::Options o;
    o.self_attention = true;
    o.xpos_rel_pos = xpos;
    o.subln = true;
    Generator gen(2);
    ts::MultiheadAttention m(embed, 4, gen, o);
    Tensor x = random_normal({batch, time, embed}, gen);
    ts::Inputs in;
    in.need_weights = false;
    auto attention_calls = [&](bool with_grad) {
      Profiler prof;
      std::optional<NoGradGuard> inference;
      if (!with_grad) inference.emplace();
      Tensor xi = with_grad ? x.with_requires_grad() : x;
      Tensor y = m(xi, time, in).attn;
      int64_t fused = 0, gemm_scores = 0;
      for (const Profiler::Entry& e : prof.entries()) {
        if (e.primitive.rfind("attention", 0) == 0) fused += e.calls;
        if (e.primitive.find("m 9 n 9 k 4") != std::string::npos) gemm_scores += e.calls;
      }
      INFO("xpos " << xpos << ", grad " << with_grad << "\n" << prof.report(60));
      // With a gradient recorded too: the fused backward recomputes the weights later.
      CHECK(fused == 1);
      CHECK(gemm_scores == 0);
      return y;
    };
    Tensor plain = attention_calls(false);
    in.need_weights = true;  // the same output through the unfused scores
    Tensor unfused = m(x, time, in).attn;
    in.need_weights = false;
    CHECK_VEC_APPROX(plain.to_vector<double>({batch, time, embed}), unfused.to_vector<double>({batch, time, embed}), 1e-5, 1e-6);
    attention_calls(true);
  }
}

// nn::mega::MultiHeadDampedEMA against the PyTorch reference written from the spec
// (tests/reference/mega_reference.py, golden files tests/golden/mega_*.safetensors), float64
// finite differences, stepping == the full forward, chunks continuing a state, padding.
#include <dimx/io.h>
#include <dimx/nn/mega.h>

#include <filesystem>

#include "module_check.h"

using namespace dimx;
using namespace dimx_test;
namespace mega = dimx::nn::mega;
using Catch::Contains;

namespace {


// A golden case: time-major x [L, B, D] as Dims {time, batch, size}.
struct Golden : GoldenFile {
  Dim time, batch, size;
  std::optional<mega::MultiHeadDampedEMA> m;
  explicit Golden(const std::string& name, DType dt = DType::f32)
      : GoldenFile("mega_" + name),
        time(std::stoll(meta.at("L")), "time"),
        batch(std::stoll(meta.at("B")), "batch"),
        size(std::stoll(meta.at("D")), "size") {
    mega::Options o;
    o.num_heads = std::stoll(meta.at("H"));
    o.activation = meta.at("activation") == "silu" ? mega::Activation::silu : mega::Activation::relu;
    if (meta.at("truncation_length") != "none") o.truncation_length = std::stoll(meta.at("truncation_length"));
    o.dtype = dt;
    Generator gen(1);
    m.emplace(size, gen, o);
    load_module(*m);
  }
  std::vector<int32_t> lengths() const { return GoldenFile::lengths(batch); }
};

void check_valid(const Tensor& got, const Tensor& want, const Dim& time, const Dims& order, double tol = 1e-5) {
  CHECK_VEC_APPROX(copy_masked(got, {time}).to_vector<double>(order), copy_masked(want, {time}).to_vector<double>(order),
                   tol, tol);
}

}  // namespace

TEST_CASE("mega: coefficients and kernels match the reference", "[mega][golden]") {
  Golden g("kernel");
  Dim h = g.m->heads, one(1, "one1");
  auto [p, q] = g.m->compute_ema_coefficients();
  CHECK_VEC_APPROX(p.to_vector<double>({g.size, h}), g.get("io.p", {g.size, h, one}).to_vector<double>(), 1e-6, 1e-7);
  CHECK_VEC_APPROX(q.to_vector<double>({g.size, h}), g.get("io.q", {g.size, h, one}).to_vector<double>(), 1e-6, 1e-7);
  for (int64_t L : {9, 64}) {
    Dim taps(L, "taps");
    CHECK_VEC_APPROX(g.m->compute_ema_kernel(taps).to_vector<double>({g.size, taps}),
                     g.get(L == 9 ? "io.kernel" : "io.kernel64", {g.size, taps}).to_vector<double>(), 1e-5, 1e-6);
  }
  // Never stale: a parameter update changes what get_ema_coefficients returns.
  auto before = g.m->get_ema_coefficients().q.to_vector<float>();
  {
    NoGradGuard ng;
    g.m->decay_factor.copy_from(g.m->decay_factor + 0.5);
  }
  CHECK(g.m->get_ema_coefficients().q.to_vector<float>() != before);
}

TEST_CASE("mega: full sequence (relu, silu, truncated), outputs and every gradient", "[mega][golden]") {
  for (const char* name : {"relu", "silu", "truncated"}) {
    INFO(name);
    Golden g(name);
    const Dims order{g.time, g.batch, g.size};
    Tensor x = g.get("io.x", order).with_requires_grad();
    auto [out, st] = (*g.m)(x, g.time);
    CHECK(!st.has_value());
    CHECK_VEC_APPROX(out.to_vector<double>(order), g.get("io.out", order).to_vector<double>(), 1e-5, 1e-5);
    Tensor loss = reduce_sum(out * g.get("io.w", order), order);
    std::vector<Tensor> wrt{x};
    auto params = nn::named_parameters(*g.m);
    for (auto& [n, t] : params) wrt.push_back(*t);
    auto gr = grad(loss, wrt);
    CHECK_VEC_APPROX(gr[0].to_vector<double>(order), g.get("io.grad.x", order).to_vector<double>(), 1e-4, 1e-5);
    for (size_t i = 0; i < params.size(); ++i) {
      INFO(params[i].first);
      const Tensor& p = *params[i].second;
      CHECK_VEC_APPROX(gr[i + 1].to_vector<double>(p.dims()), g.get("io.grad." + params[i].first, p.dims()).to_vector<double>(),
                       1e-4, 1e-4);
    }
  }
}

TEST_CASE("mega: padding as the time Dim's lengths or as a mask; long sequences through the FFT", "[mega][golden]") {
  {
    Golden g("masked");
    const auto lens = g.lengths();
    Dim time = dynamic_dim(g.batch, lens, "time");
    Tensor x = g.get("io.x", {time, g.batch, g.size});
    check_valid((*g.m)(x, time).first, g.get("io.out", {time, g.batch, g.size}), time, {time, g.batch, g.size});
    // The bool mask zeroes the same frames for the EMA: the same valid outputs.
    Tensor mask = g.get("io.mask", {g.batch, g.time}, DType::i64) > 0.0;
    Tensor xs = g.get("io.x", {g.time, g.batch, g.size});
    Tensor out_mask = replace_dim((*g.m)(xs, g.time, mask).first, g.time, time).first;
    check_valid(out_mask, g.get("io.out", {time, g.batch, g.size}), time, {time, g.batch, g.size});
    // With the mask, the padded frames are as the original computes them too.
    CHECK_VEC_APPROX((*g.m)(xs, g.time, mask).first.to_vector<double>({g.time, g.batch, g.size}),
                     g.get("io.out", {g.time, g.batch, g.size}).to_vector<double>(), 1e-5, 1e-5);
  }
  for (const char* name : {"long", "long_truncated"}) {
    INFO(name);
    Golden g(name);
    Dim time = g.file.contains("io.lengths") ? dynamic_dim(g.batch, g.lengths(), "time") : g.time;
    const Dims order{time, g.batch, g.size};
    check_valid((*g.m)(g.get("io.x", order), time).first, g.get("io.out", order), time, order, 2e-5);
    Dim taps(g.file.info("io.kernel").shape[1], "taps");
    CHECK_VEC_APPROX(g.m->compute_ema_kernel(taps).to_vector<double>({g.size, taps}),
                     g.get("io.kernel", {g.size, taps}).to_vector<double>(), 1e-5, 1e-6);
  }
}

TEST_CASE("mega: one step from a state, and decoding a padded sequence frame by frame", "[mega][golden][decoding]") {
  Golden g("one_step");
  Dim h = g.m->heads, one(1, "one_frame");
  Tensor x = squeeze(g.get("io.x", {one, g.batch, g.size}), one);
  Tensor s0 = g.get("io.state_in", {g.batch, g.size, h});
  auto [y, s1] = g.m->ema_one_step(x, s0);
  CHECK_VEC_APPROX(y.to_vector<double>({g.batch, g.size}), g.get("io.step_out", {one, g.batch, g.size}).to_vector<double>(), 1e-5, 1e-6);
  CHECK_VEC_APPROX(s1.to_vector<double>({g.batch, g.size, h}), g.get("io.state_out", {g.batch, g.size, h}).to_vector<double>(), 1e-5, 1e-6);
  auto [yz, sz] = g.m->ema_one_step(x);
  CHECK_VEC_APPROX(yz.to_vector<double>({g.batch, g.size}), g.get("io.zero.step_out", {one, g.batch, g.size}).to_vector<double>(), 1e-5, 1e-6);
  auto [out, st] = (*g.m)(x, nn::single_step_dim(), Tensor(), s0);
  REQUIRE(st.has_value());
  CHECK_VEC_APPROX(out.to_vector<double>({g.batch, g.size}), g.get("io.out", {one, g.batch, g.size}).to_vector<double>(), 1e-5, 1e-6);
  // A padded sequence decoded frame by frame with its mask (padded frames feed 0: the state decays).
  Dim L(9, "L");
  Tensor xs = g.get("io.seq.x", {L, g.batch, g.size});
  Tensor mask = g.get("io.seq.mask", {g.batch, L}, DType::i64) > 0.0;
  auto want = g.get("io.seq.out", {L, g.batch, g.size}).to_vector<double>();
  Tensor s = s0;
  for (int64_t t = 0; t < 9; ++t) {
    Tensor idx = Tensor::scalar(double(t), DType::i64).with_sparse_dim(L);
    auto [o, next] = (*g.m)(gather(xs, idx), nn::single_step_dim(), gather(mask, idx), s);
    s = *next;
    auto got = o.to_vector<double>({g.batch, g.size});
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(want[size_t(t) * got.size() + i]).margin(1e-5));
  }
  CHECK_VEC_APPROX(s.to_vector<double>({g.batch, g.size, h}), g.get("io.seq.state_out", {g.batch, g.size, h}).to_vector<double>(), 1e-5, 1e-5);
}

TEST_CASE("mega: stepping and chunks continuing a state equal the whole sequence", "[mega][decoding]") {
  Golden g("masked");
  const auto lens = g.lengths();
  Dim time = dynamic_dim(g.batch, lens, "time");
  const Dims order{time, g.batch, g.size};
  Tensor x = g.get("io.x", order);
  Tensor full = copy_masked((*g.m)(x, time).first, {time});
  auto want = full.to_vector<double>(order);
  // Frame by frame from the zero state.
  Tensor s = g.m->initial_state({g.batch});
  for (int64_t t = 0; t < time.extent(); ++t) {
    auto [o, next] = (*g.m)(frame(x, time, t), nn::single_step_dim(), Tensor(), s);
    s = *next;
    auto got = o.to_vector<double>({g.batch, g.size});
    for (int64_t b = 0; b < 3; ++b)
      if (t < lens[size_t(b)])
        for (int64_t d = 0; d < 8; ++d)
          CHECK(got[size_t(b * 8 + d)] == Approx(want[size_t((t * 3 + b) * 8 + d)]).margin(1e-5));
  }
  // Chunks of 4 and 5 frames: the second continues the first's state (the state after each
  // sequence's last valid frame of the chunk).
  auto [x1, t1] = slice(x, time, 0, 4);
  auto [x2, t2] = slice(x, time, 4);
  auto [o1, s1] = (*g.m)(x1, t1, Tensor(), g.m->initial_state({g.batch}));
  auto [o2, s2] = (*g.m)(x2, t2, Tensor(), *s1);
  auto g1 = copy_masked(o1, {t1}).to_vector<double>({t1, g.batch, g.size});
  auto g2 = copy_masked(o2, {t2}).to_vector<double>({t2, g.batch, g.size});
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t t = 0; t < lens[size_t(b)]; ++t)
      for (int64_t d = 0; d < 8; ++d) {
        INFO("b " << b << " t " << t);
        const double got = t < 4 ? g1[size_t((t * 3 + b) * 8 + d)] : g2[size_t(((t - 4) * 3 + b) * 8 + d)];
        CHECK(got == Approx(want[size_t((t * 3 + b) * 8 + d)]).margin(1e-5));
      }
  // The state after the chunks is the state after each sequence's last valid frame: for the
  // sequence that fills the batch, the state after stepping all frames.
  Tensor first = Tensor::scalar(0, DType::i64).with_sparse_dim(g.batch);
  CHECK_VEC_APPROX(gather(*s2, first).to_vector<double>({g.size, g.m->heads}),
                   gather(s, first).to_vector<double>({g.size, g.m->heads}), 1e-4, 1e-5);
}

TEST_CASE("mega: a sequence alone equals the same sequence in a padded batch", "[mega][padding]") {
  Golden g("long_truncated");
  const auto lens = g.lengths();
  Dim time = dynamic_dim(g.batch, lens, "time");
  Tensor x = g.get("io.x", {time, g.batch, g.size});
  Tensor all = copy_masked((*g.m)(x, time).first, {time});
  Dim one(1, "one"), t1(lens[1], "alone");
  Tensor idx = Tensor::from_vector<int64_t>({one}, std::vector<int64_t>{1}).with_sparse_dim(g.batch);
  Tensor xa = slice(gather(x, idx), time, 0, t1.extent(), 1, t1).first;
  CHECK_VEC_APPROX((*g.m)(xa, t1).first.to_vector<double>({t1, one, g.size}),
                   slice(gather(all, idx), time, 0, t1.extent(), 1, t1).first.to_vector<double>({t1, one, g.size}), 1e-5,
                   1e-6);
}

TEST_CASE("mega: parameter gradients match float64 finite differences (mask, truncation, state)", "[mega][grad]") {
  for (bool with_state : {false, true}) {
    INFO("state " << with_state);
    Golden g("long_truncated", DType::f64);
    Dim batch = g.batch, size = g.size;
    Dim time = dynamic_dim(batch, {11, 6}, "time");
    Tensor x = rnd({time, batch, size}, 3, DType::f64);
    Tensor r = rnd({time, batch, size}, 4, DType::f64);
    Tensor s0 = rnd({batch, size, g.m->heads}, 5, DType::f64);
    auto loss = [&]() {
      auto [o, st] = (*g.m)(x, time, Tensor(), with_state ? std::optional<Tensor>(s0) : std::nullopt);
      Tensor l = reduce_sum(copy_masked(o, {time}) * r, {time, batch, size});
      if (st) l = l + reduce_sum(*st * 0.3, st->dims());
      return l;
    };
    check_param_grads(*g.m, loss, 2);
  }
}

TEST_CASE("mega: errors name the module and the Dims", "[mega][errors]") {
  Generator gen(1);
  Dim d(8, "size"), t(5, "t"), b(2, "b");
  mega::Options o;
  o.num_heads = 0;
  CHECK_THROWS_WITH(mega::MultiHeadDampedEMA(d, gen, o), Contains("mega::MultiHeadDampedEMA") && Contains("num_heads"));
  o = {};
  o.truncation_length = 0;
  CHECK_THROWS_WITH(mega::MultiHeadDampedEMA(d, gen, o), Contains("truncation_length"));
  mega::MultiHeadDampedEMA m(d, gen);
  Tensor x = random_tensor({b, t, d}, 1);
  CHECK_THROWS_WITH(m(x, t, Tensor::zeros({b, Dim(5, "other")}, DType::boolean)), Contains("mask") && Contains("other"));
  CHECK_THROWS_WITH(m(x, t, Tensor::zeros({b, t})), Contains("bool"));
  CHECK_THROWS_WITH(m(x, t, Tensor(), m.initial_state({Dim(2, "other_batch")})), Contains("state") && Contains("other_batch"));
  CHECK_THROWS_WITH(m(random_tensor({b, t, Dim(8, "not_size")}, 2), t), Contains("size:8"));
  // L = 0 works: nothing to convolve.
  Dim empty(0, "empty");
  CHECK(m(Tensor::zeros({b, empty, d}), empty).first.numel() == 0);
}

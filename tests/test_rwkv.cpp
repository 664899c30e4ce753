// rwkv::SelfAttention (RWKV-4 time mixing): a PyTorch golden file, reset_parameters' closed
// form, step-by-step decoding and chunks with state against the whole sequence, gradients of
// every parameter, errors.
#include <dimx/nn.h>

#include <filesystem>

#include "module_check.h"

using namespace dimx;
using namespace dimx_test;
using nn::rwkv::SelfAttention;
using nn::rwkv::State;

TEST_CASE("rwkv::SelfAttention matches the PyTorch reference, whole and continuing a state", "[rwkv]") {
  SafeTensors f = SafeTensors::open(
      (std::filesystem::path(__FILE__).parent_path() / "golden" / "rwkv_self_attention.safetensors").string());
  Dim batch(2, "batch"), time(7, "time"), size(8, "size"), att(6, "att");
  Generator gen(0);
  SelfAttention m(size, att, /*context_size=*/1024, 0, 1, gen);
  LoadReport rep = nn::load_state(m, f, /*strict=*/false);
  CHECK(rep.missing.empty());
  CHECK(nn::named_parameters(m).size() == 13);
  Tensor x = f.load("x", {batch, time, size});
  auto [y, st] = m(x, time, m.default_initial_state({batch}));
  CHECK_VEC_APPROX(y.to_vector<double>({batch, time, size}), f.load("out", {batch, time, size}).to_vector<double>(),
                   1e-5, 1e-5);
  auto [x1, t1] = slice(x, time, 0, 4);
  auto [x2, t2] = slice(x, time, 4);
  State first = m(x1, t1, m.default_initial_state({batch})).second;
  Tensor tail = m(x2, t2, first).first;
  CHECK_VEC_APPROX(tail.to_vector<double>({batch, t2, size}), f.load("out_tail", {batch, t2, size}).to_vector<double>(),
                   1e-5, 1e-5);
}

TEST_CASE("rwkv::SelfAttention: reset_parameters follows RWKV-LM (with r0 = 0 for one block)", "[rwkv]") {
  Dim size(6, "size"), att(4, "att");
  Generator gen(1);
  SelfAttention m(size, att, 64, /*block_id=*/1, /*num_blocks=*/3, gen, DType::f64);
  const double r0 = 0.5, r1 = 1.0 - 1.0 / 3.0;
  auto decay = m.time_decay.to_vector<double>(), first = m.time_first.to_vector<double>();
  for (int h = 0; h < 4; ++h) {
    CHECK(decay[size_t(h)] == Approx(-5 + 8 * std::pow(h / 3.0, 0.7 + 1.3 * r0)));
    CHECK(first[size_t(h)] == Approx(std::log(0.3) + ((h + 1) % 3 - 1) * 0.5));
  }
  auto mk = m.time_mix_key.to_vector<double>(), mv = m.time_mix_value.to_vector<double>();
  auto mr = m.time_mix_receptance.to_vector<double>();
  for (int i = 0; i < 6; ++i) {
    CHECK(mk[size_t(i)] == Approx(std::pow(i / 6.0, r1)));
    CHECK(mv[size_t(i)] == Approx(std::pow(i / 6.0, r1) + 0.3 * r0));
    CHECK(mr[size_t(i)] == Approx(std::pow(i / 6.0, 0.5 * r1)));
  }
  SelfAttention single(size, att, 64, 0, 1, gen, DType::f64);  // the original divides by zero here
  for (double v : single.time_decay.to_vector<double>()) CHECK(std::isfinite(v));
  CHECK(single.time_decay.to_vector<double>()[3] == Approx(3.0));
}

TEST_CASE("rwkv::SelfAttention: step by step and two chunks equal the whole padded sequence", "[rwkv]") {
  Dim batch(3, "batch"), size(8, "size"), att(6, "att");
  Dim time = dynamic_dim(batch, {5, 2, 4}, "time");
  Generator gen(2);
  SelfAttention m(size, att, 16, 0, 2, gen);
  Tensor x = rnd({time, size, batch}, 3);
  auto [full, full_state] = m(x, time, m.default_initial_state({batch}));
  auto want = valid(full, {batch, time, size}, time);
  const std::vector<int32_t> lens = time.lengths().to_vector<int32_t>();
  State st = m.default_initial_state({batch});
  for (int64_t t = 0; t < 5; ++t) {
    auto [y, next] = m(frame(x, time, t), nn::single_step_dim(), st);
    st = next;
    auto got = y.to_vector<double>({batch, size});
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t c = 0; c < 8; ++c)
        if (t < lens[size_t(b)]) CHECK(got[size_t(b * 8 + c)] == Approx(want[size_t((b * 5 + t) * 8 + c)]).margin(1e-5));
  }
  auto [x1, t1] = slice(x, time, 0, 3);  // lengths {3, 2, 3}
  auto [x2, t2] = slice(x, time, 3);     // lengths {2, 0, 1}
  auto [y1, s1] = m(x1, t1, m.default_initial_state({batch}));
  auto [y2, s2] = m(x2, t2, s1);
  auto g1 = valid(y1, {batch, t1, size}, t1), g2 = valid(y2, {batch, t2, size}, t2);
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t t = 0; t < lens[size_t(b)]; ++t)
      for (int64_t c = 0; c < 8; ++c) {
        double got = t < 3 ? g1[size_t((b * 3 + t) * 8 + c)] : g2[size_t((b * 2 + t - 3) * 8 + c)];
        CHECK(got == Approx(want[size_t((b * 5 + t) * 8 + c)]).margin(1e-5));
      }
  // The carried states agree: the last valid x and the WKV state (as num / den).
  CHECK_VEC_APPROX(s2.x_prev.to_vector<double>({batch, size}), full_state.x_prev.to_vector<double>({batch, size}), 0, 0);
  CHECK_VEC_APPROX((s2.wkv.num / s2.wkv.den).to_vector<double>({batch, att}),
                   (full_state.wkv.num / full_state.wkv.den).to_vector<double>({batch, att}), 1e-5, 1e-5);
}

TEST_CASE("rwkv::SelfAttention: parameter gradients match float64 finite differences", "[rwkv]") {
  Dim batch(2, "batch"), size(4, "size"), att(3, "att");
  Dim time = dynamic_dim(batch, {5, 3}, "time");
  Generator gen(4);
  SelfAttention m(size, att, 16, 1, 2, gen, DType::f64);
  Tensor x = rnd({batch, time, size}, 5, DType::f64), w = rnd({batch, time, size}, 6, DType::f64);
  // Whole padded sequences (a carried state passes values, not gradients: truncated BPTT).
  check_param_grads(m, [&] {
    Tensor y = m(x, time, m.default_initial_state({batch})).first;
    return reduce_sum(copy_masked(y, {time}) * w, {batch, time, size});
  }, 1);
}

TEST_CASE("rwkv::SelfAttention: errors name the module and the Dims", "[rwkv]") {
  Dim batch(2, "batch"), size(4, "size"), att(3, "att"), time(5, "time");
  Generator gen(5);
  CHECK_THROWS_WITH(SelfAttention(size, att, 16, 2, 2, gen), Catch::Contains("block_id"));
  SelfAttention m(size, att, 16, 0, 2, gen);
  Tensor x = rnd({batch, time, size}, 7);
  CHECK_THROWS_WITH(m(x, Dim(5, "other"), m.default_initial_state({batch})),
                    Catch::Contains("rwkv::SelfAttention") && Catch::Contains("other"));
  CHECK_THROWS_WITH(m(rnd({batch, time, att}, 8), time, m.default_initial_state({batch})), Catch::Contains("size:4"));
}

#pragma once
// Checks shared by the module tests: parameter gradients against float64 central differences,
// and comparing only the valid frames of padded outputs.
#include <dimx/nn.h>

#include "test_util.h"

#include <filesystem>
#include <map>

namespace dimx_test {

// A golden file written by tests/reference/make_*_golden.py: the module's parameters under
// their PyTorch names, everything else under "io.", and the case's settings as metadata.
struct GoldenFile {
  dimx::SafeTensors file;
  std::map<std::string, std::string> meta;
  explicit GoldenFile(const std::string& name)
      : file(dimx::SafeTensors::open(
            (std::filesystem::path(__FILE__).parent_path() / "golden" / (name + ".safetensors")).string())),
        meta(file.metadata()) {}
  bool flag(const std::string& k) const { return meta.at(k) == "true"; }
  int64_t integer(const std::string& k) const { return std::stoll(meta.at(k)); }
  bool has(const std::string& k) const { return file.contains(k); }
  Tensor get(const std::string& k, const Dims& dims, DType dt = DType::f32) const { return file.load(k, dims, dt); }
  // io.lengths over `batch`, as the lengths of a dynamic Dim.
  std::vector<int32_t> lengths(const dimx::Dim& batch) const {
    auto v = file.load("io.lengths", {batch}).to_vector<int64_t>();
    return std::vector<int32_t>(v.begin(), v.end());
  }
  // The file's parameters into m by name: every parameter found and shaped right, every other
  // key an "io." one.
  template <class M>
  void load_module(M& m) const {
    dimx::LoadReport rep = dimx::nn::load_state(m, file, /*strict=*/false);
    CHECK(rep.missing.empty());
    CHECK(rep.mismatched.empty());
    for (const auto& k : rep.unexpected) CHECK(k.rfind("io.", 0) == 0);
  }
};

// Random float64/f32 data in a permuted layout, so results never depend on the layout.
inline dimx::Tensor rnd(const Dims& dims, uint32_t seed, DType dt = DType::f32, double lo = -1.5, double hi = 1.5) {
  Tensor t = Tensor::from_vector<double>(dims, random_doubles(size_t(numel_of(dims)), seed, lo, hi)).astype(dt);
  auto perms = dim_permutations(dims, 24);
  return t.transpose_to(perms[seed % perms.size()]);
}

// d loss / d p of every parameter of `m` (a float64 module) against central differences,
// every `stride`-th element.
template <class M, class Loss>
void check_param_grads(M& m, Loss&& loss, size_t stride = 5) {
  using namespace dimx;
  auto params = nn::named_parameters(m);
  REQUIRE(!params.empty());
  std::vector<Tensor> leaves;
  for (auto& [name, t] : params) leaves.push_back(*t);
  std::vector<Tensor> g = grad(loss(), leaves);
  for (size_t i = 0; i < params.size(); ++i) {
    INFO(params[i].first);
    Tensor& t = *params[i].second;
    const Dims d = t.dims();
    auto base = t.to_vector<double>(d), an = g[i].to_vector<double>(d);
    for (size_t j = 0; j < base.size(); j += stride) {
      auto at = [&](double delta) {
        std::vector<double> v = base;
        v[j] += delta;
        NoGradGuard ng;
        t.copy_from(Tensor::from_vector<double>(d, v));
        double l = loss().template item<double>();
        t.copy_from(Tensor::from_vector<double>(d, base));
        return l;
      };
      CHECK(an[j] == Approx((at(1e-6) - at(-1e-6)) / 2e-6).epsilon(1e-6).margin(1e-7));
    }
  }
}

// Values of x in the order of `dims` with the padded frames of `time` set to 0.
inline std::vector<double> valid(const Tensor& x, const Dims& dims, const Dim& time) {
  return dimx::copy_masked(x, {time}).to_vector<double>(dims);
}

using dimx::frame;

// Runs `att` on x three ways and checks the valid frames agree: the whole sequence, one step
// at a time, and a chunk of 3 frames followed by the rest (lengths {3,2,3} then {2,0,1}).
template <class Att>
void check_decoding_invariants(const Att& att, const Dim& batch, const Dim& time, const Dim& out, const Tensor& x,
                               double tol) {
  using namespace dimx;
  const Dims od{batch, time, out};
  const int64_t C = out.size();
  auto [full, full_state] = att(x, time, att.default_initial_state({batch}));
  CHECK(full_state.accum_axis == time);
  auto want = valid(full, od, time);
  const std::vector<int32_t> lens = time.lengths().to_vector<int32_t>();
  const int64_t T = time.extent();

  {  // step by step
    auto state = att.default_initial_state({batch});
    for (int64_t t = 0; t < T; ++t) {
      auto [y, next] = att(frame(x, time, t), nn::single_step_dim(), state);
      state = next;
      CHECK(state.accum_axis.extent() == t + 1);
      auto got = y.template to_vector<double>({batch, out});
      for (int64_t b = 0; b < int64_t(lens.size()); ++b)
        for (int64_t c = 0; c < C; ++c)
          if (t < lens[size_t(b)]) {
            INFO("step " << t << " sequence " << b);
            CHECK(got[size_t(b * C + c)] == Approx(want[size_t((b * T + t) * C + c)]).margin(tol));
          }
    }
  }
  {  // two chunks with the carried state
    auto [x1, t1] = slice(x, time, 0, 3);
    auto [x2, t2] = slice(x, time, 3);
    CHECK(t1.lengths().template to_vector<int32_t>() == std::vector<int32_t>{3, 2, 3});
    CHECK(t2.lengths().template to_vector<int32_t>() == std::vector<int32_t>{2, 0, 1});
    auto [y1, st1] = att(x1, t1, att.default_initial_state({batch}));
    auto [y2, st2] = att(x2, t2, st1);
    CHECK(st2.accum_axis.lengths().template to_vector<int32_t>() == lens);
    auto g1 = valid(y1, {batch, t1, out}, t1), g2 = valid(y2, {batch, t2, out}, t2);
    for (int64_t b = 0; b < int64_t(lens.size()); ++b)
      for (int64_t t = 0; t < lens[size_t(b)]; ++t)
        for (int64_t c = 0; c < C; ++c) {
          INFO("sequence " << b << " frame " << t);
          double got = t < 3 ? g1[size_t((b * 3 + t) * C + c)] : g2[size_t((b * 2 + t - 3) * C + c)];
          CHECK(got == Approx(want[size_t((b * T + t) * C + c)]).margin(tol));
        }
    // The carried keys equal the whole sequence's keys, frame for frame.
    auto ka = valid(st2.k_accum, {batch, st2.accum_axis, att.heads, att.key_dim_per_head}, st2.accum_axis);
    auto kf = valid(full_state.k_accum, {batch, time, att.heads, att.key_dim_per_head}, time);
    CHECK_VEC_APPROX(ka, kf, 1e-6, 1e-6);
  }
}

}  // namespace dimx_test

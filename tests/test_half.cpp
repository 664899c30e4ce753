// bf16 and f16: conversions (rounding, specials), matmul with f32 accumulation, gather,
// safetensors, and the other ops computing in f32 with one rounding (test_half_grad holds
// every op and its gradients to float64).
#include <filesystem>

#include "test_util.h"

using namespace dimx;
using namespace dimx_test;

namespace {
std::vector<float> through(const std::vector<float>& v, DType dt) {
  Dim n(int64_t(v.size()), "n");
  Tensor t = Tensor::from_vector<float>({n}, v).astype(dt);
  CHECK(t.dtype() == dt);
  return t.to_vector<float>();
}
}  // namespace

TEST_CASE("half: exact values round-trip, others round to nearest even", "[half]") {
  std::vector<float> exact{0.0f, -0.0f, 1.0f, -2.5f, 0.15625f, 1024.0f, kInf, -kInf};
  CHECK(through(exact, DType::bf16) == exact);
  CHECK(through(exact, DType::f16) == exact);
  // bf16 keeps 8 significant bits: 1 + 2^-8 is halfway and goes to the even 1.0; 1 + 3*2^-8 to 1 + 2^-6.
  CHECK(through({1.0f + 0x1p-8f, 1.0f + 0x3p-8f, 3.14159265f}, DType::bf16) ==
        std::vector<float>{1.0f, 1.0f + 0x1p-6f, 3.140625f});
  // f16 keeps 11 significant bits and overflows past 65504.
  CHECK(through({1.0f + 0x1p-11f, 1.0f + 0x3p-11f, 3.14159265f, 65504.0f, 70000.0f}, DType::f16) ==
        std::vector<float>{1.0f, 1.0f + 0x1p-9f, 3.140625f, 65504.0f, kInf});
  CHECK(through({1e30f}, DType::bf16)[0] == Approx(1e30f).epsilon(1e-2));
  CHECK(std::isnan(through({kNaN}, DType::bf16)[0]));
  CHECK(std::isnan(through({kNaN}, DType::f16)[0]));
  // bf16 <-> f16 directly, and to integers.
  Dim n(2, "n");
  Tensor b = Tensor::from_vector<float>({n}, std::vector<float>{1.5f, -3.0f}).astype(DType::bf16);
  CHECK(b.astype(DType::f16).to_vector<float>() == std::vector<float>{1.5f, -3.0f});
  CHECK(b.astype(DType::i32).to_vector<int32_t>() == std::vector<int32_t>{1, -3});
  CHECK(Tensor::full({n}, 0.5, DType::f16).to_vector<float>() == std::vector<float>{0.5f, 0.5f});
  CHECK(b.str() == "Tensor[bf16, cpu]{n:2}");
  CHECK(b.to_string().find("1.5") != std::string::npos);
}

TEST_CASE("half: matmul widens to f32, accumulates in f32 and rounds once", "[half]") {
  Dim batch(3, "batch"), m(5, "m"), k(40, "k"), n(6, "n");
  for (DType dt : {DType::bf16, DType::f16}) {
    INFO(dtype_name(dt));
    Tensor a = random_tensor({batch, m, k}, 1).astype(dt), b = random_tensor({n, k, batch}, 2).astype(dt);
    Tensor want = matmul(a.astype(DType::f32), b.astype(DType::f32), k).astype(dt);
    for (const Tensor& la : layouts(a, 6))
      for (const Tensor& lb : layouts(b, 6)) {
        Tensor y = matmul(la, lb, k);
        CHECK(y.dtype() == dt);
        CHECK(y.to_vector<float>(want.dims()) == want.to_vector<float>());
      }
  }
}

TEST_CASE("half: gather, views, concat and safetensors move the bits unchanged", "[half]") {
  Dim batch(2, "batch"), six(6, "six"), k(3, "k");
  Tensor x = random_tensor({batch, six}, 3).astype(DType::bf16);
  Tensor idx = Tensor::from_vector<int32_t>({batch, k}, std::vector<int32_t>{5, 0, 2, 1, 1, 4}).with_sparse_dim(six);
  std::vector<float> xv = x.to_vector<float>(), g = gather(x, idx).to_vector<float>({batch, k});
  CHECK(g == std::vector<float>{xv[5], xv[0], xv[2], xv[7], xv[7], xv[10]});
  CHECK(x.transpose_to({six, batch}).to_vector<float>({batch, six}) == xv);
  auto [c, cd] = concat({{x, six}, {x, six}});
  CHECK(c.dtype() == DType::bf16);
  auto path = std::filesystem::temp_directory_path() / ("dimx_half_" + std::to_string(::getpid()) + ".safetensors");
  Tensor f = x.astype(DType::f16);
  save_safetensors(path.string(), {{"b", x}, {"h", f}});
  SafeTensors file = SafeTensors::open(path.string());
  CHECK(file.info("b").dtype == "BF16");
  CHECK(file.info("h").dtype == "F16");
  CHECK(file.load("b", {batch, six}, DType::bf16).to_vector<float>() == xv);
  CHECK(file.load("h", {batch, six}, DType::f16).to_vector<float>() == f.to_vector<float>());
  CHECK(file.load("h", {batch, six}).dtype() == DType::f32);
  std::filesystem::remove(path);
}

TEST_CASE("half: other ops compute in f32 and round once to the operands' dtype", "[half]") {
  Dim batch(3, "batch"), time = dynamic_dim(batch, {5, 2, 4}), feat(40, "feat");
  for (DType dt : {DType::bf16, DType::f16}) {
    INFO(dtype_name(dt));
    Tensor h = random_tensor({batch, time, feat}, 9).astype(dt), g = random_tensor({feat, batch}, 10).astype(dt);
    Tensor hf = h.astype(DType::f32), gf = g.astype(DType::f32);
    // Each result is bit for bit the f32 op on the widened values, rounded: one rounding.
    auto same = [&](const Tensor& got, const Tensor& f32_result) {
      CHECK(got.dtype() == dt);
      Tensor want = f32_result.astype(dt);
      CHECK(vec_identical(got.to_vector<float>(want.dims()), want.to_vector<float>()));
    };
    same(h + g, hf + gf);
    same(h * 0.1, hf * 0.1);  // the scalar is f32's 0.1, not 0.1 rounded to half first
    same(0.5 - h, 0.5 - hf);  // a scalar that is a half number too
    for (const Tensor& l : layouts(h, 6)) {  // in any layout
      same(sigmoid(l), sigmoid(hf));
      same(l - g, hf - gf);
    }
    same(pow(h, g), pow(hf, gf));
    same(exp(h), exp(hf));
    same(gelu(h), gelu(hf));
    same(reduce_sum(h, {time, feat}), reduce_sum(hf, {time, feat}));
    same(reduce_mean(h, {batch, time}), reduce_mean(hf, {batch, time}));
    same(reduce_logsumexp(h, {feat}), reduce_logsumexp(hf, {feat}));
    same(softmax(h, time), softmax(hf, time));
    same(log_softmax(h, feat), log_softmax(hf, feat));
    same(cumsum(h, time), cumsum(hf, time));
    same(where(h > 0.0, h, g), where(hf > 0.0, hf, gf));
    same(clip(h, -0.3, 0.3), clip(hf, -0.3, 0.3));
    CHECK((h > g).dtype() == DType::boolean);
    CHECK((h > g).to_vector<bool>({batch, time, feat}) == (hf > gf).to_vector<bool>({batch, time, feat}));
    CHECK(reduce_argmax(h, feat).to_vector<int64_t>() == reduce_argmax(hf, feat).to_vector<int64_t>());
    // Random numbers in half are the f32 stream rounded.
    Generator g1(3), g2(3);
    same(random_normal({batch, feat}, g1, 0, 1, dt), random_normal({batch, feat}, g2, 0, 1, DType::f32));
    // A half fill and an empty contraction.
    Dim none(0, "none");
    Tensor e = matmul(Tensor::zeros({batch, none}, dt), Tensor::zeros({none, feat}, dt), {none});
    CHECK(e.dtype() == dt);
    CHECK(e.to_vector<float>() == std::vector<float>(size_t(3 * 40), 0.0f));
  }
}

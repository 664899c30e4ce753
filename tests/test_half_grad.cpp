// bf16 and f16 that compute and train: every differentiable op against float64 (the table in
// half_cases.h), half leaves and their gradients, accumulation in half, astype's gradient in
// every direction, and the dtypes that still cannot require grad.
#include "half_cases.h"

using namespace dimx;
using namespace dimx_test;

namespace {
const DType kHalf[] = {DType::bf16, DType::f16};
}  // namespace

TEST_CASE("half: every op and its gradients match float64 within the half tolerances", "[half]") {
  HalfDims d;
  const std::vector<HalfCase> cases = half_cases(d);
  CHECK(cases.size() > 90);
  for (const HalfCase& c : cases)
    for (DType dt : kHalf) check_half_case(c, dt, Device::cpu());
}

TEST_CASE("half: a half leaf keeps its gradient in its dtype and accumulates it there", "[half]") {
  Dim batch(3, "batch"), feat(5, "feat");
  for (DType dt : kHalf) {
    INFO(dtype_name(dt));
    Tensor v = random_tensor({batch, feat}, 4).astype(dt);
    Tensor x = v.with_requires_grad();
    CHECK(x.requires_grad());
    CHECK(x.dtype() == dt);
    // x used three times: the engine sums the three gradients (in half) before the leaf gets them.
    Tensor y = reduce_sum(x * x + exp(x) - x * 0.5, {batch, feat});
    CHECK(y.dtype() == dt);
    backward(y);
    Tensor g = x.grad();
    REQUIRE(g.defined());
    CHECK(g.dtype() == dt);
    const std::vector<double> xv = v.to_vector<double>();
    std::vector<double> want(xv.size());
    for (size_t i = 0; i < xv.size(); ++i) want[i] = 2 * xv[i] + std::exp(xv[i]) - 0.5;
    // Each of the three terms is rounded to half before the engine adds them (in half), so the
    // error is relative to the terms (|2x| + e^x + 0.5 < 12 for |x| < 2), not to their sum.
    const double rtol = dt == DType::bf16 ? 1.6e-2 : 1e-3, atol = 12 * rtol;
    CHECK_VEC_APPROX(g.to_vector<double>(), want, rtol, atol);
    // A second backward adds into the leaf's slot: the sum of two half gradients, rounded.
    backward(reduce_sum(x * 3.0, {batch, feat}));
    CHECK(x.grad().dtype() == dt);
    std::vector<double> twice = want;
    for (double& w : twice) w += 3;
    CHECK_VEC_APPROX(x.grad().to_vector<double>(), twice, rtol, atol);
    CHECK(x.grad().to_vector<float>() == add(g, Tensor::full({batch, feat}, 3, dt)).to_vector<float>());
    // set_grad takes the leaf's dtype only.
    CHECK_THROWS_WITH(x.set_grad(Tensor::zeros({batch, feat})), Catch::Contains("dtype"));
    x.set_grad(Tensor::zeros({batch, feat}, dt));
    CHECK(x.grad().dtype() == dt);
  }
}

TEST_CASE("half: a half parameter trains: the loss falls under plain gradient steps", "[half]") {
  Dim batch(8, "batch"), in(6, "in"), out(3, "out");
  for (DType dt : kHalf) {
    INFO(dtype_name(dt));
    Tensor x = random_tensor({batch, in}, 1).astype(dt);
    Tensor target = matmul(x, random_tensor({out, in}, 2, -0.5f, 0.5f).astype(dt), {in});
    Tensor w = (random_tensor({out, in}, 3) * 0.3).astype(dt).with_requires_grad();
    auto loss_of = [&] { return reduce_mean(square(matmul(x, w, {in}) - target), {batch, out}); };
    const double first = loss_of().item<double>();
    for (int step = 0; step < 30; ++step) {
      w.zero_grad();
      Tensor loss = loss_of();
      CHECK(loss.dtype() == dt);
      backward(loss);
      REQUIRE(w.grad().dtype() == dt);
      NoGradGuard ng;
      w.copy_from(w - w.grad() * 0.2);
    }
    CHECK(loss_of().item<double>() < 0.5 * first);
  }
}

TEST_CASE("half: astype is differentiable between every pair of floating dtypes", "[half]") {
  Dim n(7, "n");
  const DType all[] = {DType::f32, DType::f64, DType::bf16, DType::f16};
  for (DType src : all)
    for (DType dst : all) {
      INFO(dtype_name(src) << " -> " << dtype_name(dst));
      Tensor x = random_tensor({n}, 5).astype(src).with_requires_grad();
      Tensor y = x.astype(dst);
      CHECK(y.dtype() == dst);
      CHECK(y.requires_grad());
      Tensor w = random_tensor({n}, 6, 0.5f, 1.5f).astype(dst);
      Tensor g = grad(y, {x}, w)[0];
      // The gradient is the output's gradient cast back to the source dtype.
      CHECK(g.dtype() == src);
      CHECK(g.to_vector<double>() == w.astype(src).to_vector<double>());
    }
  // A cast to an integer or bool dtype cuts the graph.
  Tensor x = random_tensor({n}, 5).astype(DType::bf16).with_requires_grad();
  CHECK_FALSE(x.astype(DType::i32).requires_grad());
  CHECK_FALSE(x.astype(DType::boolean).requires_grad());
  CHECK(x.astype(DType::f32).astype(DType::f16).astype(DType::f64).requires_grad());
}

TEST_CASE("half: integer and bool tensors still cannot require grad; mixed dtypes stay an error", "[half]") {
  Dim n(4, "n");
  for (DType dt : {DType::i32, DType::i64, DType::boolean})
    CHECK_THROWS_WITH(Tensor::zeros({n}, dt).with_requires_grad(),
                      Catch::Contains("with_requires_grad") && Catch::Contains(dtype_name(dt)) &&
                          Catch::Contains("n:4"));
  CHECK(is_float_like(DType::bf16));
  CHECK(is_float_like(DType::f16));
  CHECK(is_float_like(DType::f32));
  CHECK_FALSE(is_float_like(DType::i64));
  CHECK_FALSE(is_floating(DType::bf16));
  Tensor b = Tensor::ones({n}, DType::bf16), h = Tensor::ones({n}, DType::f16), f = Tensor::ones({n});
  CHECK_THROWS_WITH(b + h, Catch::Contains("add") && Catch::Contains("dtype mismatch") && Catch::Contains("bf16") &&
                               Catch::Contains("f16"));
  CHECK_THROWS_WITH(b * f, Catch::Contains("mul") && Catch::Contains("dtype mismatch"));
  CHECK_THROWS_WITH(where(f > 0.0, b, h), Catch::Contains("where") && Catch::Contains("dtype mismatch"));
  CHECK_THROWS_WITH(matmul(b, h, {n}), Catch::Contains("matmul") && Catch::Contains("dtype mismatch"));
  // Errors name the operands as given, not their f32 widenings.
  CHECK_THROWS_WITH(logical_and(b, b), Catch::Contains("logical_and") && Catch::Contains("bf16"));
  CHECK_THROWS_WITH(logical_not(h), Catch::Contains("logical_not") && Catch::Contains("f16"));
  Dim m(3, "m");
  CHECK_THROWS_WITH(add(Tensor::ones({n}, DType::f16), Tensor::ones({m}, DType::f16)),
                    Catch::Contains("no operand has all dims") && Catch::Contains("f16"));
}

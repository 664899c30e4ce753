// dimx::layer_norm: against a float64 loop in every layout (the feature Dim innermost or not)
// and on strided views, over padded Dims, its gradients against float64 finite differences,
// bf16/f16, determinism, errors.
#include <dimx/autograd.h>
#include <dimx/nn/layer_norm.h>
#include <dimx/normalization.h>

#include "test_util.h"

using namespace dimx;
using namespace dimx_test;
using Catch::Matchers::Contains;

namespace {

Tensor f64(const Dims& dims, uint32_t seed, double lo = -2, double hi = 2) {
  return Tensor::from_vector<double>(dims, random_doubles(size_t(numel_of(dims)), seed, lo, hi));
}

// layer_norm by loops in f64 over `rows` rows of n entries (row-major, the feature innermost).
std::vector<double> naive(const std::vector<double>& x, int64_t rows, int64_t n, const std::vector<double>* w,
                          const std::vector<double>* b, double eps) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    const double* xr = x.data() + r * n;
    double m = 0, v = 0;
    for (int64_t i = 0; i < n; ++i) m += xr[i];
    m /= double(n);
    for (int64_t i = 0; i < n; ++i) v += (xr[i] - m) * (xr[i] - m);
    v /= double(n);
    for (int64_t i = 0; i < n; ++i) {
      double t = (xr[i] - m) / std::sqrt(v + eps);
      if (w) t *= (*w)[size_t(i)];
      if (b) t += (*b)[size_t(i)];
      y[size_t(r * n + i)] = t;
    }
  }
  return y;
}

}  // namespace

TEST_CASE("layer_norm matches a float64 loop in every layout, with and without weight and bias", "[normalization]") {
  Dim batch(3, "batch"), time(4, "time"), feat(7, "feat");
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor x = f64({batch, time, feat}, 1, -3, 3).astype(dt);
    Tensor w = f64({feat}, 2).astype(dt), b = f64({feat}, 3).astype(dt);
    const auto xv = x.to_vector<double>({batch, time, feat});
    const auto wv = w.to_vector<double>(), bv = b.to_vector<double>();
    const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
    for (int variant = 0; variant < 4; ++variant) {
      const Tensor wt = variant & 1 ? w : Tensor(), bt = variant & 2 ? b : Tensor();
      const auto want = naive(xv, 12, 7, variant & 1 ? &wv : nullptr, variant & 2 ? &bv : nullptr, 1e-3);
      // Every permutation: the feature Dim innermost (B = 1), in the middle or outermost (B > 1).
      for (const Tensor& xl : layouts(x)) {
        INFO(dtype_name(dt) << " variant " << variant << " layout " << dims_str(xl.dims()));
        Tensor y = layer_norm(xl, feat, wt, bt, 1e-3);
        CHECK(y.dims() == xl.dims());
        CHECK(y.dtype() == dt);
        CHECK_VEC_APPROX(y.to_vector<double>({batch, time, feat}), want, tol, tol);
      }
    }
  }
}

TEST_CASE("layer_norm of long rows matches the loop (vector sums, many row groups)", "[normalization]") {
  for (int64_t n : {512, 768, 1000}) {
    Dim rows(300, "rows"), feat(n, "feat");
    Tensor x = f64({rows, feat}, 7, -1, 5), w = f64({feat}, 8), b = f64({feat}, 9);
    const auto wv = w.to_vector<double>(), bv = b.to_vector<double>();
    const auto want = naive(x.to_vector<double>(), 300, n, &wv, &bv, 1e-5);
    INFO("n " << n);
    CHECK_VEC_APPROX(layer_norm(x, feat, w, b).to_vector<double>(), want, 1e-12, 1e-12);
    CHECK_VEC_APPROX(layer_norm(x.astype(DType::f32), feat, w.astype(DType::f32), b.astype(DType::f32))
                         .to_vector<double>(),
                     want, 1e-4, 1e-4);
  }
}

TEST_CASE("layer_norm of strided views: a slice, a broadcast Dim, the feature Dim strided", "[normalization]") {
  Dim batch(2, "batch"), time(6, "time"), feat(8, "feat"), heads(3, "heads"), t3(3, "t3");
  Tensor big = f64({batch, time, feat}, 4);
  Tensor w = f64({feat}, 5), b = f64({feat}, 6);
  const auto wv = w.to_vector<double>(), bv = b.to_vector<double>();
  // A slice along time: rows strided, the feature contiguous.
  Tensor xs = slice(big, time, 1, 4, 1, t3).first;
  CHECK_VEC_APPROX(layer_norm(xs, feat, w, b).to_vector<double>({batch, t3, feat}),
                   naive(xs.to_vector<double>({batch, t3, feat}), 6, 8, &wv, &bv, 1e-5), 1e-12, 1e-12);
  // Broadcast over a new Dim (stride 0): every head gets the same rows.
  Tensor xb = expand_dim(big, heads);
  Tensor yb = layer_norm(xb, feat, w, b);
  CHECK(yb.dims() == xb.dims());
  const auto one = naive(big.to_vector<double>({batch, time, feat}), 12, 8, &wv, &bv, 1e-5);
  std::vector<double> want;
  for (int h = 0; h < 3; ++h) want.insert(want.end(), one.begin(), one.end());
  CHECK_VEC_APPROX(yb.to_vector<double>({heads, batch, time, feat}), want, 1e-12, 1e-12);
  // The feature Dim strided (a slice of a {feat, time} tensor along time).
  Tensor ft = f64({feat, time}, 10);
  Tensor xf = slice(ft, time, 2, 5, 1, t3).first;
  CHECK_VEC_APPROX(layer_norm(xf, feat, w, b).to_vector<double>({t3, feat}),
                   naive(xf.to_vector<double>({t3, feat}), 3, 8, &wv, &bv, 1e-5), 1e-12, 1e-12);
}

TEST_CASE("layer_norm over padded Dims: padding changes no valid output and no parameter gradient", "[normalization]") {
  Dim batch(3, "batch"), feat(6, "feat");
  Dim time = dynamic_dim(batch, {5, 2, 0}, "time");
  std::vector<double> xv = random_doubles(size_t(3 * 5 * 6), 11, -2, 2);
  // NaN and huge values in the padded frames.
  const int32_t lens[3] = {5, 2, 0};
  for (int b = 0; b < 3; ++b)
    for (int t = lens[b]; t < 5; ++t)
      for (int f = 0; f < 6; ++f) xv[size_t((b * 5 + t) * 6 + f)] = (t + f) % 2 ? std::nan("") : 1e30;
  for (bool feature_inner : {true, false}) {
    Tensor x0 = Tensor::from_vector<double>({batch, time, feat}, xv);
    Tensor x = (feature_inner ? x0 : x0.transpose_to({feat, batch, time})).with_requires_grad();
    Tensor w = f64({feat}, 12).with_requires_grad(), b = f64({feat}, 13).with_requires_grad();
    Tensor c = f64({batch, time, feat}, 14);
    Tensor y = layer_norm(x, feat, w, b);
    const auto yv = y.to_vector<double>({batch, time, feat});
    const auto wv = w.to_vector<double>(), bv = b.to_vector<double>();
    const auto want = naive(xv, 15, 6, &wv, &bv, 1e-5), xhat = naive(xv, 15, 6, nullptr, nullptr, 1e-5);
    double dw_want[6] = {}, db_want[6] = {};
    const auto cv = c.to_vector<double>({batch, time, feat});
    for (int bb = 0; bb < 3; ++bb)
      for (int t = 0; t < lens[bb]; ++t)
        for (int f = 0; f < 6; ++f) {
          const size_t i = size_t((bb * 5 + t) * 6 + f);
          INFO("inner " << feature_inner << " b " << bb << " t " << t << " f " << f);
          CHECK(yv[i] == Approx(want[i]).epsilon(1e-12).margin(1e-12));
          dw_want[f] += cv[i] * xhat[i];
          db_want[f] += cv[i];
        }
    auto g = grad(reduce_sum(copy_masked(y * c, {time}), {batch, time, feat}), {w, b});
    CHECK_VEC_APPROX(g[0].to_vector<double>(), std::vector<double>(dw_want, dw_want + 6), 1e-10, 1e-10);
    CHECK_VEC_APPROX(g[1].to_vector<double>(), std::vector<double>(db_want, db_want + 6), 1e-10, 1e-10);
  }
}

TEST_CASE("layer_norm gradients of x, weight and bias match float64 finite differences", "[normalization][grad]") {
  Dim batch(3, "batch"), time(2, "time"), feat(5, "feat");
  for (const Dims& order : {Dims{batch, time, feat}, Dims{feat, batch, time}, Dims{batch, feat, time}}) {
    INFO("layout " << dims_str(order));
    for (int variant = 0; variant < 4; ++variant) {
      Tensor x = f64(order, 20).with_requires_grad();
      Tensor w = variant & 1 ? f64({feat}, 21).with_requires_grad() : Tensor();
      Tensor b = variant & 2 ? f64({feat}, 22).with_requires_grad() : Tensor();
      Tensor c = f64({batch, time, feat}, 23);
      auto loss_t = [&] { return reduce_sum(layer_norm(x, feat, w, b) * c, {batch, time, feat}); };
      auto loss = [&] { return loss_t().item<double>(); };
      std::vector<Tensor> wrt{x};
      if (w.defined()) wrt.push_back(w);
      if (b.defined()) wrt.push_back(b);
      auto g = grad(loss_t(), wrt);
      for (size_t i = 0; i < wrt.size(); ++i) {
        INFO("variant " << variant << " input " << i);
        CHECK_VEC_APPROX(g[i].to_vector<double>(wrt[i].dims()), finite_diff(wrt[i], loss), 1e-6, 1e-8);
      }
    }
  }
  // Only the parameters require grad: no gradient of x is computed, those of w and b are right.
  Tensor x = f64({batch, time, feat}, 24);
  Tensor w = f64({feat}, 25).with_requires_grad(), b = f64({feat}, 26).with_requires_grad();
  Tensor c = f64({batch, time, feat}, 27);
  auto loss_t = [&] { return reduce_sum(layer_norm(x, feat, w, b) * c, {batch, time, feat}); };
  auto g = grad(loss_t(), {w, b});
  CHECK_VEC_APPROX(g[0].to_vector<double>(), finite_diff(w, [&] { return loss_t().item<double>(); }), 1e-6, 1e-8);
  CHECK_VEC_APPROX(g[1].to_vector<double>(), finite_diff(b, [&] { return loss_t().item<double>(); }), 1e-6, 1e-8);
}

TEST_CASE("layer_norm gradients of many long rows are right and the same on every run", "[normalization][grad]") {
  Dim rows(700, "rows"), feat(96, "feat");
  Tensor x = f64({rows, feat}, 30).astype(DType::f32).with_requires_grad();
  Tensor w = f64({feat}, 31).astype(DType::f32).with_requires_grad();
  Tensor b = f64({feat}, 32).astype(DType::f32).with_requires_grad();
  Tensor c = f64({rows, feat}, 33).astype(DType::f32);
  auto run = [&] { return grad(reduce_sum(layer_norm(x, feat, w, b) * c, {rows, feat}), {x, w, b}); };
  auto g1 = run(), g2 = run();
  for (size_t i = 0; i < 3; ++i) CHECK(vec_identical(g1[i].to_vector<float>(), g2[i].to_vector<float>()));
  // Against the same in f64.
  Tensor x64 = x.detach().astype(DType::f64).with_requires_grad(), w64 = w.detach().astype(DType::f64).with_requires_grad();
  Tensor b64 = b.detach().astype(DType::f64).with_requires_grad();
  auto g64 = grad(reduce_sum(layer_norm(x64, feat, w64, b64) * c.astype(DType::f64), {rows, feat}), {x64, w64, b64});
  for (size_t i = 0; i < 3; ++i) CHECK_VEC_APPROX(g1[i].to_vector<double>(), g64[i].to_vector<double>(), 1e-4, 1e-4);
}

TEST_CASE("layer_norm of bf16 and f16 computes in f32 and stores in the input's dtype", "[normalization][half]") {
  Dim batch(4, "batch"), feat(64, "feat");
  for (DType dt : {DType::bf16, DType::f16}) {
    INFO(dtype_name(dt));
    Tensor x = f64({batch, feat}, 40, -3, 3).astype(dt), w = f64({feat}, 41).astype(dt), b = f64({feat}, 42).astype(dt);
    Tensor y = layer_norm(x, feat, w, b);
    CHECK(y.dtype() == dt);
    // The f32 computation on the same (rounded) values, rounded once.
    Tensor want = layer_norm(x.astype(DType::f32), feat, w.astype(DType::f32), b.astype(DType::f32)).astype(dt);
    CHECK_VEC_APPROX(y.to_vector<double>(), want.to_vector<double>(), dt == DType::bf16 ? 1e-2 : 2e-3, 1e-2);
  }
}

TEST_CASE("nn::LayerNorm is layer_norm with its parameters", "[normalization][nn]") {
  Dim batch(2, "batch"), feat(10, "feat");
  nn::LayerNorm ln(feat, 1e-4);
  ln.weight->copy_from(f64({feat}, 50).astype(DType::f32));
  ln.bias->copy_from(f64({feat}, 51).astype(DType::f32));
  Tensor x = f64({feat, batch}, 52).astype(DType::f32);
  CHECK(vec_identical(ln(x).to_vector<float>({batch, feat}),
                      layer_norm(x, feat, *ln.weight, *ln.bias, 1e-4).to_vector<float>({batch, feat})));
}

TEST_CASE("layer_norm errors name the op and the Dims", "[normalization][errors]") {
  Dim batch(2, "batch"), feat(4, "feat"), other(4, "other");
  Tensor x = f64({batch, feat}, 60), w = f64({feat}, 61);
  CHECK_THROWS_WITH(layer_norm(Tensor(), feat), Contains("layer_norm") && Contains("undefined"));
  CHECK_THROWS_WITH(layer_norm(x, other), Contains("layer_norm") && Contains("other:4") && Contains("batch:2"));
  CHECK_THROWS_WITH(layer_norm(x.astype(DType::i32), feat), Contains("layer_norm") && Contains("floating"));
  CHECK_THROWS_WITH(layer_norm(x, feat, {}, {}, -1.0), Contains("layer_norm") && Contains("eps"));
  CHECK_THROWS_WITH(layer_norm(x, feat, {}, {}, std::nan("")), Contains("layer_norm") && Contains("eps"));
  CHECK_THROWS_WITH(layer_norm(x, feat, f64({other}, 62)), Contains("layer_norm") && Contains("weight") && Contains("feat:4"));
  CHECK_THROWS_WITH(layer_norm(x, feat, {}, f64({batch, feat}, 63)), Contains("layer_norm") && Contains("bias") && Contains("batch:2"));
  CHECK_THROWS_WITH(layer_norm(x, feat, w.astype(DType::f32)), Contains("layer_norm") && Contains("dtype"));
  CHECK_THROWS_WITH(layer_norm(x, feat, {}, w.astype(DType::f32)), Contains("layer_norm") && Contains("dtype"));
  Dim dyn = dynamic_dim(batch, {3, 4}, "dyn");
  CHECK_THROWS_WITH(layer_norm(f64({batch, dyn}, 64), dyn), Contains("layer_norm") && Contains("static") && Contains("dyn"));
}

// softmax / log_softmax against a naive reference over every axis (including ones that are not
// innermost), on every input layout; output keeps x's layout; numerical stability.
#include "test_util.h"

using namespace dimx;
using namespace dimx_test;

namespace {

// Reference softmax (or log_softmax) of v (row-major over dims) along `axis`, row-major over `dims`.
std::vector<double> ref_softmax(const std::vector<double>& v, const Dims& dims, const Dim& axis, bool log) {
  long ax = index_of(dims, axis);
  REQUIRE(ax >= 0);
  auto st = row_major_strides(dims);
  int64_t n = axis.extent(), stride = st[static_cast<size_t>(ax)];
  std::vector<double> out(v.size());
  for_each_index(dims, [&](const std::vector<int64_t>& c) {
    if (c[static_cast<size_t>(ax)] != 0) return;
    int64_t base = 0;
    for (size_t i = 0; i < c.size(); ++i) base += c[i] * st[i];
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k < n; ++k) m = std::max(m, v[base + k * stride]);
    double s = 0;
    for (int64_t k = 0; k < n; ++k) s += std::exp(v[base + k * stride] - m);
    for (int64_t k = 0; k < n; ++k) {
      double z = v[base + k * stride] - m;
      out[base + k * stride] = log ? z - std::log(s) : std::exp(z) / s;
    }
  });
  return out;
}

template <class T>
void check_softmax_all_layouts(const std::vector<T>& data, const Dims& dims, const Dim& axis, double rtol,
                               double atol) {
  std::vector<double> v(data.begin(), data.end());
  Tensor x = Tensor::from_vector<T>(dims, data);
  for (bool lg : {false, true}) {
    INFO((lg ? "log_softmax" : "softmax") << " over " << axis.str() << " of " << x.str());
    auto want = ref_softmax(v, dims, axis, lg);
    std::vector<double> first;
    for (const Tensor& lx : layouts(x)) {
      INFO("layout " << dims_str(lx.dims()));
      Tensor r = lg ? log_softmax(lx, axis) : softmax(lx, axis);
      CHECK(r.dtype() == dtype_of<T>());
      CHECK(r.dims() == lx.dims());  // output keeps x's layout
      auto got = r.to_vector<double>(dims);
      CHECK_VEC_APPROX(got, want, rtol, atol);
      if (first.empty())
        first = got;
      else
        CHECK_VEC_APPROX(got, first, rtol, atol);  // summation order may differ by layout
    }
  }
}

}  // namespace

TEST_CASE("softmax: f32 over each axis (not only the innermost), all layouts", "[softmax]") {
  Dim B(3, "batch"), T(7, "time"), F(5, "feat");
  auto data = random_floats(105, 1, -4.f, 4.f);
  // Log-probabilities near 0 carry an absolute error of a few f32 ulps of 1 (log of a sum
  // near 1, summed in another order by another SIMD width): atol 5e-7.
  check_softmax_all_layouts(data, {B, T, F}, T, 1e-5, 5e-7);
  check_softmax_all_layouts(data, {B, T, F}, B, 1e-5, 5e-7);
  check_softmax_all_layouts(data, {B, T, F}, F, 1e-5, 5e-7);
}

TEST_CASE("softmax: f64 tight tolerance, 4 Dims", "[softmax]") {
  Dim B(2, "batch"), H(3, "heads"), Q(4, "q"), K(6, "k");
  auto data = random_doubles(144, 2, -10, 10);
  check_softmax_all_layouts(data, {B, H, Q, K}, Q, 1e-12, 1e-13);
  check_softmax_all_layouts(data, {B, H, Q, K}, K, 1e-12, 1e-13);
}

TEST_CASE("softmax: properties and stability", "[softmax]") {
  Dim B(4, "batch"), T(9, "time");
  auto data = random_floats(36, 3, -3.f, 3.f);
  Tensor x = Tensor::from_vector<float>({B, T}, data);
  // rows sum to 1 (axis T, reduced with the library and by hand)
  Tensor sm = softmax(x, T);
  auto sv = sm.to_vector<double>({B, T});
  for (int64_t b = 0; b < 4; ++b) {
    double s = 0;
    for (int64_t t = 0; t < 9; ++t) {
      CHECK(sv[b * 9 + t] > 0);
      s += sv[b * 9 + t];
    }
    CHECK(s == Approx(1.0).epsilon(1e-6));
  }
  CHECK_VEC_APPROX(reduce_sum(sm, {T}).to_vector<double>({B}), std::vector<double>(4, 1.0), 1e-6, 1e-6);
  // log_softmax == log(softmax)
  CHECK_VEC_APPROX(log_softmax(x, T).to_vector<double>({B, T}), log(sm).to_vector<double>({B, T}), 1e-5, 1e-5);
  // shift invariance with huge offsets: no overflow / NaN
  for (double off : {1000.0, -1000.0, 30000.0}) {
    INFO("offset " << off);
    Tensor xs = x + off;
    auto xsv = xs.to_vector<double>({B, T});  // x + off rounds in f32: reference from the rounded values
    auto a = softmax(xs, T).to_vector<double>({B, T});
    CHECK_VEC_APPROX(a, ref_softmax(xsv, {B, T}, T, false), 1e-5, 1e-7);
    CHECK_VEC_APPROX(log_softmax(xs, T).to_vector<double>({B, T}), ref_softmax(xsv, {B, T}, T, true), 1e-5, 1e-5);
    auto l = log_softmax(xs, T).to_vector<double>({B, T});
    for (double q : l) {
      CHECK(std::isfinite(q));
      CHECK(q <= 1e-6);
    }
  }
  // -inf entries get exactly 0 / -inf; other entries renormalize
  Dim K(4, "K");
  Tensor m = Tensor::from_vector<float>({K}, std::vector<float>{0.f, -kInf, 0.f, -kInf});
  CHECK(softmax(m, K).to_vector<float>() == std::vector<float>{0.5f, 0.f, 0.5f, 0.f});
  auto lm = log_softmax(m, K).to_vector<float>();
  CHECK(lm[0] == Approx(-std::log(2.0)));
  CHECK(lm[1] == -kInf);
  // hand example
  Dim two(2, "two");
  auto hv = softmax(Tensor::from_vector<double>({two}, std::vector<double>{0.0, std::log(3.0)}), two)
                .to_vector<double>();
  CHECK(hv[0] == Approx(0.25).epsilon(1e-14));
  CHECK(hv[1] == Approx(0.75).epsilon(1e-14));
  // axis not in x: error
  CHECK_THROWS_AS(softmax(x, Dim(9, "time")), Error);
}

TEST_CASE("softmax: large tensor, axis in the middle", "[softmax]") {
  Dim B(8, "batch"), T(300, "time"), F(33, "feat");
  auto data = random_floats(8 * 300 * 33, 4, -5.f, 5.f);
  std::vector<double> v(data.begin(), data.end());
  Tensor x = Tensor::from_vector<float>({B, T, F}, data);
  auto want = ref_softmax(v, {B, T, F}, T, false);
  auto wantl = ref_softmax(v, {B, T, F}, T, true);
  for (const auto& perm : std::vector<Dims>{{B, T, F}, {T, F, B}, {F, B, T}}) {
    Tensor lx = x.transpose_to(perm);
    CHECK_VEC_APPROX(softmax(lx, T).to_vector<double>({B, T, F}), want, 1e-5, 1e-8);
    CHECK_VEC_APPROX(log_softmax(lx, T).to_vector<double>({B, T, F}), wantl, 1e-5, 1e-5);
  }
}

// Rows of one to two SIMD vectors take their own paths (a row in one vector, or several rows'
// exponentials in one run): every row length from 1 to 40, padded to per-row lengths that
// include 0 and the full row, with -inf entries and rows of only -inf, f32 and f64.
template <class T>
void check_short_rows() {
  for (int64_t n = 1; n <= 40; ++n) {
    INFO("row length " << n);
    const int64_t rows = 7;
    Dim R(rows, "rows");
    std::vector<int32_t> lens(static_cast<size_t>(rows), 0);
    for (int64_t r = 0; r < rows; ++r) lens[size_t(r)] = int32_t(r == 0 ? 0 : r == 1 ? n : (n * r) / rows + 1);
    Dim N(Tensor::from_vector<int32_t>({R}, lens), "n");
    auto data = random_doubles(static_cast<size_t>(rows * N.extent()), uint32_t(n), -5, 5);
    for (int64_t j = 0; j < N.extent(); ++j) data[size_t(2 * N.extent() + j)] = -kInf;  // a row of only -inf
    data[size_t(3 * N.extent())] = -kInf;
    std::vector<T> typed(data.begin(), data.end());
    Tensor x = Tensor::from_vector<T>({R, N}, typed);
    for (bool lg : {false, true}) {
      INFO((lg ? "log_softmax" : "softmax"));
      auto got = (lg ? log_softmax(x, N) : softmax(x, N)).template to_vector<double>({R, N});
      const double pad = lg ? -kInf : 0.0;
      for (int64_t r = 0; r < rows; ++r) {
        INFO("row " << r << " length " << lens[size_t(r)]);
        const int64_t l = lens[size_t(r)];
        const double* v = data.data() + r * N.extent();
        double m = -kInf, s = 0;
        for (int64_t j = 0; j < l; ++j) m = std::max(m, double(T(v[j])));
        for (int64_t j = 0; j < l; ++j) s += std::exp(double(T(v[j])) - m);
        for (int64_t j = 0; j < N.extent(); ++j) {
          const double g = got[size_t(r * N.extent() + j)];
          if (j >= l || m == -kInf || double(T(v[j])) == -kInf) {
            CHECK(g == pad);
            continue;
          }
          const double z = double(T(v[j])) - m, want = lg ? z - std::log(s) : std::exp(z) / s;
          CHECK(g == Approx(want).epsilon(sizeof(T) == 4 ? 2e-6 : 1e-13).margin(sizeof(T) == 4 ? 1e-6 : 1e-14));
        }
      }
    }
  }
}

TEST_CASE("softmax: short rows of every length, padded, with -inf", "[softmax]") {
  check_short_rows<float>();
  check_short_rows<double>();
}

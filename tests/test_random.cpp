// Seeded random numbers and dropout. Statistical tolerances are ~5 standard errors: loose
// enough for any correct generator, tight enough to catch a wrong one.
#include <catch2/catch.hpp>
#include <dimx/dimx.h>

#include "test_util.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

using namespace dimx;

namespace {

struct Moments {
  double mean = 0, var = 0, minv = 0, maxv = 0;
  size_t nonfinite = 0;
};

template <class T>
Moments rnd_moments(const std::vector<T>& v) {
  Moments m;
  double s = 0, s2 = 0;
  m.minv = m.maxv = static_cast<double>(v.at(0));
  for (T x : v) {
    double d = static_cast<double>(x);
    if (!std::isfinite(d)) ++m.nonfinite;
    s += d;
    m.minv = std::min(m.minv, d);
    m.maxv = std::max(m.maxv, d);
  }
  m.mean = s / static_cast<double>(v.size());
  for (T x : v) s2 += (static_cast<double>(x) - m.mean) * (static_cast<double>(x) - m.mean);
  m.var = s2 / static_cast<double>(v.size() - 1);
  return m;
}

template <class T>
double rnd_corr(const std::vector<T>& a, const std::vector<T>& b) {
  auto ma = rnd_moments(a), mb = rnd_moments(b);
  double c = 0;
  for (size_t i = 0; i < a.size(); ++i)
    c += (static_cast<double>(a[i]) - ma.mean) * (static_cast<double>(b[i]) - mb.mean);
  c /= static_cast<double>(a.size() - 1);
  return c / std::sqrt(ma.var * mb.var);
}

template <class T>
size_t rnd_equal_count(const std::vector<T>& a, const std::vector<T>& b) {
  size_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += a[i] == b[i];
  return n;
}

}  // namespace

TEST_CASE("random: the same seed gives the same numbers", "[random]") {
  Dim a(30, "a"), b(40, "b");
  Generator g1(42), g2(42);
  auto x1 = random_uniform({a, b}, g1).to_vector<float>();
  auto x2 = random_uniform({a, b}, g2).to_vector<float>();
  CHECK(x1.size() == 1200);
  CHECK(dimx_test::vec_identical(x1, x2));
  auto n1 = random_normal({a, b}, g1).to_vector<float>();
  auto n2 = random_normal({a, b}, g2).to_vector<float>();
  CHECK(n1.size() == 1200);
  CHECK(dimx_test::vec_identical(n1, n2));
  CHECK(g1.offset() == g2.offset());
  CHECK(g1.seed() == 42);
}

TEST_CASE("random: different seeds give different, uncorrelated numbers", "[random]") {
  Dim a(100, "a"), b(100, "b");
  for (uint64_t s : {0ull, 1ull, 12345ull}) {
    Generator g1(s), g2(s + 1);
    auto x1 = random_uniform({a, b}, g1).to_vector<float>();
    auto x2 = random_uniform({a, b}, g2).to_vector<float>();
    INFO("seeds " << s << " and " << s + 1);
    CHECK(rnd_equal_count(x1, x2) < 10);
    CHECK(std::abs(rnd_corr(x1, x2)) < 0.05);  // SE ~ 0.01
    auto n1 = random_normal({a, b}, g1).to_vector<double>();
    auto n2 = random_normal({a, b}, g2).to_vector<double>();
    CHECK(rnd_equal_count(n1, n2) < 10);
    CHECK(std::abs(rnd_corr(n1, n2)) < 0.05);
  }
}

TEST_CASE("random: the generator advances, each call gets fresh numbers", "[random]") {
  Dim a(50, "a"), b(20, "b");
  Generator g(7);
  CHECK(g.offset() == 0);
  Generator before = g;
  auto x1 = random_uniform({a, b}, g).to_vector<float>();
  CHECK(g.offset() > 0);
  Generator snapshot = g;  // copies are explicit state: replaying from here repeats the next draw
  auto x2 = random_uniform({a, b}, g).to_vector<float>();
  auto x2again = random_uniform({a, b}, snapshot).to_vector<float>();
  CHECK(x2 == x2again);
  CHECK(rnd_equal_count(x1, x2) < 5);
  CHECK(std::abs(rnd_corr(x1, x2)) < 0.15);  // n = 1000, SE ~ 0.03
  auto x1again = random_uniform({a, b}, before).to_vector<float>();
  CHECK(x1 == x1again);
  // Many small draws never repeat each other.
  Dim four(4, "four");
  std::vector<double> seen;  // f64: 53 random bits make a chance repeat negligible
  for (int i = 0; i < 200; ++i) {
    auto v = random_uniform({four}, g, 0, 1, DType::f64).to_vector<double>();
    seen.insert(seen.end(), v.begin(), v.end());
  }
  std::sort(seen.begin(), seen.end());
  CHECK(std::adjacent_find(seen.begin(), seen.end()) == seen.end());
}

TEST_CASE("random: values are generated row-major over the given Dim order", "[random]") {
  Dim a(7, "a"), b(11, "b");
  Generator g1(99), g2(99);
  auto x = random_uniform({a, b}, g1);
  auto y = random_uniform({b, a}, g2);
  CHECK(x.to_vector<float>({a, b}) == y.to_vector<float>({b, a}));
}

TEMPLATE_TEST_CASE("random_uniform: in range, mean 0.5, flat histogram", "[random]", float, double) {
  using T = TestType;
  Dim n(100000, "n");
  Generator g(2024);
  Tensor u = random_uniform({n}, g, 0, 1, dtype_of<T>());
  CHECK(u.dtype() == dtype_of<T>());
  auto v = u.to_vector<T>();
  REQUIRE(v.size() == 100000);
  auto m = rnd_moments(v);
  CHECK(m.nonfinite == 0);
  CHECK(m.minv >= 0.0);
  CHECK(m.maxv < 1.0);
  CHECK(m.mean == Approx(0.5).margin(0.005));         // SE 0.0009
  CHECK(m.var == Approx(1.0 / 12).margin(0.0015));    // SE 0.00024
  std::vector<size_t> hist(10, 0);
  for (T x : v) hist[std::min<size_t>(9, static_cast<size_t>(x * 10))]++;
  for (size_t i = 0; i < 10; ++i) {
    INFO("bin " << i);
    CHECK(std::abs(static_cast<double>(hist[i]) / 1e5 - 0.1) < 0.005);  // SE 0.00095
  }
  // Lag-1 autocorrelation of a good stream is ~0.
  std::vector<T> a(v.begin(), v.end() - 1), b(v.begin() + 1, v.end());
  CHECK(std::abs(rnd_corr(a, b)) < 0.02);  // SE 0.0032

  SECTION("custom range") {
    auto w = random_uniform({n}, g, -2, 3, dtype_of<T>()).template to_vector<T>();
    auto mw = rnd_moments(w);
    CHECK(mw.minv >= -2.0);
    CHECK(mw.maxv < 3.0);
    CHECK(mw.minv < -1.99);
    CHECK(mw.maxv > 2.99);
    CHECK(mw.mean == Approx(0.5).margin(0.025));  // SE 0.0046
    CHECK(mw.var == Approx(25.0 / 12).margin(0.04));
  }
}

TEMPLATE_TEST_CASE("random_normal: mean 0, std 1, Gaussian shape", "[random]", float, double) {
  using T = TestType;
  Dim n(100000, "n");
  Generator g(77);
  Tensor t = random_normal({n}, g, 0, 1, dtype_of<T>());
  CHECK(t.dtype() == dtype_of<T>());
  auto v = t.to_vector<T>();
  auto m = rnd_moments(v);
  CHECK(m.nonfinite == 0);
  CHECK(m.mean == Approx(0.0).margin(0.016));               // SE 0.0032
  CHECK(std::sqrt(m.var) == Approx(1.0).margin(0.012));     // SE 0.0022
  size_t within1 = 0, within2 = 0, pos = 0;
  double m4 = 0;
  for (T x : v) {
    double d = static_cast<double>(x);
    within1 += std::abs(d) < 1;
    within2 += std::abs(d) < 2;
    pos += d > 0;
    m4 += d * d * d * d;
  }
  CHECK(within1 / 1e5 == Approx(0.6827).margin(0.007));  // SE 0.0015
  CHECK(within2 / 1e5 == Approx(0.9545).margin(0.004));  // SE 0.00066
  CHECK(pos / 1e5 == Approx(0.5).margin(0.008));
  CHECK(m4 / 1e5 == Approx(3.0).margin(0.15));           // kurtosis; SE ~0.03
  CHECK(m.maxv > 3.5);                                    // tails exist (P(max<3.5) ~ 1e-10)
  CHECK(m.minv < -3.5);

  SECTION("mean and stddev parameters") {
    auto w = random_normal({n}, g, 3, 2, dtype_of<T>()).template to_vector<T>();
    auto mw = rnd_moments(w);
    CHECK(mw.mean == Approx(3.0).margin(0.032));
    CHECK(std::sqrt(mw.var) == Approx(2.0).margin(0.025));
  }
}

TEST_CASE("dropout: eval mode returns x unchanged", "[random][dropout]") {
  Dim a(20, "a"), b(30, "b");
  Generator g(5);
  Tensor x = random_uniform({a, b}, g, 1, 2);
  Generator gd(6);
  Tensor y = dropout(x, 0.5, gd, false);
  CHECK(y.dims() == x.dims());
  CHECK(y.dtype() == x.dtype());
  CHECK(y.to_vector<float>({a, b}) == x.to_vector<float>({a, b}));
  Tensor y2 = dropout(x, 0.0, gd, true);  // p = 0 in training: nothing dropped, scale 1
  CHECK(y2.to_vector<float>({a, b}) == x.to_vector<float>({a, b}));
}

TEMPLATE_TEST_CASE("dropout: training zeros about p and scales the rest by 1/(1-p)", "[random][dropout]",
                   float, double) {
  using T = TestType;
  Dim a(100, "a"), b(1000, "b");
  Generator g(11);
  Tensor x = random_uniform({a, b}, g, 1, 2, dtype_of<T>());  // never 0
  auto xv = x.to_vector<T>({a, b});
  for (double p : {0.1, 0.3, 0.75}) {
    INFO("p = " << p);
    Generator gd(12);
    Tensor y = dropout(x, p, gd, true);
    CHECK(y.dtype() == dtype_of<T>());
    auto yv = y.to_vector<T>({a, b});
    REQUIRE(yv.size() == xv.size());
    size_t zeros = 0, badscale = 0;
    for (size_t i = 0; i < yv.size(); ++i) {
      if (yv[i] == T(0)) {
        ++zeros;
      } else {
        double want = static_cast<double>(xv[i]) / (1 - p);
        if (std::abs(static_cast<double>(yv[i]) - want) > 4 * std::numeric_limits<T>::epsilon() * want) ++badscale;
      }
    }
    CHECK(badscale == 0);
    CHECK(static_cast<double>(zeros) / 1e5 == Approx(p).margin(0.008));  // SE <= 0.0016
    // Same seed, same mask; the generator advanced so a second call differs.
    Generator gd2(12);
    CHECK(dropout(x, p, gd2, true).to_vector<T>({a, b}) == yv);
    auto y3 = dropout(x, p, gd2, true).to_vector<T>({a, b});
    CHECK(y3 != yv);
  }
}

TEST_CASE("dropout: broadcast_over shares the mask along those Dims", "[random][dropout]") {
  Dim batch(40, "batch"), time(25, "time"), feat(50, "feat");
  Generator g(3);
  Tensor x = random_uniform({batch, time, feat}, g, 1, 2);
  const double p = 0.4;
  SECTION("shared along time") {
    for (const Dims& layout : {Dims{batch, time, feat}, Dims{time, feat, batch}, Dims{feat, batch, time}}) {
      INFO("layout " << dims_str(layout));
      Generator gd(4);
      Tensor y = dropout(x.transpose_to(layout), p, gd, true, {time});
      auto yv = y.to_vector<float>({batch, feat, time});
      auto xv = x.to_vector<float>({batch, feat, time});
      size_t inconsistent = 0, dropped = 0, badscale = 0;
      for (size_t bf = 0; bf < 40 * 50; ++bf) {
        bool z0 = yv[bf * 25] == 0;
        dropped += z0;
        for (size_t t = 0; t < 25; ++t) {
          size_t i = bf * 25 + t;
          inconsistent += (yv[i] == 0) != z0;
          if (yv[i] != 0 && std::abs(yv[i] - xv[i] / (1 - p)) > 1e-6 * xv[i]) ++badscale;
        }
      }
      CHECK(inconsistent == 0);
      CHECK(badscale == 0);
      CHECK(dropped / 2000.0 == Approx(p).margin(0.06));  // SE 0.011
    }
  }
  SECTION("shared along two Dims: the mask depends on feat only") {
    Generator gd(8);
    Tensor y = dropout(x, p, gd, true, {time, batch});
    auto yv = y.to_vector<float>({feat, batch, time});
    size_t inconsistent = 0, dropped = 0;
    for (size_t f = 0; f < 50; ++f) {
      bool z0 = yv[f * 1000] == 0;
      dropped += z0;
      for (size_t i = 0; i < 1000; ++i) inconsistent += (yv[f * 1000 + i] == 0) != z0;
    }
    CHECK(inconsistent == 0);
    CHECK(dropped > 5);   // Binomial(50, 0.4): P(<=5) ~ 1e-7
    CHECK(dropped < 35);
  }
}

TEST_CASE("dropout: the mask does not depend on x's layout", "[random][dropout]") {
  // Core semantics: results never depend on the layout order of the inputs.
  Dim a(30, "a"), b(40, "b");
  Generator g(21);
  Tensor x = random_uniform({a, b}, g, 1, 2);
  Generator g1(22), g2(22);
  auto y1 = dropout(x, 0.5, g1, true).to_vector<float>({a, b});
  auto y2 = dropout(x.transpose_to({b, a}), 0.5, g2, true).to_vector<float>({a, b});
  CHECK(y1 == y2);
}

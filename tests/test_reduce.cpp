// Reductions against naive reference loops over one and several Dims, on every input layout:
// sum/mean/max/min/logsumexp (f32, f64, ints), any/all (bool), argmax/argmin (i64, sparse_dim).
#include "test_util.h"

#include <functional>

using namespace dimx;
using namespace dimx_test;

namespace {

using Reducer = std::function<double(const std::vector<double>&)>;

double r_sum(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s;
}
double r_mean(const std::vector<double>& v) { return v.empty() ? 0.0 : r_sum(v) / double(v.size()); }
double r_max(const std::vector<double>& v) {
  double m = -std::numeric_limits<double>::infinity();
  for (double x : v) m = std::max(m, x);
  return m;
}
double r_min(const std::vector<double>& v) {
  double m = std::numeric_limits<double>::infinity();
  for (double x : v) m = std::min(m, x);
  return m;
}
double r_lse(const std::vector<double>& v) {
  double m = r_max(v);
  if (std::isinf(m)) return m;
  double s = 0;
  for (double x : v) s += std::exp(x - m);
  return m + std::log(s);
}
double r_any(const std::vector<double>& v) {
  for (double x : v)
    if (x != 0) return 1;
  return 0;
}
double r_all(const std::vector<double>& v) {
  for (double x : v)
    if (x == 0) return 0;
  return 1;
}
double r_argmax(const std::vector<double>& v) {
  size_t best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[best]) best = i;
  return double(best);
}
double r_argmin(const std::vector<double>& v) {
  size_t best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] < v[best]) best = i;
  return double(best);
}

Dims minus(const Dims& all, const Dims& rm) {
  Dims out;
  for (const auto& d : all)
    if (index_of(rm, d) < 0) out.push_back(d);
  return out;
}

// Reference: values (row-major over x_dims) reduced over `red` (iterated row-major in `red`
// order), result row-major over `out`.
std::vector<double> ref_reduce(const std::vector<double>& v, const Dims& x_dims, const Dims& red, const Dims& out,
                               const Reducer& f) {
  std::vector<double> want;
  Dims all = out;
  all.insert(all.end(), red.begin(), red.end());
  for_each_index(out, [&](const std::vector<int64_t>& oc) {
    std::vector<double> vals;
    for_each_index(red, [&](const std::vector<int64_t>& rc) {
      std::vector<int64_t> c = oc;
      c.insert(c.end(), rc.begin(), rc.end());
      vals.push_back(v[offset_in(x_dims, all, c)]);
    });
    want.push_back(f(vals));
  });
  return want;
}

bool same_dim_set(const Dims& a, const Dims& b) {
  if (a.size() != b.size()) return false;
  for (const auto& d : a)
    if (index_of(b, d) < 0) return false;
  return true;
}

// Runs reduce(x, op, red) on every layout of x; checks dtype, Dims, values, layout identity.
void check_reduce(ReduceOp op, const char* name, const Reducer& f, const Tensor& x, const std::vector<double>& v,
                  const Dims& red, DType out_dtype, double rtol, double atol) {
  Dims out = minus(x.dims(), red);
  INFO(name << " over " << dims_str(red) << " of " << x.str());
  auto want = ref_reduce(v, x.dims(), red, out, f);
  std::vector<double> first;
  bool have = false;
  for (const Tensor& lx : layouts(x)) {
    INFO("layout " << dims_str(lx.dims()));
    Tensor r = reduce(lx, op, red);
    CHECK(r.dtype() == out_dtype);
    CHECK(same_dim_set(r.dims(), out));
    auto got = r.to_vector<double>(out);
    CHECK_VEC_APPROX(got, want, rtol, atol);
    if (!have) {
      first = got;
      have = true;
    } else if (rtol == 0 && atol == 0) {
      // order-independent ops (max/min/any/all): bitwise identical across layouts
      CHECK(vec_identical(got, first));
    } else {
      // sums accumulate in a layout-dependent order: equal up to rounding (10x tighter than
      // the reference tolerance)
      CHECK_VEC_APPROX(got, first, rtol / 10, atol / 10);
    }
  }
}

std::vector<Dims> reduce_sets(const Dim& A, const Dim& B, const Dim& C) {
  return {{A}, {B}, {C}, {A, C}, {C, B}, {B, A}, {A, B, C}, {C, A, B}};
}

}  // namespace

TEST_CASE("reduce: f32 sum/mean/max/min/logsumexp over one and several Dims", "[reduce]") {
  Dim A(3, "A"), B(4, "B"), C(5, "C");
  auto fv = random_floats(60, 1);
  std::vector<double> v(fv.begin(), fv.end());
  Tensor x = Tensor::from_vector<float>({A, B, C}, fv);
  for (const auto& red : reduce_sets(A, B, C)) {
    check_reduce(ReduceOp::sum, "sum", r_sum, x, v, red, DType::f32, 1e-5, 1e-5);
    check_reduce(ReduceOp::mean, "mean", r_mean, x, v, red, DType::f32, 1e-5, 1e-5);
    check_reduce(ReduceOp::max, "max", r_max, x, v, red, DType::f32, 0, 0);
    check_reduce(ReduceOp::min, "min", r_min, x, v, red, DType::f32, 0, 0);
    check_reduce(ReduceOp::logsumexp, "logsumexp", r_lse, x, v, red, DType::f32, 1e-5, 1e-5);
  }
  // the convenience wrappers are the same ops
  CHECK(reduce_sum(x, {B}).to_vector<float>({A, C}) == reduce(x, ReduceOp::sum, {B}).to_vector<float>({A, C}));
  CHECK(reduce_max(x, {A, C}).to_vector<float>({B}) == reduce(x, ReduceOp::max, {C, A}).to_vector<float>({B}));
  // full reduction gives a scalar
  Tensor s = reduce_sum(x, {A, B, C});
  CHECK(s.ndim() == 0);
  CHECK(s.item<float>() == Approx(r_sum(v)).epsilon(1e-5).margin(1e-5));
  CHECK(reduce_max(x, {C, B, A}).item<float>() == float(r_max(v)));
}

TEST_CASE("reduce: f64 with tight tolerance, large values in logsumexp", "[reduce]") {
  Dim A(6, "A"), B(7, "B"), C(3, "C");
  auto v = random_doubles(126, 2, -50, 50);
  Tensor x = Tensor::from_vector<double>({A, B, C}, v);
  for (const auto& red : reduce_sets(A, B, C)) {
    check_reduce(ReduceOp::sum, "sum", r_sum, x, v, red, DType::f64, 1e-12, 1e-12);
    check_reduce(ReduceOp::mean, "mean", r_mean, x, v, red, DType::f64, 1e-12, 1e-12);
    check_reduce(ReduceOp::max, "max", r_max, x, v, red, DType::f64, 0, 0);
    check_reduce(ReduceOp::min, "min", r_min, x, v, red, DType::f64, 0, 0);
    check_reduce(ReduceOp::logsumexp, "logsumexp", r_lse, x, v, red, DType::f64, 1e-12, 1e-12);
  }
  // logsumexp is stable far from 0 (naive exp would overflow / underflow)
  Dim K(4, "K");
  std::vector<float> big{1000.f, 1000.f, 999.f, -1000.f};
  std::vector<float> neg{-1000.f, -1000.f, -1001.f, -3000.f};
  double want_big = 1000.0 + std::log(2.0 + std::exp(-1.0));
  double want_neg = -1000.0 + std::log(2.0 + std::exp(-1.0));
  CHECK(reduce_logsumexp(Tensor::from_vector<float>({K}, big), {K}).item<float>() == Approx(want_big).epsilon(1e-6));
  CHECK(reduce_logsumexp(Tensor::from_vector<float>({K}, neg), {K}).item<float>() == Approx(want_neg).epsilon(1e-6));
  // all -inf: -inf (not NaN)
  std::vector<float> ninf(4, -kInf);
  CHECK(reduce_logsumexp(Tensor::from_vector<float>({K}, ninf), {K}).item<float>() == -kInf);
}

TEST_CASE("reduce: integer dtypes", "[reduce]") {
  Dim A(3, "A"), B(4, "B"), C(5, "C");
  auto iv = random_ints(60, 3, -100, 100);
  std::vector<double> v(iv.begin(), iv.end());
  Tensor x = Tensor::from_vector<int32_t>({A, B, C}, iv);
  for (const auto& red : reduce_sets(A, B, C)) {
    for (const Tensor& lx : layouts(x)) {
      Dims out = minus(x.dims(), red);
      INFO("over " << dims_str(red) << " layout " << dims_str(lx.dims()));
      CHECK(reduce_sum(lx, red).to_vector<double>(out) == ref_reduce(v, x.dims(), red, out, r_sum));
      CHECK(reduce_max(lx, red).to_vector<double>(out) == ref_reduce(v, x.dims(), red, out, r_max));
      CHECK(reduce_min(lx, red).to_vector<double>(out) == ref_reduce(v, x.dims(), red, out, r_min));
      CHECK(is_integer(reduce_max(lx, red).dtype()));
    }
  }
  auto lv = random_int64s(12, 4, -(int64_t(1) << 40), int64_t(1) << 40);
  Dim K(12, "K");
  int64_t s = 0;
  for (auto q : lv) s += q;
  Tensor xl = Tensor::from_vector<int64_t>({K}, lv);
  CHECK(reduce_sum(xl, {K}).item<int64_t>() == s);
  CHECK(reduce_max(xl, {K}).item<int64_t>() == *std::max_element(lv.begin(), lv.end()));
}

TEST_CASE("reduce: any/all on bool", "[reduce]") {
  Dim A(3, "A"), B(4, "B"), C(5, "C");
  for (double p : {0.1, 0.5, 0.9}) {
    auto bv = random_bools(60, 5 + uint32_t(p * 10), p);
    std::vector<double> v;
    for (bool q : bv) v.push_back(q ? 1 : 0);
    Tensor x = Tensor::from_vector<bool>({A, B, C}, bv);
    for (const auto& red : reduce_sets(A, B, C)) {
      check_reduce(ReduceOp::any, "any", r_any, x, v, red, DType::boolean, 0, 0);
      check_reduce(ReduceOp::all, "all", r_all, x, v, red, DType::boolean, 0, 0);
    }
  }
  Dim K(3, "K");
  CHECK(reduce_any(Tensor::from_vector<bool>({K}, std::vector<bool>{false, false, false}), {K}).item<bool>() == false);
  CHECK(reduce_any(Tensor::from_vector<bool>({K}, std::vector<bool>{false, false, true}), {K}).item<bool>() == true);
  CHECK(reduce_all(Tensor::from_vector<bool>({K}, std::vector<bool>{true, true, true}), {K}).item<bool>() == true);
  CHECK(reduce_all(Tensor::from_vector<bool>({K}, std::vector<bool>{true, false, true}), {K}).item<bool>() == false);
}

TEST_CASE("reduce: argmax/argmin with ties, every axis and layout", "[reduce]") {
  Dim A(3, "A"), B(4, "B"), C(5, "C");
  // small integers as floats: many ties, first index must win
  auto iv = random_ints(60, 7, -2, 2);
  std::vector<float> fv(iv.begin(), iv.end());
  std::vector<double> v(iv.begin(), iv.end());
  Tensor x = Tensor::from_vector<float>({A, B, C}, fv);
  for (const Dim& axis : {A, B, C}) {
    Dims out = minus(x.dims(), {axis});
    auto want_max = ref_reduce(v, x.dims(), {axis}, out, r_argmax);
    auto want_min = ref_reduce(v, x.dims(), {axis}, out, r_argmin);
    for (const Tensor& lx : layouts(x)) {
      INFO("axis " << axis.str() << " layout " << dims_str(lx.dims()));
      Tensor am = reduce_argmax(lx, axis);
      Tensor an = reduce_argmin(lx, axis);
      CHECK(am.dtype() == DType::i64);
      CHECK(an.dtype() == DType::i64);
      REQUIRE(am.sparse_dim().has_value());
      CHECK(*am.sparse_dim() == axis);
      REQUIRE(an.sparse_dim().has_value());
      CHECK(*an.sparse_dim() == axis);
      CHECK(same_dim_set(am.dims(), out));
      CHECK(am.to_vector<double>(out) == want_max);
      CHECK(an.to_vector<double>(out) == want_min);
    }
  }
  // random floats (no ties), i32 and f64 inputs
  auto rv = random_doubles(60, 8);
  Tensor xd = Tensor::from_vector<double>({C, A, B}, rv);
  auto want = ref_reduce(rv, {C, A, B}, {B}, {C, A}, r_argmax);
  for (const Tensor& lx : layouts(xd)) CHECK(reduce_argmax(lx, B).to_vector<double>({C, A}) == want);
  auto ii = random_ints(60, 9, -1000, 1000);
  std::vector<double> iid(ii.begin(), ii.end());
  Tensor xi = Tensor::from_vector<int32_t>({A, B, C}, ii);
  auto wanti = ref_reduce(iid, {A, B, C}, {A}, {B, C}, r_argmin);
  for (const Tensor& lx : layouts(xi)) CHECK(reduce_argmin(lx, A).to_vector<double>({B, C}) == wanti);
  // hand example
  Dim K(5, "K");
  Tensor h = Tensor::from_vector<float>({K}, std::vector<float>{1, 3, -2, 3, -2});
  CHECK(reduce_argmax(h, K).item<int64_t>() == 1);
  CHECK(reduce_argmin(h, K).item<int64_t>() == 2);
}

TEST_CASE("reduce: results usable downstream and input unchanged", "[reduce]") {
  Dim A(3, "A"), B(4, "B");
  auto fv = random_floats(12, 10);
  Tensor x = Tensor::from_vector<float>({A, B}, fv);
  // x - max over B then exp: all values <= 1 and the max per row is exactly 1
  Tensor m = reduce_max(x, {B});
  Tensor e = exp(x - m);
  auto ev = e.to_vector<float>({A, B});
  for (int64_t a = 0; a < 3; ++a) {
    float mx = 0;
    for (int64_t b = 0; b < 4; ++b) {
      CHECK(ev[a * 4 + b] <= 1.f);
      mx = std::max(mx, ev[a * 4 + b]);
    }
    CHECK(mx == 1.f);
  }
  CHECK(x.to_vector<float>() == fv);
  CHECK_THROWS_AS(reduce_sum(x, {Dim(3, "A")}), Error);
}

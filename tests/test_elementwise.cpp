// Elementwise ops against naive reference loops: binary ops with broadcasting by Dim identity
// over different Dim sets and orders, comparisons (bool), logical ops, unary math, where, clip;
// every result is checked identical across input layouts (transpose_to permutations).
#include "test_util.h"

#include <functional>

using namespace dimx;
using namespace dimx_test;

namespace {

// A tensor plus its values (row-major over `dims`) as doubles for the reference.
struct Ref {
  Dims dims;
  std::vector<double> v;
  Tensor t;
};

Ref ref_f32(const Dims& dims, uint32_t seed, float lo = -2.f, float hi = 2.f) {
  auto f = random_floats(static_cast<size_t>(numel_of(dims)), seed, lo, hi);
  return {dims, std::vector<double>(f.begin(), f.end()), Tensor::from_vector<float>(dims, f)};
}
// Small integers stored as f32 (so equal/less_equal hit ties).
Ref ref_f32_int(const Dims& dims, uint32_t seed, int lo = -3, int hi = 3) {
  auto i = random_ints(static_cast<size_t>(numel_of(dims)), seed, lo, hi);
  std::vector<float> f(i.begin(), i.end());
  return {dims, std::vector<double>(i.begin(), i.end()), Tensor::from_vector<float>(dims, f)};
}
Ref ref_f64(const Dims& dims, uint32_t seed, double lo = -2, double hi = 2) {
  auto f = random_doubles(static_cast<size_t>(numel_of(dims)), seed, lo, hi);
  return {dims, f, Tensor::from_vector<double>(dims, f)};
}
Ref ref_i32(const Dims& dims, uint32_t seed, int lo = -20, int hi = 20, bool nonzero = false) {
  auto i = random_ints(static_cast<size_t>(numel_of(dims)), seed, lo, hi);
  if (nonzero)
    for (auto& x : i)
      if (x == 0) x = 3;
  return {dims, std::vector<double>(i.begin(), i.end()), Tensor::from_vector<int32_t>(dims, i)};
}
Ref ref_i64(const Dims& dims, uint32_t seed, int64_t lo = -20, int64_t hi = 20, bool nonzero = false) {
  auto i = random_int64s(static_cast<size_t>(numel_of(dims)), seed, lo, hi);
  if (nonzero)
    for (auto& x : i)
      if (x == 0) x = -7;
  return {dims, std::vector<double>(i.begin(), i.end()), Tensor::from_vector<int64_t>(dims, i)};
}
Ref ref_bool(const Dims& dims, uint32_t seed) {
  auto b = random_bools(static_cast<size_t>(numel_of(dims)), seed);
  std::vector<double> v;
  for (bool x : b) v.push_back(x ? 1.0 : 0.0);
  return {dims, v, Tensor::from_vector<bool>(dims, b)};
}

bool has_all(const Tensor& t, const Dims& dims) {
  for (const auto& d : dims)
    if (!t.has_dim(d)) return false;
  return t.ndim() == dims.size();
}

bool same_dim_set(const Dims& a, const Dims& b) {
  if (a.size() != b.size()) return false;
  for (const auto& d : a)
    if (index_of(b, d) < 0) return false;
  return true;
}

using Fn1 = std::function<double(double)>;
using Fn2 = std::function<double(double, double)>;
using Fn3 = std::function<double(double, double, double)>;

// Reference over `out` (fixed order) from operand refs.
std::vector<double> reference(const Dims& out, const std::vector<const Ref*>& ops,
                              const std::function<double(const std::vector<double>&)>& f) {
  std::vector<double> want;
  std::vector<double> args(ops.size());
  for_each_index(out, [&](const std::vector<int64_t>& c) {
    for (size_t k = 0; k < ops.size(); ++k) args[k] = ops[k]->v[offset_in(ops[k]->dims, out, c)];
    want.push_back(f(args));
  });
  return want;
}

// Checks `op(la, lb)` for every pair of layouts of a and b: dtype, Dim set, output layout rule,
// values (approx vs reference) and exact equality across layouts.
void check_binary(const std::string& what, BinaryOp op, const Fn2& fn, const Ref& a, const Ref& b,
                  const Dims& out, DType out_dtype, bool allow_all = false, double rtol = 1e-5,
                  double atol = 1e-6) {
  INFO(what << ": a " << dims_str(a.dims) << " b " << dims_str(b.dims));
  auto want = reference(out, {&a, &b}, [&](const std::vector<double>& x) { return fn(x[0], x[1]); });
  std::vector<double> first;
  bool have_first = false;
  for (const Tensor& la : layouts(a.t, 6)) {
    for (const Tensor& lb : layouts(b.t, 3)) {
      INFO("layouts a " << dims_str(la.dims()) << " b " << dims_str(lb.dims()));
      Tensor r = combine(la, op, lb, allow_all);
      CHECK(r.dtype() == out_dtype);
      CHECK(same_dim_set(r.dims(), out));
      // Output laid out like the first operand that has all output Dims.
      if (has_all(la, out))
        CHECK(r.dims() == la.dims());
      else if (has_all(lb, out))
        CHECK(r.dims() == lb.dims());
      auto got = r.to_vector<double>(out);
      CHECK_VEC_APPROX(got, want, rtol, atol);
      if (!have_first) {
        first = got;
        have_first = true;
      } else {
        CHECK(vec_identical(got, first));
      }
    }
  }
}

void check_unary(const std::string& what, UnaryOp op, const Fn1& fn, const Ref& x, DType out_dtype,
                 double rtol = 1e-5, double atol = 1e-6) {
  INFO(what << " on " << dtype_name(x.t.dtype()));
  auto want = reference(x.dims, {&x}, [&](const std::vector<double>& v) { return fn(v[0]); });
  std::vector<double> first;
  bool have_first = false;
  for (const Tensor& lx : layouts(x.t)) {
    INFO("layout " << dims_str(lx.dims()));
    Tensor r = apply(op, lx);
    CHECK(r.dtype() == out_dtype);
    CHECK(r.dims() == lx.dims());
    auto got = r.to_vector<double>(x.dims);
    CHECK_VEC_APPROX(got, want, rtol, atol);
    if (!have_first) {
      first = got;
      have_first = true;
    } else {
      CHECK(vec_identical(got, first));
    }
  }
}

double floor_mod(double a, double b) { return a - std::floor(a / b) * b; }
int64_t int_floordiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}
int64_t int_floormod(int64_t a, int64_t b) { return a - int_floordiv(a, b) * b; }

struct Dims3 {
  Dim A{3, "A"}, B{4, "B"}, C{5, "C"};
};

}  // namespace

TEST_CASE("elementwise: f32 arithmetic with broadcasting by identity", "[elementwise]") {
  Dims3 d;
  const Dim &A = d.A, &B = d.B, &C = d.C;
  Dims out{A, B, C};

  struct Case {
    const char* name;
    BinaryOp op;
    Fn2 fn;
  };
  std::vector<Case> cases{
      {"add", BinaryOp::add, [](double x, double y) { return x + y; }},
      {"sub", BinaryOp::sub, [](double x, double y) { return x - y; }},
      {"mul", BinaryOp::mul, [](double x, double y) { return x * y; }},
      {"maximum", BinaryOp::maximum, [](double x, double y) { return std::max(x, y); }},
      {"minimum", BinaryOp::minimum, [](double x, double y) { return std::min(x, y); }},
  };
  // Operand Dim sets: same set different order, subset, superset, scalar.
  Ref a = ref_f32({A, B, C}, 1);
  Ref same = ref_f32({C, B, A}, 2);
  Ref sub = ref_f32({C, A}, 3);
  Ref one = ref_f32({B}, 4);
  Ref scal = ref_f32({}, 5);
  for (const auto& c : cases) {
    check_binary(c.name, c.op, c.fn, a, same, out, DType::f32);
    check_binary(c.name, c.op, c.fn, a, sub, out, DType::f32);
    check_binary(c.name, c.op, c.fn, sub, a, out, DType::f32);  // second operand has all
    check_binary(c.name, c.op, c.fn, one, a, out, DType::f32);
    check_binary(c.name, c.op, c.fn, a, scal, out, DType::f32);
    check_binary(c.name, c.op, c.fn, scal, a, out, DType::f32);
  }
}

TEST_CASE("elementwise: f32 div, pow, floordiv, mod", "[elementwise]") {
  Dims3 d;
  const Dim &A = d.A, &B = d.B, &C = d.C;
  Dims out{A, B, C};
  Ref a = ref_f32({A, B, C}, 11);
  Ref bpos = ref_f32({B, A}, 12, 0.5f, 3.f);
  check_binary("div", BinaryOp::div, [](double x, double y) { return x / y; }, a, bpos, out, DType::f32);
  Ref apos = ref_f32({C, A, B}, 13, 0.1f, 3.f);
  Ref expo = ref_f32({C}, 14, -2.f, 2.f);
  check_binary("pow", BinaryOp::pow, [](double x, double y) { return std::pow(x, y); }, apos, expo,
               {C, A, B}, DType::f32, 1e-5, 1e-5);
  // floordiv and mod follow floor division (Python/TF floormod): sign of mod follows divisor.
  Ref num = ref_f32({A, B, C}, 15, -10.f, 10.f);
  Ref den = ref_f32({A, C}, 16, 0.5f, 3.f);
  Ref nden = ref_f32({A, C}, 17, -3.f, -0.5f);
  for (const Ref* dd : {&den, &nden}) {
    check_binary("floordiv", BinaryOp::floordiv, [](double x, double y) { return std::floor(x / y); }, num, *dd,
                 out, DType::f32, 0, 1e-6);
    check_binary("mod", BinaryOp::mod, floor_mod, num, *dd, out, DType::f32, 1e-5, 2e-5);
  }
  // a == floordiv(a, b) * b + mod(a, b)
  Tensor q = floordiv(num.t, den.t), m = mod(num.t, den.t);
  Tensor back = q * den.t + m;
  CHECK_VEC_APPROX(back.to_vector<double>(out), num.t.to_vector<double>(out), 1e-5, 1e-5);
  // mod results lie in [0, b) for b > 0 and (b, 0] for b < 0
  auto mv = m.to_vector<double>(out);
  auto dv = reference(out, {&den}, [](const std::vector<double>& x) { return x[0]; });
  for (size_t i = 0; i < mv.size(); ++i) {
    CHECK(mv[i] >= 0.0);
    CHECK(mv[i] < dv[i] + 1e-6);
  }
  // hand examples
  Dim k(4, "k");
  Tensor x = Tensor::from_vector<float>({k}, std::vector<float>{7, -7, 7, -7});
  Tensor y = Tensor::from_vector<float>({k}, std::vector<float>{2, 2, -2, -2});
  CHECK(floordiv(x, y).to_vector<float>() == std::vector<float>{3, -4, -4, 3});
  CHECK(mod(x, y).to_vector<float>() == std::vector<float>{1, 1, -1, -1});
}

TEST_CASE("elementwise: operators and scalar operands", "[elementwise]") {
  Dims3 d;
  const Dim &A = d.A, &B = d.B;
  Ref a = ref_f32({A, B}, 21);
  Ref b = ref_f32({B}, 22, 0.5f, 2.f);
  Dims out{A, B};
  auto R = [&](const Fn2& f, const Ref& x, const Ref& y) {
    return reference(out, {&x, &y}, [&](const std::vector<double>& v) { return f(v[0], v[1]); });
  };
  auto R1 = [&](const Fn1& f, const Ref& x) {
    return reference(out, {&x}, [&](const std::vector<double>& v) { return f(v[0]); });
  };
  for (const Tensor& la : layouts(a.t)) {
    INFO("layout " << dims_str(la.dims()));
    CHECK_VEC_APPROX((la + b.t).to_vector<double>(out), R([](double x, double y) { return x + y; }, a, b));
    CHECK_VEC_APPROX((la - b.t).to_vector<double>(out), R([](double x, double y) { return x - y; }, a, b));
    CHECK_VEC_APPROX((b.t - la).to_vector<double>(out), R([](double x, double y) { return y - x; }, a, b));
    CHECK_VEC_APPROX((la * b.t).to_vector<double>(out), R([](double x, double y) { return x * y; }, a, b));
    CHECK_VEC_APPROX((la / b.t).to_vector<double>(out), R([](double x, double y) { return x / y; }, a, b));
    CHECK_VEC_APPROX((la + 1.5).to_vector<double>(out), R1([](double x) { return x + 1.5; }, a));
    CHECK_VEC_APPROX((2.0 - la).to_vector<double>(out), R1([](double x) { return 2.0 - x; }, a));
    CHECK_VEC_APPROX((la * -3.0).to_vector<double>(out), R1([](double x) { return x * -3.0; }, a));
    CHECK_VEC_APPROX((1.0 / (la * la + 1.0)).to_vector<double>(out),
                     R1([](double x) { return 1.0 / (x * x + 1.0); }, a));
    CHECK_VEC_APPROX((-la).to_vector<double>(out), R1([](double x) { return -x; }, a));
    CHECK_VEC_APPROX(combine(la, BinaryOp::pow, 2.0).to_vector<double>(out), R1([](double x) { return x * x; }, a));
    CHECK_VEC_APPROX(combine(2.0, BinaryOp::pow, la).to_vector<double>(out),
                     R1([](double x) { return std::pow(2.0, x); }, a));
    CHECK_VEC_APPROX((la > 0.0).to_vector<double>(out), R1([](double x) { return x > 0 ? 1.0 : 0.0; }, a));
    CHECK_VEC_APPROX((0.5 <= la).to_vector<double>(out), R1([](double x) { return 0.5 <= x ? 1.0 : 0.0; }, a));
    // scalar ops keep the tensor's dtype and layout
    CHECK((la + 1.0).dtype() == DType::f32);
    CHECK((la + 1.0).dims() == la.dims());
    CHECK((la > 0.0).dtype() == DType::boolean);
  }
  // f64 scalar ops keep f64
  Ref a64 = ref_f64({A, B}, 23);
  Tensor r = a64.t * 0.1;
  CHECK(r.dtype() == DType::f64);
  CHECK_VEC_APPROX(r.to_vector<double>(out), R1([](double x) { return x * 0.1; }, a64), 1e-15, 1e-15);
}

TEST_CASE("elementwise: comparisons return bool", "[elementwise]") {
  Dims3 d;
  const Dim &A = d.A, &B = d.B, &C = d.C;
  Dims out{A, B, C};
  Ref a = ref_f32_int({A, B, C}, 31);
  Ref b = ref_f32_int({C, A}, 32);
  auto t = [](bool x) { return x ? 1.0 : 0.0; };
  check_binary("equal", BinaryOp::equal, [&](double x, double y) { return t(x == y); }, a, b, out, DType::boolean);
  check_binary("not_equal", BinaryOp::not_equal, [&](double x, double y) { return t(x != y); }, a, b, out,
               DType::boolean);
  check_binary("less", BinaryOp::less, [&](double x, double y) { return t(x < y); }, a, b, out, DType::boolean);
  check_binary("less_equal", BinaryOp::less_equal, [&](double x, double y) { return t(x <= y); }, a, b, out,
               DType::boolean);
  check_binary("greater", BinaryOp::greater, [&](double x, double y) { return t(x > y); }, a, b, out,
               DType::boolean);
  check_binary("greater_equal", BinaryOp::greater_equal, [&](double x, double y) { return t(x >= y); }, b, a, out,
               DType::boolean);
  // sanity: ties actually occur in this data, so equal is not trivially false
  auto eq = equal(a.t, b.t).to_vector<bool>(out);
  CHECK(std::count(eq.begin(), eq.end(), true) > 0);
  CHECK(std::count(eq.begin(), eq.end(), false) > 0);
  // integer comparisons
  Ref ia = ref_i32({A, B}, 33, -3, 3), ib = ref_i32({B}, 34, -3, 3);
  check_binary("i32 less", BinaryOp::less, [&](double x, double y) { return t(x < y); }, ia, ib, {A, B},
               DType::boolean);
  check_binary("i32 equal", BinaryOp::equal, [&](double x, double y) { return t(x == y); }, ia, ib, {A, B},
               DType::boolean);
  // NaN compares unequal
  Dim k(2, "k");
  Tensor n = Tensor::from_vector<float>({k}, std::vector<float>{kNaN, 1.f});
  CHECK(equal(n, n).to_vector<bool>() == std::vector<bool>{false, true});
  CHECK(not_equal(n, n).to_vector<bool>() == std::vector<bool>{true, false});
  CHECK(isnan(n).to_vector<bool>() == std::vector<bool>{true, false});
}

TEST_CASE("elementwise: logical ops on bool", "[elementwise]") {
  Dims3 d;
  const Dim &A = d.A, &B = d.B, &C = d.C;
  Dims out{A, B, C};
  Ref a = ref_bool({A, B, C}, 41);
  Ref b = ref_bool({B, C}, 42);
  check_binary("and", BinaryOp::logical_and, [](double x, double y) { return (x != 0 && y != 0) ? 1.0 : 0.0; }, a,
               b, out, DType::boolean);
  check_binary("or", BinaryOp::logical_or, [](double x, double y) { return (x != 0 || y != 0) ? 1.0 : 0.0; }, a, b,
               out, DType::boolean);
  check_binary("xor", BinaryOp::logical_xor, [](double x, double y) { return ((x != 0) != (y != 0)) ? 1.0 : 0.0; },
               b, a, out, DType::boolean);
  check_unary("not", UnaryOp::logical_not, [](double x) { return x != 0 ? 0.0 : 1.0; }, a, DType::boolean);
  // operators
  auto got = (a.t & b.t).to_vector<bool>(out);
  auto got2 = (!(!a.t | !b.t)).to_vector<bool>(out);  // De Morgan
  CHECK(got == got2);
  CHECK(((a.t ^ b.t) ^ b.t).to_vector<bool>(out) == a.t.to_vector<bool>(out));
}

TEST_CASE("elementwise: integer arithmetic", "[elementwise]") {
  Dim A(3, "A"), B(4, "B"), C(5, "C");
  Dims out{A, B, C};
  for (int which = 0; which < 2; ++which) {
    DType dt = which == 0 ? DType::i32 : DType::i64;
    Ref a = which == 0 ? ref_i32({A, B, C}, 51, -50, 50) : ref_i64({A, B, C}, 51, -50, 50);
    Ref b = which == 0 ? ref_i32({C, A}, 52, -9, 9, true) : ref_i64({C, A}, 52, -9, 9, true);
    INFO(dtype_name(dt));
    check_binary("add", BinaryOp::add, [](double x, double y) { return x + y; }, a, b, out, dt, 0, 0);
    check_binary("sub", BinaryOp::sub, [](double x, double y) { return x - y; }, a, b, out, dt, 0, 0);
    check_binary("mul", BinaryOp::mul, [](double x, double y) { return x * y; }, a, b, out, dt, 0, 0);
    check_binary("maximum", BinaryOp::maximum, [](double x, double y) { return std::max(x, y); }, a, b, out, dt,
                 0, 0);
    check_binary("minimum", BinaryOp::minimum, [](double x, double y) { return std::min(x, y); }, a, b, out, dt,
                 0, 0);
    check_binary("floordiv", BinaryOp::floordiv,
                 [](double x, double y) { return double(int_floordiv(int64_t(x), int64_t(y))); }, a, b, out, dt, 0,
                 0);
    check_binary("mod", BinaryOp::mod, [](double x, double y) { return double(int_floormod(int64_t(x), int64_t(y))); },
                 a, b, out, dt, 0, 0);
    check_unary("neg", UnaryOp::neg, [](double x) { return -x; }, a, dt, 0, 0);
    check_unary("abs", UnaryOp::abs, [](double x) { return std::fabs(x); }, a, dt, 0, 0);
    check_unary("sign", UnaryOp::sign, [](double x) { return double((x > 0) - (x < 0)); }, a, dt, 0, 0);
    check_unary("square", UnaryOp::square, [](double x) { return x * x; }, a, dt, 0, 0);
  }
  // i64 keeps values beyond 32 bits
  Dim k(2, "k");
  Tensor big = Tensor::from_vector<int64_t>({k}, std::vector<int64_t>{int64_t(1) << 40, -(int64_t(1) << 41)});
  CHECK((big + big).to_vector<int64_t>() == std::vector<int64_t>{int64_t(1) << 41, -(int64_t(1) << 42)});
  CHECK((big * 2.0).to_vector<int64_t>() == std::vector<int64_t>{int64_t(1) << 41, -(int64_t(1) << 42)});
}

TEST_CASE("elementwise: unary math on f32 and f64", "[elementwise]") {
  Dim A(3, "A"), B(4, "B"), C(5, "C");
  Ref x = ref_f32({A, B, C}, 61, -3.f, 3.f);
  Ref p = ref_f32({A, B, C}, 62, 0.05f, 4.f);  // positive
  Ref x64 = ref_f64({B, C, A}, 63, -3, 3);
  Ref p64 = ref_f64({B, C, A}, 64, 0.05, 4);
  auto sigm = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  struct Case {
    const char* name;
    UnaryOp op;
    Fn1 fn;
    bool positive;
  };
  std::vector<Case> cases{
      {"neg", UnaryOp::neg, [](double v) { return -v; }, false},
      {"abs", UnaryOp::abs, [](double v) { return std::fabs(v); }, false},
      {"sign", UnaryOp::sign, [](double v) { return double((v > 0) - (v < 0)); }, false},
      {"square", UnaryOp::square, [](double v) { return v * v; }, false},
      {"sqrt", UnaryOp::sqrt, [](double v) { return std::sqrt(v); }, true},
      {"rsqrt", UnaryOp::rsqrt, [](double v) { return 1.0 / std::sqrt(v); }, true},
      {"reciprocal", UnaryOp::reciprocal, [](double v) { return 1.0 / v; }, true},
      {"exp", UnaryOp::exp, [](double v) { return std::exp(v); }, false},
      {"expm1", UnaryOp::expm1, [](double v) { return std::expm1(v); }, false},
      {"log", UnaryOp::log, [](double v) { return std::log(v); }, true},
      {"log1p", UnaryOp::log1p, [](double v) { return std::log1p(v); }, true},
      {"sin", UnaryOp::sin, [](double v) { return std::sin(v); }, false},
      {"cos", UnaryOp::cos, [](double v) { return std::cos(v); }, false},
      {"tanh", UnaryOp::tanh, [](double v) { return std::tanh(v); }, false},
      {"sigmoid", UnaryOp::sigmoid, sigm, false},
      {"relu", UnaryOp::relu, [](double v) { return std::max(v, 0.0); }, false},
      {"gelu", UnaryOp::gelu, [](double v) { return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); }, false},
      {"silu", UnaryOp::silu, [&](double v) { return v * sigm(v); }, false},
      {"softplus", UnaryOp::softplus, [](double v) { return std::log1p(std::exp(v)); }, false},
      {"erf", UnaryOp::erf, [](double v) { return std::erf(v); }, false},
      {"floor", UnaryOp::floor, [](double v) { return std::floor(v); }, false},
      {"ceil", UnaryOp::ceil, [](double v) { return std::ceil(v); }, false},
      {"round", UnaryOp::round, [](double v) { return std::nearbyint(v); }, false},
  };
  for (const auto& c : cases) {
    check_unary(c.name, c.op, c.fn, c.positive ? p : x, DType::f32, 2e-6, 2e-6);
    check_unary(c.name, c.op, c.fn, c.positive ? p64 : x64, DType::f64, 1e-12, 1e-13);
  }
  check_unary("isnan", UnaryOp::isnan, [](double) { return 0.0; }, x, DType::boolean);
  // round: halves to even; sign(0) == 0; relu(-0) is 0
  Dim k(7, "k");
  Tensor h = Tensor::from_vector<float>({k}, std::vector<float>{0.5f, 1.5f, 2.5f, -0.5f, -1.5f, 0.f, -2.f});
  CHECK(round(h).to_vector<float>() == std::vector<float>{0, 2, 2, -0, -2, 0, -2});
  CHECK(sign(h).to_vector<float>() == std::vector<float>{1, 1, 1, -1, -1, 0, -1});
  CHECK(relu(h).to_vector<float>() == std::vector<float>{0.5f, 1.5f, 2.5f, 0, 0, 0, 0});
  // exp/log extremes
  Dim e(4, "e");
  Tensor ex = Tensor::from_vector<float>({e}, std::vector<float>{-kInf, 0.f, 100.f, -100.f});
  auto ev = exp(ex).to_vector<float>();
  CHECK(ev[0] == 0.f);
  CHECK(ev[1] == 1.f);
  CHECK(std::isinf(ev[2]));
  CHECK(ev[3] >= 0.f);
  CHECK(ev[3] < 1e-40f);
  auto lv = log(Tensor::from_vector<float>({e}, std::vector<float>{0.f, 1.f, kInf, std::exp(1.0f)})).to_vector<float>();
  CHECK(lv[0] == -kInf);
  CHECK(lv[1] == 0.f);
  CHECK(lv[2] == kInf);
  CHECK(lv[3] == Approx(1.0f).epsilon(1e-6));
  // softplus / sigmoid stable for large |x|
  Tensor big = Tensor::from_vector<float>({e}, std::vector<float>{-100.f, 100.f, -30.f, 30.f});
  auto sp = softplus(big).to_vector<float>();
  CHECK(sp[0] >= 0.f);
  CHECK(sp[0] < 1e-30f);
  CHECK(sp[1] == Approx(100.f));
  auto sg = sigmoid(big).to_vector<float>();
  CHECK(sg[0] == Approx(0.f).margin(1e-30));
  CHECK(sg[1] == 1.f);
}

TEST_CASE("elementwise: large tensors (parallel path) and strided views", "[elementwise]") {
  Dim A(64, "A"), B(1031, "B"), C(7, "C");
  Ref a = ref_f32({A, B, C}, 71);
  Ref b = ref_f32({C, B}, 72);
  Dims out{A, B, C};
  auto want_add = reference(out, {&a, &b}, [](const std::vector<double>& v) { return v[0] + v[1]; });
  auto want_exp = reference(out, {&a}, [](const std::vector<double>& v) { return std::exp(v[0]); });
  std::vector<double> first;
  for (const auto& perm : std::vector<Dims>{{A, B, C}, {C, A, B}, {B, C, A}}) {
    Tensor la = a.t.transpose_to(perm);
    auto got = (la + b.t).to_vector<double>(out);
    CHECK_VEC_APPROX(got, want_add);
    if (first.empty())
      first = got;
    else
      CHECK(vec_identical(got, first));
    CHECK_VEC_APPROX(exp(la).to_vector<double>(out), want_exp, 2e-6, 1e-6);
  }
  // strided input from a zero-copy slice with step 2
  Dim X(6, "X"), Y(9, "Y");
  Ref x = ref_f32({X, Y}, 73);
  auto [s, Ys] = slice(x.t, Y, 1, std::nullopt, 2);
  REQUIRE(Ys.extent() == 4);
  Ref w = ref_f32({Ys}, 74);
  Tensor r = s * w.t;
  auto got = r.to_vector<double>({X, Ys});
  std::vector<double> want;
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t j = 0; j < 4; ++j) want.push_back(x.v[i * 9 + 1 + 2 * j] * w.v[j]);
  CHECK_VEC_APPROX(got, want);
  std::vector<double> want_tanh;
  for (int64_t j = 0; j < 4; ++j)
    for (int64_t i = 0; i < 6; ++i) want_tanh.push_back(std::tanh(x.v[i * 9 + 1 + 2 * j]));
  CHECK_VEC_APPROX(apply(UnaryOp::tanh, s).to_vector<double>({Ys, X}), want_tanh, 2e-6, 1e-6);
  // broadcast view from expand_dim (stride 0) as an operand
  Dim Z(5, "Z");
  Tensor e = expand_dim(s, Z);
  REQUIRE(e.has_dim(Z));
  Tensor r2 = w.t + e;
  auto got2 = r2.to_vector<double>({Z, X, Ys});
  std::vector<double> want2;
  for (int64_t z = 0; z < 5; ++z)
    for (int64_t i = 0; i < 6; ++i)
      for (int64_t j = 0; j < 4; ++j) want2.push_back(w.v[j] + x.v[i * 9 + 1 + 2 * j]);
  CHECK_VEC_APPROX(got2, want2);
}

TEST_CASE("elementwise: broadcast-all guard", "[elementwise]") {
  Dim A(3, "A"), B(4, "B"), C(5, "C");
  Ref a = ref_f32({A, B}, 81);
  Ref b = ref_f32({C, B}, 82);
  CHECK_THROWS_AS(add(a.t, b.t), Error);
  CHECK_THROWS_AS(a.t + b.t, Error);
  CHECK_THROWS_AS(a.t * b.t, Error);
  // opt-in: outer product over the union of Dims, any layout
  check_binary("add all", BinaryOp::add, [](double x, double y) { return x + y; }, a, b, {A, B, C}, DType::f32,
               true);
  check_binary("mul all", BinaryOp::mul, [](double x, double y) { return x * y; }, a, b, {C, A, B}, DType::f32,
               true);
  // two disjoint vectors
  Ref u = ref_f32({A}, 83), v = ref_f32({C}, 84);
  CHECK_THROWS_AS(sub(u.t, v.t), Error);
  check_binary("sub outer", BinaryOp::sub, [](double x, double y) { return x - y; }, u, v, {A, C}, DType::f32, true);
}

TEST_CASE("elementwise: where", "[elementwise]") {
  Dim A(3, "A"), B(4, "B"), C(5, "C");
  Dims out{A, B, C};
  Ref cond = ref_bool({C, A}, 91);
  Ref a = ref_f32({A, B, C}, 92);
  Ref b = ref_f32({B}, 93);
  auto sel = [](const std::vector<double>& v) { return v[0] != 0 ? v[1] : v[2]; };
  auto want = reference(out, {&cond, &a, &b}, sel);
  std::vector<double> first;
  for (const Tensor& lc : layouts(cond.t)) {
    for (const Tensor& la : layouts(a.t)) {
      INFO("cond " << dims_str(lc.dims()) << " a " << dims_str(la.dims()));
      Tensor r = where(lc, la, b.t);
      CHECK(r.dtype() == DType::f32);
      CHECK(same_dim_set(r.dims(), out));
      auto got = r.to_vector<double>(out);
      CHECK_VEC_APPROX(got, want, 0, 0);
      if (first.empty())
        first = got;
      else
        CHECK(vec_identical(got, first));
    }
  }
  // scalar branches
  auto want_s1 = reference(out, {&cond, &a}, [](const std::vector<double>& v) { return v[0] != 0 ? v[1] : -1.5; });
  for (const Tensor& la : layouts(a.t))
    CHECK_VEC_APPROX(where(cond.t, la, -1.5).to_vector<double>(out), want_s1, 0, 0);
  auto want_s2 = reference(out, {&cond, &a}, [](const std::vector<double>& v) { return v[0] != 0 ? 7.0 : v[1]; });
  for (const Tensor& la : layouts(a.t))
    CHECK_VEC_APPROX(where(cond.t, 7.0, la).to_vector<double>(out), want_s2, 0, 0);
  // scalar-tensor branch and f64
  Ref a64 = ref_f64({A, C}, 94);
  Tensor r = where(cond.t, a64.t, Tensor::scalar(0.25, DType::f64));
  CHECK(r.dtype() == DType::f64);
  CHECK_VEC_APPROX(r.to_vector<double>({A, C}),
                   reference({A, C}, {&cond, &a64}, [](const std::vector<double>& v) { return v[0] != 0 ? v[1] : 0.25; }),
                   0, 0);
  // cond from a comparison; integer branches
  Ref ia = ref_i32({A, B}, 95), ib = ref_i32({A, B}, 96);
  Tensor mx = where(ia.t > ib.t, ia.t, ib.t);
  CHECK(mx.dtype() == DType::i32);
  CHECK(mx.to_vector<int32_t>({B, A}) == maximum(ia.t, ib.t).to_vector<int32_t>({B, A}));
  // NaN in the unselected branch does not leak
  Dim k(3, "k");
  Tensor nanv = Tensor::from_vector<float>({k}, std::vector<float>{kNaN, 2.f, kNaN});
  Tensor c3 = Tensor::from_vector<bool>({k}, std::vector<bool>{false, true, false});
  CHECK(where(c3, nanv, 0.0).to_vector<float>() == std::vector<float>{0.f, 2.f, 0.f});
  // broadcast-all guard applies to where too
  Ref ca = ref_bool({A}, 97);
  Ref bc = ref_f32({C}, 98);
  CHECK_THROWS_AS(where(ca.t, bc.t, 0.0), Error);
  auto want_all = reference({A, C}, {&ca, &bc}, [](const std::vector<double>& v) { return v[0] != 0 ? v[1] : 0.0; });
  CHECK_VEC_APPROX(where(ca.t, bc.t, 0.0, true).to_vector<double>({A, C}), want_all, 0, 0);
}

TEST_CASE("elementwise: clip", "[elementwise]") {
  Dim A(3, "A"), B(4, "B"), C(5, "C");
  Ref x = ref_f32({A, B, C}, 101, -3.f, 3.f);
  auto want = reference(x.dims, {&x}, [](const std::vector<double>& v) { return std::min(std::max(v[0], -1.0), 0.5); });
  std::vector<double> first;
  for (const Tensor& lx : layouts(x.t)) {
    Tensor r = clip(lx, -1.0, 0.5);
    CHECK(r.dtype() == DType::f32);
    CHECK(r.dims() == lx.dims());
    auto got = r.to_vector<double>(x.dims);
    CHECK_VEC_APPROX(got, want, 0, 0);
    if (first.empty())
      first = got;
    else
      CHECK(vec_identical(got, first));
  }
  Ref i = ref_i32({A, B}, 102, -20, 20);
  auto wi = reference(i.dims, {&i}, [](const std::vector<double>& v) { return std::min(std::max(v[0], -5.0), 7.0); });
  Tensor ri = clip(i.t, -5, 7);
  CHECK(ri.dtype() == DType::i32);
  CHECK_VEC_APPROX(ri.to_vector<double>(i.dims), wi, 0, 0);
}

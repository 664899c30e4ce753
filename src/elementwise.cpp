#include <dimx/elementwise.h>

#include <dimx/reduce.h>

#include <algorithm>
#include <cmath>

#include "autocast.h"
#include "autograd.h"
#include "backend.h"
#include "half.h"
#include "half_compute.h"
#include "tensor_impl.h"

namespace dimx {

const char* op_name(BinaryOp op) {
  static const char* names[] = {"add", "sub", "mul", "div", "floordiv", "mod", "pow", "maximum", "minimum",
                                "equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
                                "logical_and", "logical_or", "logical_xor"};
  return names[size_t(op)];
}

const char* op_name(UnaryOp op) {
  static const char* names[] = {"neg",  "abs",  "sign",    "square", "sqrt",  "rsqrt", "reciprocal",
                                "exp",  "expm1", "log",    "log1p",  "sin",   "cos",   "tanh",
                                "sigmoid", "relu", "gelu", "silu",   "softplus", "erf", "floor",
                                "ceil", "round", "logical_not", "isnan"};
  return names[size_t(op)];
}

namespace {

bool is_logical(BinaryOp op) { return op >= BinaryOp::logical_and; }
bool is_comparison(BinaryOp op) { return op >= BinaryOp::equal; }

std::string operands(std::initializer_list<const Tensor*> ts) {
  std::string s;
  const char* names[] = {"a", "b", "c"};
  size_t i = 0;
  for (const Tensor* t : ts) {
    s += std::string(i ? ", " : "") + names[i] + " = " + t->str();
    ++i;
  }
  return s;
}

// Output Dims of an elementwise op: the layout of the first operand holding all Dims, so
// that operand streams contiguously; without one, broadcasting all sources needs opt-in.
Dims output_dims(const char* op, std::initializer_list<const Tensor*> ts, bool allow_broadcast_all) {
  for (const Tensor* t : ts) {
    bool all_in = true;
    for (const Tensor* u : ts) all_in = all_in && (u == t || contains_all(t->dims(), u->dims()));
    if (all_in) return t->dims();
  }
  Dims all;
  for (const Tensor* t : ts) all = union_dims(all, t->dims());
  if (!allow_broadcast_all)
    fail(std::string(op) + ": no operand has all dims " + dims_str(all) + " (" + operands(ts) +
         "); pass allow_broadcast_all=true if the outer product is intended");
  return all;
}

std::optional<Dim> common_feature_dim(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->feature_dim()) return t->feature_dim();
  return std::nullopt;
}

}  // namespace

namespace {

// The checks of combine() on the operands as given (before a half dtype is widened); returns
// the output Dims.
Dims check_binary(const Tensor& a, BinaryOp op, const Tensor& b, bool allow_broadcast_all) {
  const char* name = op_name(op);
  check_defined(name, a);
  check_defined(name, b);
  check_same_device(name, a, b);
  if (a.dtype() != b.dtype())
    fail(std::string(name) + ": dtype mismatch, a = " + a.str() + " vs b = " + b.str() + "; cast with astype()");
  DType dt = a.dtype();
  if (is_logical(op) && dt != DType::boolean)
    fail(std::string(name) + ": needs bool operands, got a = " + a.str());
  if (!is_comparison(op) && dt == DType::boolean)
    fail(std::string(name) + ": not defined for bool operands (a = " + a.str() + ")");
  if (op == BinaryOp::div && is_integer(dt))
    fail(std::string(name) + ": integer operands (a = " + a.str() + "); use floordiv, or astype() to a float dtype");
  return output_dims(name, {&a, &b}, allow_broadcast_all);
}

Tensor combine_impl(const Tensor& a, BinaryOp op, const Tensor& b, bool allow_broadcast_all) {
  const char* name = op_name(op);
  Dims out = check_binary(a, op, b, allow_broadcast_all);
  DType dt = a.dtype();
  Tensor divisor = b;
  if ((op == BinaryOp::floordiv || op == BinaryOp::mod) && is_integer(dt)) {
    // A zero in a valid frame of b is an error. Zeros in padded frames are padding content: they
    // must not trap, so the kernel divides by 1 there (padded output frames are unspecified).
    Tensor zero = Tensor::scalar(0, dt, b.device());
    Tensor bz = combine(b, BinaryOp::equal, zero);
    // Over the lengths' Dims b lacks, if any: one flag per sequence.
    const std::vector<bool> hit = reduce_any(bz, bz.dims()).to_vector<bool>();
    if (std::find(hit.begin(), hit.end(), true) != hit.end())
      fail(std::string(name) + ": integer division by zero in b = " + b.str());
    if (reduce(bz, ReduceOp::any, bz.dims(), /*use_mask=*/false).item<bool>())
      divisor = where(bz, Tensor::scalar(1, dt, b.device()), b);
  }
  DType odt = is_comparison(op) ? DType::boolean : dt;
  Tensor y = empty(std::move(out), odt, a.device(), name);
  const TensorImpl& ya = y.impl();
  backend::backend_for(a.device())
      .binary(op, dt, extents(ya.dims), {a.impl().data(), aligned_strides(a.impl(), ya.dims)},
              {divisor.impl().data(), aligned_strides(divisor.impl(), ya.dims)}, {ya.data(), ya.strides});
  if (auto f = common_feature_dim({&a, &b}); f && !is_comparison(op)) return y.with_feature_dim(f);
  return y;
}

// The gradients of a and b; only those asked for (an operand that does not require grad, a
// constant table say, costs nothing).
std::vector<Tensor> combine_backward(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& y, const Tensor& g,
                                     bool need_a, bool need_b) {
  Tensor ga, gb;
  switch (op) {
    case BinaryOp::add: ga = g; gb = g; break;
    case BinaryOp::sub: ga = g; if (need_b) gb = -g; break;
    case BinaryOp::mul:
      if (need_a) ga = mul(g, b, true);
      if (need_b) gb = mul(g, a, true);
      break;
    case BinaryOp::div:
      if (need_a) ga = div(g, b, true);
      if (need_b) gb = -mul(g, div(y, b, true), true);
      break;
    case BinaryOp::pow:
      if (need_a) ga = mul(g, mul(b, pow(a, b - 1.0, true), true), true);
      // d/db a^b = a^b log a; 0 where a == 0 (the limit that keeps 0^b finite).
      if (need_b)
        gb = mul(g, where(equal(a, Tensor::scalar(0, a.dtype(), a.device())), 0.0, mul(y, log(a), true), true), true);
      break;
    case BinaryOp::maximum:
    case BinaryOp::minimum: {
      // Ties split the gradient equally, as in PyTorch.
      Tensor wins = op == BinaryOp::maximum ? greater(a, b, true) : less(a, b, true);
      Tensor share = where(wins, 1.0, where(equal(a, b, true), 0.5, Tensor::scalar(0, g.dtype(), g.device())));
      ga = mul(g, share, true);
      if (need_b) gb = sub(g, ga, true);
      break;
    }
    case BinaryOp::floordiv: ga = g * 0.0; gb = g * 0.0; break;
    case BinaryOp::mod:
      ga = g;
      if (need_b) gb = -mul(g, floordiv(a, b, true), true);
      break;
    default: return {};
  }
  return {need_a ? sum_to(ga, a) : Tensor(), need_b ? sum_to(gb, b) : Tensor()};
}

Tensor unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& g) {
  switch (op) {
    case UnaryOp::neg: return -g;
    case UnaryOp::abs: return g * sign(x);
    case UnaryOp::square: return g * x * 2.0;
    case UnaryOp::sqrt: return g * 0.5 / y;
    case UnaryOp::rsqrt: return g * y * y * y * -0.5;
    case UnaryOp::reciprocal: return -(g * y * y);
    case UnaryOp::exp: return g * y;
    case UnaryOp::expm1: return g * (y + 1.0);
    case UnaryOp::log: return g / x;
    case UnaryOp::log1p: return g / (x + 1.0);
    case UnaryOp::sin: return g * cos(x);
    case UnaryOp::cos: return -(g * sin(x));
    case UnaryOp::tanh: return g * (1.0 - y * y);
    case UnaryOp::sigmoid: return g * y * (1.0 - y);
    case UnaryOp::relu: return where(x > 0.0, g, 0.0);
    case UnaryOp::gelu: {
      Tensor cdf = (erf(x * 0.70710678118654752440) + 1.0) * 0.5;
      Tensor pdf = exp(square(x) * -0.5) * 0.39894228040143267794;
      return g * (cdf + x * pdf);
    }
    case UnaryOp::silu: {
      Tensor s = sigmoid(x);
      return g * s * (1.0 + x * (1.0 - s));
    }
    case UnaryOp::softplus: return g * sigmoid(x);
    case UnaryOp::erf: return g * exp(-square(x)) * 1.12837916709551257390;
    default: return g * 0.0;  // sign, floor, ceil, round: piecewise constant
  }
}

}  // namespace

// bf16 and f16 operands go to the backends' elementwise kernels as they are (half loads and
// stores, f32 math: the value the widened f32 op would round to); the backward runs in f32 on
// the widened operands, output and gradient, and rounds each gradient once (where the half
// kernels would not give the same values).
namespace {

// Under autocast, f32 +/- bf16/f16 (a residual connection around a low-precision branch): one
// pass that widens the half operand as it reads it, instead of a widened copy and an add.
std::optional<Tensor> widening_add(const Tensor& a, BinaryOp op, const Tensor& b, bool allow_broadcast_all) {
  if ((op != BinaryOp::add && op != BinaryOp::sub) || !autocast_enabled() || !a.defined() || !b.defined())
    return std::nullopt;
  const DType da = a.dtype(), db = b.dtype();
  if (!(da == DType::f32 && is_half(db)) && !(is_half(da) && db == DType::f32)) return std::nullopt;
  const char* name = op_name(op);
  check_same_device(name, a, b);
  const Dims out = output_dims(name, {&a, &b}, allow_broadcast_all);
  Tensor y = empty(out, DType::f32, a.device(), name);
  const TensorImpl& yi = y.impl();
  backend::backend_for(a.device())
      .binary_widening(op, da, db, extents(out), {a.impl().data(), aligned_strides(a.impl(), out)},
                       {b.impl().data(), aligned_strides(b.impl(), out)}, {yi.data(), yi.strides});
  if (auto f = common_feature_dim({&a, &b})) y = y.with_feature_dim(f);
  if (!needs_grad({&a, &b})) return y;
  const bool need_a = a.requires_grad(), need_b = b.requires_grad();
  return record(name, y, {a, b}, [op, a, b, need_a, need_b](const Tensor& g) {
    // Each gradient summed over the Dims its operand lacks, in f32, and rounded once to it.
    return std::vector<Tensor>{need_a ? sum_to(g, a).astype(a.dtype()) : Tensor(),
                               need_b ? sum_to(op == BinaryOp::sub ? -g : g, b).astype(b.dtype()) : Tensor()};
  });
}

}  // namespace

Tensor combine(const Tensor& a, BinaryOp op, const Tensor& b, bool allow_broadcast_all) {
  if (auto y = widening_add(a, op, b, allow_broadcast_all)) return *y;
  if (auto c = autocast_operands(op, a, b)) return combine(c->first, op, c->second, allow_broadcast_all);
  Tensor y = combine_impl(a, op, b, allow_broadcast_all);
  if (!is_float_like(y.dtype()) || !needs_grad({&a, &b})) return y;
  const bool need_a = a.requires_grad(), need_b = b.requires_grad();
  return record(op_name(op), y, {a, b}, [op, a, b, y, need_a, need_b](const Tensor& g) {
    // add, sub, mul, maximum and minimum: their backwards run on the half kernels as they are
    // (each gradient a selection or a product rounded once; a gradient summed over broadcast
    // Dims accumulates the rounded products in f32), which saves widening four tensors.
    const bool native = op == BinaryOp::add || op == BinaryOp::sub || op == BinaryOp::mul ||
                               op == BinaryOp::maximum || op == BinaryOp::minimum;
    if (!is_half(y.dtype()) || native) return combine_backward(op, a, b, y, g, need_a, need_b);
    std::vector<Tensor> gs =
        combine_backward(op, widen_half(a), widen_half(b), widen_half(y), widen_half(g), need_a, need_b);
    for (Tensor& t : gs) t = round_to(t, y.dtype());
    return gs;
  });
}

namespace {
// True if `v` as f32 is a number of the half dtype `dt` too: a half scalar then computes what
// the f32 scalar of the widened op would.
bool exact_in_half(double v, DType dt) {
  const float f = float(v);
  return (dt == DType::bf16 ? half::bf16_to_f32(half::f32_to_bf16(f)) : half::f16_to_f32(half::f32_to_f16(f))) == f;
}
}  // namespace

// A scalar operand of a half tensor is an f32 scalar of the widened op, never rounded to half
// first (a scalar that is a half number, 0.5 or 2, takes the half kernels directly).
Tensor combine(const Tensor& a, BinaryOp op, double b) {
  check_defined(op_name(op), a);
  check_representable(op_name(op), b, a);
  if (is_half(a.dtype()) && !exact_in_half(b, a.dtype())) {
    check_binary(a, op, a, false);  // errors name a as given
    return round_to(combine(widen_half(a), op, b), a.dtype());
  }
  return combine(a, op, constant_scalar(b, a.dtype(), a.device()));
}

Tensor combine(double a, BinaryOp op, const Tensor& b) {
  check_defined(op_name(op), b);
  check_representable(op_name(op), a, b);
  if (is_half(b.dtype()) && !exact_in_half(a, b.dtype())) {
    check_binary(b, op, b, false);
    return round_to(combine(a, op, widen_half(b)), b.dtype());
  }
  return combine(constant_scalar(a, b.dtype(), b.device()), op, b);
}

Tensor apply(UnaryOp op, const Tensor& x) {
  if (autocast_widens(op, x)) return apply(op, autocast_f32(x));
  const char* name = op_name(op);
  check_defined(name, x);
  if (op == UnaryOp::isnan) return combine(x, BinaryOp::not_equal, x);
  if ((op == UnaryOp::logical_not) != (x.dtype() == DType::boolean))
    fail(std::string(name) + ": not defined for x = " + x.str());
  if (!is_float_like(x.dtype()) && op != UnaryOp::neg && op != UnaryOp::abs && op != UnaryOp::sign &&
      op != UnaryOp::square && op != UnaryOp::logical_not)
    fail(std::string(name) + ": needs a floating dtype, got x = " + x.str() + "; cast with astype()");
  Tensor y = empty_like(x, x.dtype(), name);
  backend::backend_for(x.device())
      .unary(op, x.dtype(), extents(x.dims()), {x.impl().data(), x.impl().strides}, {y.impl().data(), y.impl().strides});
  if (x.feature_dim()) y = y.with_feature_dim(x.feature_dim());
  if (!is_float_like(y.dtype()) || !needs_grad({&x})) return y;
  // As combine(): half kernels forward, the backward in f32 rounded once.
  return record(name, y, {x}, [op, x, y](const Tensor& g) {
    // One fused pass where the derivative is a function of x alone (half dtypes included).
    if (backend::has_fused_derivative(op) && g.dtype() == x.dtype() && g.device() == x.device()) {
      Tensor gx = empty_like(x, x.dtype(), op_name(op));
      backend::backend_for(x.device())
          .unary_backward(op, x.dtype(), extents(x.dims()), {x.impl().data(), x.impl().strides},
                          {g.impl().data(), aligned_strides(g.impl(), x.dims())}, {gx.impl().data(), gx.impl().strides});
      return std::vector<Tensor>{x.feature_dim() ? gx.with_feature_dim(x.feature_dim()) : gx};
    }
    if (!is_half(y.dtype())) return std::vector<Tensor>{unary_backward(op, x, y, g)};
    return std::vector<Tensor>{round_to(unary_backward(op, widen_half(x), widen_half(y), widen_half(g)), y.dtype())};
  });
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b, bool allow_broadcast_all) {
  if (auto c = autocast_operands(a, b)) return where(cond, c->first, c->second, allow_broadcast_all);
  check_defined("where", cond);
  check_defined("where", a);
  check_defined("where", b);
  check_same_device("where", cond, a);
  check_same_device("where", a, b);
  if (cond.dtype() != DType::boolean) fail("where: cond must be bool, got cond = " + cond.str());
  if (a.dtype() != b.dtype()) fail("where: dtype mismatch, a = " + a.str() + " vs b = " + b.str());
  // Half operands need no widening: a selection is exact, the backends move their bits.
  Dims out = output_dims("where", {&a, &b, &cond}, allow_broadcast_all);
  Tensor y = empty(out, a.dtype(), a.device(), "where");
  backend::backend_for(a.device())
      .where(a.dtype(), extents(out), {cond.impl().data(), aligned_strides(cond.impl(), out)},
             {a.impl().data(), aligned_strides(a.impl(), out)}, {b.impl().data(), aligned_strides(b.impl(), out)},
             {y.impl().data(), y.impl().strides});
  if (auto f = common_feature_dim({&a, &b})) y = y.with_feature_dim(f);
  if (!needs_grad({&a, &b})) return y;
  const bool need_a = a.requires_grad(), need_b = b.requires_grad();
  return record("where", y, {cond, a, b}, [cond, a, b, need_a, need_b](const Tensor& g) {
    Tensor zero = Tensor::scalar(0, g.dtype(), g.device());
    return std::vector<Tensor>{Tensor(), need_a ? sum_to(where(cond, g, zero, true), a) : Tensor(),
                               need_b ? sum_to(where(cond, zero, g, true), b) : Tensor()};
  });
}

Tensor where(const Tensor& cond, const Tensor& a, double b, bool allow_broadcast_all) {
  check_defined("where", a);
  check_representable("where", b, a);
  return where(cond, a, constant_scalar(b, a.dtype(), a.device()), allow_broadcast_all);
}

Tensor where(const Tensor& cond, double a, const Tensor& b, bool allow_broadcast_all) {
  check_defined("where", b);
  check_representable("where", a, b);
  return where(cond, constant_scalar(a, b.dtype(), b.device()), b, allow_broadcast_all);
}

Tensor clip(const Tensor& x, double lo, double hi) {
  check_defined("clip", x);
  if (std::isnan(lo) || std::isnan(hi))
    fail("clip: NaN bound (lo " + std::to_string(lo) + ", hi " + std::to_string(hi) + ") for x = " + x.str());
  if (lo > hi) fail("clip: lo " + std::to_string(lo) + " > hi " + std::to_string(hi) + " for x = " + x.str());
  if (is_half(x.dtype())) return round_to(clip(widen_half(x), lo, hi), x.dtype());
  if (is_integer(x.dtype())) {
    // Bounds outside the dtype's range clamp to it; fractional bounds round inward.
    const double lim_lo = x.dtype() == DType::i32 ? -2147483648.0 : -9223372036854775808.0;
    const double lim_hi = x.dtype() == DType::i32 ? 2147483647.0 : 9223372036854774784.0;
    lo = std::clamp(std::ceil(lo), lim_lo, lim_hi);
    hi = std::clamp(std::floor(hi), lim_lo, lim_hi);
    if (lo > hi) fail("clip: no integer in [lo, hi] for x = " + x.str());
  }
  return minimum(maximum(x, constant_scalar(lo, x.dtype(), x.device())), constant_scalar(hi, x.dtype(), x.device()));
}

}  // namespace dimx

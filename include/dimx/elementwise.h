#pragma once
/// \file
/// Elementwise ops with broadcasting by Dim identity.
///
/// The output has the union of the operands' Dims, laid out like the first operand that has
/// all of them (so it streams contiguously). If no operand has all output Dims the call is an error
/// unless allow_broadcast_all is set: an accidental outer product is the classic bug.
/// Operands must share dtype and device; comparisons return bool.
///
/// Under autocast (dimx/autocast.h) floating operands of different dtypes are cast to the
/// wider one, and pow and the exp/log family run in f32; outside it mixing dtypes is an error.
#include <dimx/op_codes.h>
#include <dimx/tensor.h>

namespace dimx {



/// `a op b` elementwise, broadcast by Dim; allow_broadcast_all permits an outer product.
Tensor combine(const Tensor& a, BinaryOp op, const Tensor& b, bool allow_broadcast_all = false);
/// `a op b` with b a scalar of a's dtype (it must be representable in it).
Tensor combine(const Tensor& a, BinaryOp op, double b);
/// `a op b` with a a scalar of b's dtype (it must be representable in it).
Tensor combine(double a, BinaryOp op, const Tensor& b);
/// `op(x)` elementwise; same Dims, layout and dtype as x (isnan returns bool).
Tensor apply(UnaryOp op, const Tensor& x);

/// where(cond, a, b): cond is bool; a and b share dtype (either may be a scalar).
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b, bool allow_broadcast_all = false);
/// where() with b a scalar of a's dtype.
Tensor where(const Tensor& cond, const Tensor& a, double b, bool allow_broadcast_all = false);
/// where() with a a scalar of b's dtype.
Tensor where(const Tensor& cond, double a, const Tensor& b, bool allow_broadcast_all = false);
/// x clamped to [lo, hi] (lo <= hi; for integer x the bounds round inward).
Tensor clip(const Tensor& x, double lo, double hi);

/// Defines `Tensor name(const Tensor& a, const Tensor& b, bool allow_broadcast_all = false)`,
/// which returns combine(a, BinaryOp::name, b, allow_broadcast_all). The functions it defines:
/// - `add(a, b)`: a + b
/// - `sub(a, b)`: a - b
/// - `mul(a, b)`: a * b
/// - `div(a, b)`: a / b (floating dtypes)
/// - `floordiv(a, b)`: floor(a / b)
/// - `mod(a, b)`: a - floor(a / b) * b
/// - `pow(a, b)`: a to the power b
/// - `maximum(a, b)`: the larger of a and b
/// - `minimum(a, b)`: the smaller of a and b
/// - `equal(a, b)`: a == b (bool result)
/// - `not_equal(a, b)`: a != b (bool result)
/// - `less(a, b)`: a < b (bool result)
/// - `less_equal(a, b)`: a <= b (bool result)
/// - `greater(a, b)`: a > b (bool result)
/// - `greater_equal(a, b)`: a >= b (bool result)
/// - `logical_and(a, b)`: a and b (bool operands)
/// - `logical_or(a, b)`: a or b (bool operands)
/// - `logical_xor(a, b)`: a xor b (bool operands)
#define DIMX_BINARY_FN(name)                                                              \
  inline Tensor name(const Tensor& a, const Tensor& b, bool allow_broadcast_all = false) { \
    return combine(a, BinaryOp::name, b, allow_broadcast_all);                             \
  }
/// \cond
DIMX_BINARY_FN(add) DIMX_BINARY_FN(sub) DIMX_BINARY_FN(mul) DIMX_BINARY_FN(div)
DIMX_BINARY_FN(floordiv) DIMX_BINARY_FN(mod) DIMX_BINARY_FN(pow) DIMX_BINARY_FN(maximum)
DIMX_BINARY_FN(minimum) DIMX_BINARY_FN(equal) DIMX_BINARY_FN(not_equal) DIMX_BINARY_FN(less)
DIMX_BINARY_FN(less_equal) DIMX_BINARY_FN(greater) DIMX_BINARY_FN(greater_equal)
DIMX_BINARY_FN(logical_and) DIMX_BINARY_FN(logical_or) DIMX_BINARY_FN(logical_xor)
/// \endcond
#undef DIMX_BINARY_FN

/// Defines `Tensor name(const Tensor& x)`, which returns apply(UnaryOp::name, x). The functions
/// it defines:
/// - `neg(x)`: -x
/// - `abs(x)`: |x|
/// - `sign(x)`: -1, 0 or 1
/// - `square(x)`: x * x
/// - `sqrt(x)`: square root
/// - `rsqrt(x)`: 1 / sqrt(x)
/// - `reciprocal(x)`: 1 / x
/// - `exp(x)`: e^x
/// - `expm1(x)`: e^x - 1
/// - `log(x)`: natural logarithm
/// - `log1p(x)`: log(1 + x)
/// - `sin(x)`: sine
/// - `cos(x)`: cosine
/// - `tanh(x)`: hyperbolic tangent
/// - `sigmoid(x)`: 1 / (1 + e^-x)
/// - `relu(x)`: max(x, 0)
/// - `gelu(x)`: x * Phi(x), the exact (erf) form
/// - `silu(x)`: x * sigmoid(x)
/// - `softplus(x)`: log(1 + e^x)
/// - `erf(x)`: the error function
/// - `floor(x)`: round down
/// - `ceil(x)`: round up
/// - `round(x)`: round to nearest, ties to even
/// - `logical_not(x)`: not x (bool x)
/// - `isnan(x)`: true where x is NaN (bool result)
#define DIMX_UNARY_FN(name) \
  inline Tensor name(const Tensor& x) { return apply(UnaryOp::name, x); }
/// \cond
DIMX_UNARY_FN(neg) DIMX_UNARY_FN(abs) DIMX_UNARY_FN(sign) DIMX_UNARY_FN(square)
DIMX_UNARY_FN(sqrt) DIMX_UNARY_FN(rsqrt) DIMX_UNARY_FN(reciprocal) DIMX_UNARY_FN(exp)
DIMX_UNARY_FN(expm1) DIMX_UNARY_FN(log) DIMX_UNARY_FN(log1p) DIMX_UNARY_FN(sin)
DIMX_UNARY_FN(cos) DIMX_UNARY_FN(tanh) DIMX_UNARY_FN(sigmoid) DIMX_UNARY_FN(relu)
DIMX_UNARY_FN(gelu) DIMX_UNARY_FN(silu) DIMX_UNARY_FN(softplus) DIMX_UNARY_FN(erf)
DIMX_UNARY_FN(floor) DIMX_UNARY_FN(ceil) DIMX_UNARY_FN(round) DIMX_UNARY_FN(logical_not)
DIMX_UNARY_FN(isnan)
/// \endcond
#undef DIMX_UNARY_FN

/// Operators: the same ops, with the broadcast guard on.
///
/// Defines `operator sym` for (Tensor, Tensor), (Tensor, double) and (double, Tensor), each
/// returning combine(a, BinaryOp::op, b). The operators it defines:
/// - `a + b`: add(a, b)
/// - `a - b`: sub(a, b)
/// - `a * b`: mul(a, b)
/// - `a / b`: div(a, b)
/// - `a % b`: mod(a, b)
/// - `a < b`: less(a, b)
/// - `a <= b`: less_equal(a, b)
/// - `a > b`: greater(a, b)
/// - `a >= b`: greater_equal(a, b)
/// - `a & b`: logical_and(a, b)
/// - `a | b`: logical_or(a, b)
/// - `a ^ b`: logical_xor(a, b)
#define DIMX_BINARY_OPERATOR(sym, op)                                                           \
  inline Tensor operator sym(const Tensor& a, const Tensor& b) { return combine(a, BinaryOp::op, b); } \
  inline Tensor operator sym(const Tensor& a, double b) { return combine(a, BinaryOp::op, b); }        \
  inline Tensor operator sym(double a, const Tensor& b) { return combine(a, BinaryOp::op, b); }
/// \cond
DIMX_BINARY_OPERATOR(+, add) DIMX_BINARY_OPERATOR(-, sub) DIMX_BINARY_OPERATOR(*, mul)
DIMX_BINARY_OPERATOR(/, div) DIMX_BINARY_OPERATOR(%, mod) DIMX_BINARY_OPERATOR(<, less)
DIMX_BINARY_OPERATOR(<=, less_equal) DIMX_BINARY_OPERATOR(>, greater)
DIMX_BINARY_OPERATOR(>=, greater_equal) DIMX_BINARY_OPERATOR(&, logical_and)
DIMX_BINARY_OPERATOR(|, logical_or) DIMX_BINARY_OPERATOR(^, logical_xor)
/// \endcond
#undef DIMX_BINARY_OPERATOR
/// `-x`: neg(x).
inline Tensor operator-(const Tensor& x) { return neg(x); }
/// `!x`: logical_not(x) (bool x).
inline Tensor operator!(const Tensor& x) { return logical_not(x); }

}  // namespace dimx

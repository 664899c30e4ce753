#pragma once
/// \file
/// Elementwise ops with broadcasting by Dim identity.
///
/// The output has the union of the operands' Dims, laid out like the first operand that has
/// all of them (so it streams contiguously). If no operand has all output Dims the call is an error
/// unless allow_broadcast_all is set: an accidental outer product is the classic bug.
/// Operands must share dtype and device; comparisons return bool.
#include <dimx/op_codes.h>
#include <dimx/tensor.h>

namespace dimx {



Tensor combine(const Tensor& a, BinaryOp op, const Tensor& b, bool allow_broadcast_all = false);
Tensor combine(const Tensor& a, BinaryOp op, double b);
Tensor combine(double a, BinaryOp op, const Tensor& b);
Tensor apply(UnaryOp op, const Tensor& x);

/// where(cond, a, b): cond is bool; a and b share dtype (either may be a scalar).
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b, bool allow_broadcast_all = false);
Tensor where(const Tensor& cond, const Tensor& a, double b, bool allow_broadcast_all = false);
Tensor where(const Tensor& cond, double a, const Tensor& b, bool allow_broadcast_all = false);
Tensor clip(const Tensor& x, double lo, double hi);

#define DIMX_BINARY_FN(name)                                                              \
  inline Tensor name(const Tensor& a, const Tensor& b, bool allow_broadcast_all = false) { \
    return combine(a, BinaryOp::name, b, allow_broadcast_all);                             \
  }
DIMX_BINARY_FN(add) DIMX_BINARY_FN(sub) DIMX_BINARY_FN(mul) DIMX_BINARY_FN(div)
DIMX_BINARY_FN(floordiv) DIMX_BINARY_FN(mod) DIMX_BINARY_FN(pow) DIMX_BINARY_FN(maximum)
DIMX_BINARY_FN(minimum) DIMX_BINARY_FN(equal) DIMX_BINARY_FN(not_equal) DIMX_BINARY_FN(less)
DIMX_BINARY_FN(less_equal) DIMX_BINARY_FN(greater) DIMX_BINARY_FN(greater_equal)
DIMX_BINARY_FN(logical_and) DIMX_BINARY_FN(logical_or) DIMX_BINARY_FN(logical_xor)
#undef DIMX_BINARY_FN

#define DIMX_UNARY_FN(name) \
  inline Tensor name(const Tensor& x) { return apply(UnaryOp::name, x); }
DIMX_UNARY_FN(neg) DIMX_UNARY_FN(abs) DIMX_UNARY_FN(sign) DIMX_UNARY_FN(square)
DIMX_UNARY_FN(sqrt) DIMX_UNARY_FN(rsqrt) DIMX_UNARY_FN(reciprocal) DIMX_UNARY_FN(exp)
DIMX_UNARY_FN(expm1) DIMX_UNARY_FN(log) DIMX_UNARY_FN(log1p) DIMX_UNARY_FN(sin)
DIMX_UNARY_FN(cos) DIMX_UNARY_FN(tanh) DIMX_UNARY_FN(sigmoid) DIMX_UNARY_FN(relu)
DIMX_UNARY_FN(gelu) DIMX_UNARY_FN(silu) DIMX_UNARY_FN(softplus) DIMX_UNARY_FN(erf)
DIMX_UNARY_FN(floor) DIMX_UNARY_FN(ceil) DIMX_UNARY_FN(round) DIMX_UNARY_FN(logical_not)
DIMX_UNARY_FN(isnan)
#undef DIMX_UNARY_FN

/// Operators: the same ops, with the broadcast guard on.
#define DIMX_BINARY_OPERATOR(sym, op)                                                           \
  inline Tensor operator sym(const Tensor& a, const Tensor& b) { return combine(a, BinaryOp::op, b); } \
  inline Tensor operator sym(const Tensor& a, double b) { return combine(a, BinaryOp::op, b); }        \
  inline Tensor operator sym(double a, const Tensor& b) { return combine(a, BinaryOp::op, b); }
DIMX_BINARY_OPERATOR(+, add) DIMX_BINARY_OPERATOR(-, sub) DIMX_BINARY_OPERATOR(*, mul)
DIMX_BINARY_OPERATOR(/, div) DIMX_BINARY_OPERATOR(%, mod) DIMX_BINARY_OPERATOR(<, less)
DIMX_BINARY_OPERATOR(<=, less_equal) DIMX_BINARY_OPERATOR(>, greater)
DIMX_BINARY_OPERATOR(>=, greater_equal) DIMX_BINARY_OPERATOR(&, logical_and)
DIMX_BINARY_OPERATOR(|, logical_or) DIMX_BINARY_OPERATOR(^, logical_xor)
#undef DIMX_BINARY_OPERATOR
inline Tensor operator-(const Tensor& x) { return neg(x); }
inline Tensor operator!(const Tensor& x) { return logical_not(x); }

}  // namespace dimx

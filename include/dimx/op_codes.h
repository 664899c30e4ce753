#pragma once
/// \file
/// The op codes shared by the frontend and every backend. Plain C++17, so the CUDA kernels can
/// include it without the tensor headers.

namespace dimx {

/// Elementwise binary ops (see combine() and the named functions in elementwise.h).
enum class BinaryOp {
  add,            ///< a + b
  sub,            ///< a - b
  mul,            ///< a * b
  div,            ///< a / b (floating dtypes only)
  floordiv,       ///< floor(a / b)
  mod,            ///< a - floor(a / b) * b (the sign of b)
  pow,            ///< a raised to the power b
  maximum,        ///< the larger of a and b
  minimum,        ///< the smaller of a and b
  equal,          ///< a == b (bool result)
  not_equal,      ///< a != b (bool result)
  less,           ///< a < b (bool result)
  less_equal,     ///< a <= b (bool result)
  greater,        ///< a > b (bool result)
  greater_equal,  ///< a >= b (bool result)
  logical_and,    ///< a and b (bool operands)
  logical_or,     ///< a or b (bool operands)
  logical_xor     ///< a xor b (bool operands)
};

/// Elementwise unary ops (see apply() and the named functions in elementwise.h).
enum class UnaryOp {
  neg,          ///< -x
  abs,          ///< |x|
  sign,         ///< -1, 0 or 1
  square,       ///< x * x
  sqrt,         ///< square root
  rsqrt,        ///< 1 / sqrt(x)
  reciprocal,   ///< 1 / x
  exp,          ///< e^x
  expm1,        ///< e^x - 1
  log,          ///< natural logarithm
  log1p,        ///< log(1 + x)
  sin,          ///< sine
  cos,          ///< cosine
  tanh,         ///< hyperbolic tangent
  sigmoid,      ///< 1 / (1 + e^-x)
  relu,         ///< max(x, 0)
  gelu,         ///< x * Phi(x), the exact (erf) form
  silu,         ///< x * sigmoid(x)
  softplus,     ///< log(1 + e^x)
  erf,          ///< the error function
  floor,        ///< round down
  ceil,         ///< round up
  round,        ///< round to nearest, ties to even
  logical_not,  ///< not x (bool)
  isnan         ///< true where x is NaN (bool result)
};

/// The op's name, e.g. "add" (used in error messages).
const char* op_name(BinaryOp op);
/// The op's name, e.g. "neg" (used in error messages).
const char* op_name(UnaryOp op);

/// Reductions (see reduce() in reduce.h).
enum class ReduceOp {
  sum,        ///< sum
  mean,       ///< sum / number of valid elements
  max,        ///< maximum
  min,        ///< minimum
  logsumexp,  ///< log(sum(exp(x))), computed stably
  any,        ///< true if any element is true (bool)
  all         ///< true if every element is true (bool)
};

}  // namespace dimx

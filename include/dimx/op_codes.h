#pragma once
/// \file
/// The op codes shared by the frontend and every backend. Plain C++17, so the CUDA kernels can
/// include it without the tensor headers.

namespace dimx {

enum class BinaryOp {
  add, sub, mul, div, floordiv, mod, pow, maximum, minimum,
  equal, not_equal, less, less_equal, greater, greater_equal,
  logical_and, logical_or, logical_xor
};

enum class UnaryOp {
  neg, abs, sign, square, sqrt, rsqrt, reciprocal, exp, expm1, log, log1p,
  sin, cos, tanh, sigmoid, relu, gelu, silu, softplus, erf, floor, ceil, round,
  logical_not, isnan
};

const char* op_name(BinaryOp op);
const char* op_name(UnaryOp op);

enum class ReduceOp { sum, mean, max, min, logsumexp, any, all };

}  // namespace dimx

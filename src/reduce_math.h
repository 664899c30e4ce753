#pragma once
// Scalar reduction rules shared by the CPU and CUDA backends: identities, combination and
// the clamping of valid lengths. Plain C++17 with __host__ __device__ markers under nvcc.
#include <cstdint>
#include <limits>
#include <type_traits>

#include <dimx/op_codes.h>

#include "int_math.h"

#ifdef __CUDACC__
#define DIMX_HD __host__ __device__
#else
#define DIMX_HD
#endif

namespace dimx::reduce_math {

// -inf for floats (the max of nothing), the lowest value for integers.
template <class T>
DIMX_HD inline T lowest() {
  if constexpr (std::is_floating_point_v<T>) return -std::numeric_limits<T>::infinity();
  else return std::numeric_limits<T>::lowest();
}
template <class T>
DIMX_HD inline T highest() {
  if constexpr (std::is_floating_point_v<T>) return std::numeric_limits<T>::infinity();
  else return std::numeric_limits<T>::max();
}

template <class T>
DIMX_HD inline T identity(ReduceOp op) {
  switch (op) {
    case ReduceOp::max: return lowest<T>();
    case ReduceOp::min: return highest<T>();
    case ReduceOp::all: return T(1);
    default: return T(0);
  }
}

// NaN is sticky in max and min (as in PyTorch): once seen, the result is NaN. Integer sums
// wrap around (int_math.h) instead of overflowing into undefined behaviour.
template <class T>
DIMX_HD inline T combine(ReduceOp op, T acc, T v) {
  switch (op) {
    case ReduceOp::sum:
      if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) return int_math::add(acc, v);
      else return T(acc + v);
    case ReduceOp::max: return (v > acc || v != v) ? v : acc;
    case ReduceOp::min: return (v < acc || v != v) ? v : acc;
    case ReduceOp::any: return T(acc || v);
    case ReduceOp::all: return T(acc && v);
    default: return acc;
  }
}

// argmax / argmin: whether v at a later index replaces the best so far. The first NaN wins
// and stays (PyTorch's rule), so argmax agrees with max and argmin with min.
template <class T>
DIMX_HD inline bool arg_better(bool is_max, T v, T best) {
  if (best != best) return false;
  return v != v || (is_max ? v > best : v < best);
}

// logsumexp from the row's max m and sum of exp(x - m): a non-finite max is the result itself
// (+inf for a +inf entry, NaN for a NaN entry, -inf for an empty or all -inf row).
template <class T>
DIMX_HD inline bool lse_trivial(T m) {
  return m != m || m == highest<T>() || m == lowest<T>();
}

// Valid count of row i along an axis of extent N (all of it without lengths).
DIMX_HD inline int64_t valid_len(const int64_t* lengths, int64_t i, int64_t N) {
  if (!lengths) return N;
  int64_t l = lengths[i];
  return l < 0 ? 0 : (l > N ? N : l);
}

}  // namespace dimx::reduce_math

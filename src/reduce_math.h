#pragma once
// Scalar reduction rules shared by the CPU and CUDA backends: identities, combination and
// the clamping of valid lengths. Plain C++17 with __host__ __device__ markers under nvcc.
#include <cstdint>
#include <limits>
#include <type_traits>

#include <dimx/op_codes.h>

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

template <class T>
DIMX_HD inline T combine(ReduceOp op, T acc, T v) {
  switch (op) {
    case ReduceOp::sum: return T(acc + v);
    case ReduceOp::max: return v > acc ? v : acc;
    case ReduceOp::min: return v < acc ? v : acc;
    case ReduceOp::any: return T(acc || v);
    case ReduceOp::all: return T(acc && v);
    default: return acc;
  }
}

// Valid count of row i along an axis of extent N (all of it without lengths).
DIMX_HD inline int64_t valid_len(const int64_t* lengths, int64_t i, int64_t N) {
  if (!lengths) return N;
  int64_t l = lengths[i];
  return l < 0 ? 0 : (l > N ? N : l);
}

}  // namespace dimx::reduce_math

#pragma once
// Integer arithmetic with defined results for every input, shared by the CPU and CUDA
// backends: add, sub, mul, neg and pow wrap around in two's complement (as in PyTorch and
// NumPy) instead of overflowing into undefined behaviour; floordiv and mod of the minimum
// value by -1 give the wrapped quotient (the minimum itself) and 0 instead of trapping.
// Division by zero never reaches here: the frontend refuses it. Plain C++17 with
// __host__ __device__ markers under nvcc.
#include <type_traits>

#ifdef __CUDACC__
#define DIMX_INT_HD __host__ __device__
#else
#define DIMX_INT_HD
#endif

namespace dimx::int_math {

template <class T>
using U = std::make_unsigned_t<T>;

template <class T>
DIMX_INT_HD inline T add(T a, T b) {
  return T(U<T>(a) + U<T>(b));
}
template <class T>
DIMX_INT_HD inline T sub(T a, T b) {
  return T(U<T>(a) - U<T>(b));
}
template <class T>
DIMX_INT_HD inline T mul(T a, T b) {
  return T(U<T>(a) * U<T>(b));
}
template <class T>
DIMX_INT_HD inline T neg(T a) {
  return T(U<T>(0) - U<T>(a));
}
template <class T>
DIMX_INT_HD inline T abs(T a) {
  return a < 0 ? neg(a) : a;
}

// Floor division (rounds toward -inf); b != 0.
template <class T>
DIMX_INT_HD inline T floordiv(T a, T b) {
  if (b == T(-1)) return neg(a);
  T q = T(a / b);
  if (a % b != 0 && ((a < 0) != (b < 0))) --q;
  return q;
}
// The remainder with the sign of b; b != 0.
template <class T>
DIMX_INT_HD inline T mod(T a, T b) {
  if (b == T(-1)) return T(0);
  T r = T(a % b);
  if (r != 0 && ((r < 0) != (b < 0))) r = T(r + b);
  return r;
}
// a^e by squaring (wrapping); a negative exponent gives the integer part of 1 / a^|e|.
template <class T>
DIMX_INT_HD inline T pow(T a, T e) {
  if (e < 0) return a == 1 ? T(1) : (a == -1 ? ((e & 1) ? T(-1) : T(1)) : T(0));
  T r = 1;
  while (e) {
    if (e & 1) r = mul(r, a);
    a = mul(a, a);
    e >>= 1;
  }
  return r;
}

}  // namespace dimx::int_math

#pragma once
// Helpers of the CPU kernels over the rows of a contiguous [A, N, B] block (reductions,
// softmax, layer_norm, cross_entropy): task splitting, bf16/f16 rows in the compute type, and
// partial SIMD loads at a row's end.
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/float_types.h"
#include "cpu/parallel.h"

namespace dimx::cpu {

// Splits [A, B] into tasks: rows a, and for B > 1 chunks of up to 512 columns b; f(a, b0, b1).
// A block without columns (B = 0) has no rows to visit.
template <class F>
void for_row_blocks(int64_t A, int64_t N, int64_t B, F&& f) {
  if (B == 0) return;
  const int64_t chunk = B == 1 ? 1 : std::min<int64_t>(B, 512);
  const int64_t nb = (B + chunk - 1) / chunk;
  const int64_t per_task = std::max<int64_t>(1, N * chunk);
  parallel_for(A * nb, std::max<int64_t>(1, kParallelGrain / per_task), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t a = t / nb, b0 = (t % nb) * chunk;
      f(a, b0, std::min(B, b0 + chunk));
    }
  });
}

// A row of S as compute-type values: the row itself, or widened into `scratch`.
template <class S>
const ComputeOf<S>* widened(const S* row, int64_t n, std::vector<ComputeOf<S>>& scratch) {
  if constexpr (std::is_same_v<S, ComputeOf<S>>) {
    return row;
  } else {
    scratch.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) scratch[size_t(i)] = widen(row[i]);
    return scratch.data();
  }
}

// Loads n < W values into a SIMD batch, padding the other lanes with `fill`.
template <class T>
xsimd::batch<T> load_partial(const T* x, int64_t n, T fill) {
  alignas(64) T buf[xsimd::batch<T>::size];
  for (size_t j = 0; j < xsimd::batch<T>::size; ++j) buf[j] = int64_t(j) < n ? x[j] : fill;
  return xsimd::batch<T>::load_aligned(buf);
}

}  // namespace dimx::cpu

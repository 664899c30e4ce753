#pragma once
// Shared device helpers: strided offsets, launch geometry, dtype dispatch.
#include <cuda_runtime.h>

#include <dimx/error.h>

#include <string>

#include "launch.h"
#include "dtype_dispatch.h"

namespace dimx::gpu {

template <int K>
__device__ __forceinline__ void offsets(const Meta<K>& m, int64_t i, int64_t (&off)[K]) {
#pragma unroll
  for (int k = 0; k < K; ++k) off[k] = 0;
  for (int d = m.nd - 1; d >= 0; --d) {
    int64_t e = m.shape[d];
    int64_t q = i / e, r = i - q * e;
    i = q;
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] += r * m.strides[k][d];
  }
}

inline unsigned blocks_for(int64_t n, int threads = 256) {
  int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 65535 * 8 ? (b > 0 ? b : 1) : 65535 * 8);
}

void check_launch(const char* what);


}  // namespace dimx::gpu

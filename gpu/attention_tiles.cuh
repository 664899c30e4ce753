#pragma once
// Tile helpers shared by the fused attention kernels (forward and backward): 16-byte vectors,
// cp.async copies and zero-filled tile loads into shared memory.
#include <cuda_runtime.h>

#include <cstdint>

namespace dimx::gpu::attention_tiles {

constexpr int kThreads = 128;

template <class T>
struct Vec;
template <>
struct Vec<float> {
  using type = float4;
};
template <>
struct Vec<double> {
  using type = double2;
};

__device__ __forceinline__ float exp2_(float x) { return exp2f(x); }
__device__ __forceinline__ double exp2_(double x) { return ::exp2(x); }
__device__ __forceinline__ float log2_(float x) { return log2f(x); }
__device__ __forceinline__ double log2_(double x) { return ::log2(x); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::); }

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = valid ? 16 : 0;  // 0: zero-fill
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait1() { asm volatile("cp.async.wait_group 1;\n" ::); }

// rows x D tile of a row-major matrix into shared memory (row stride LD), zero outside
// [nrows, ncols). VEC: 16-byte cp.async (ncols, row stride and base aligned to 16 bytes).
template <class T, int D, int LD, bool VEC>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t row_stride, int rows, int nrows, int ncols) {
  if constexpr (VEC) {
    constexpr int VN = 16 / int(sizeof(T)), CH = D / VN;
    for (int c = threadIdx.x; c < rows * CH; c += kThreads) {
      const int r = c / CH, col = (c % CH) * VN;
      const bool valid = r < nrows && col < ncols;
      cp_async16(s + r * LD + col, valid ? g + r * row_stride + col : g, valid);
    }
  } else {
    for (int c = threadIdx.x; c < rows * D; c += kThreads) {
      const int r = c / D, col = c % D;
      s[r * LD + col] = r < nrows && col < ncols ? g[r * row_stride + col] : T(0);
    }
  }
}

}  // namespace dimx::gpu::attention_tiles

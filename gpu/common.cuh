#pragma once
// Shared device helpers: strided offsets, launch geometry, dtype dispatch.
#include <cuda_runtime.h>

#include <dimx/error.h>

#include <string>

#include "launch.h"
#include "dtype_dispatch.h"

namespace dimx::gpu {

// Offsets of element i (row-major over m.shape) in each operand. The outermost axis needs no
// division; below 2^32 elements the divisions are 32-bit (several times cheaper than 64-bit
// ones, which otherwise bound the strided kernels).
template <int K>
__device__ __forceinline__ void offsets(const Meta<K>& m, int64_t i, int64_t (&off)[K]) {
#pragma unroll
  for (int k = 0; k < K; ++k) off[k] = 0;
  if (m.n <= int64_t(0xffffffffu)) {
    uint32_t j = uint32_t(i);
    for (int d = m.nd - 1; d > 0; --d) {
      const uint32_t e = uint32_t(m.shape[d]);
      const uint32_t q = j / e, r = j - q * e;
      j = q;
#pragma unroll
      for (int k = 0; k < K; ++k) off[k] += int64_t(r) * m.strides[k][d];
    }
    i = j;
  } else {
    for (int d = m.nd - 1; d > 0; --d) {
      const int64_t e = m.shape[d];
      const int64_t q = i / e, r = i - q * e;
      i = q;
#pragma unroll
      for (int k = 0; k < K; ++k) off[k] += r * m.strides[k][d];
    }
  }
  if (m.nd > 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] += i * m.strides[k][0];
  }
}

inline unsigned blocks_for(int64_t n, int threads = 256) {
  int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 65535 * 8 ? (b > 0 ? b : 1) : 65535 * 8);
}

void check_launch(const char* what);

// Scratch of n elements from the stream-ordered pool, freed in stream order; running out is an
// error naming `op`.
template <class T>
struct Scratch {
  T* p = nullptr;
  cudaStream_t s;
  Scratch(int64_t n, cudaStream_t stream, const char* op) : s(stream) {
    if (n > 0 && cudaMallocAsync(reinterpret_cast<void**>(&p), size_t(n) * sizeof(T), s) != cudaSuccess) {
      cudaGetLastError();
      throw Error(std::string(op) + ": cudaMallocAsync of " + std::to_string(n * int64_t(sizeof(T))) + " bytes failed");
    }
  }
  ~Scratch() {
    if (p) cudaFreeAsync(p, s);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// Frames per chunk of a scan over `rows` independent sequences of T frames (the WKV and EMA
// scans): one chunk (T) when the rows alone fill the GPU, a single pass over the data; else
// enough chunks for about 512 threads per multiprocessor (measured on an H100: more threads
// make the sequential combine longer than they save), rounded up to 16 frames. The
// environment variable `override_env`, if set to a positive number, decides instead.
int64_t scan_chunk_frames(int64_t rows, int64_t T, const char* override_env);


}  // namespace dimx::gpu

// gather, its adjoint scatter_add, and Philox random numbers.
#include <dimx/error.h>

#include <algorithm>

#include "common.cuh"
#include "philox.h"

namespace dimx::gpu {

namespace {

template <class T>
__global__ void gather_kernel(Meta<3> m, const T* x, int64_t axis_stride, int64_t extent, const int64_t* idx, bool clip,
                              T* y, int* bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < m.n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[3];
    offsets(m, i, o);
    int64_t j = idx[o[1]];
    if (j < 0 || j >= extent) {
      if (!clip && bad) *bad = 1;
      j = j < 0 ? 0 : extent - 1;
    }
    y[o[2]] = x[o[0] + j * axis_stride];
  }
}

template <class T>
__device__ __forceinline__ void atomic_add(T* p, T v) {
  if constexpr (std::is_same_v<T, int64_t>)
    atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
  else
    atomicAdd(p, v);
}

template <class T>
__global__ void scatter_add_kernel(Meta<3> m, const T* x, int64_t axis_stride, int64_t extent, const int64_t* idx,
                                   T* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < m.n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[3];
    offsets(m, i, o);
    int64_t j = idx[o[1]];
    j = j < 0 ? 0 : (j >= extent ? extent - 1 : j);
    atomic_add(y + o[2] + j * axis_stride, x[o[0]]);
  }
}

// The same into a small destination (an embedding table, a bias table): each block sums
// into its own copy in shared memory, then adds that to y once, so millions of additions to a
// few thousand addresses do not queue on the same global atomics.
template <class T>
__global__ void scatter_add_shared_kernel(Meta<3> m, const T* x, int64_t axis_stride, int64_t extent,
                                          const int64_t* idx, T* y, int64_t span) {
  extern __shared__ __align__(16) unsigned char scatter_raw[];
  T* acc = reinterpret_cast<T*>(scatter_raw);
  for (int64_t i = threadIdx.x; i < span; i += blockDim.x) acc[i] = T(0);
  __syncthreads();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < m.n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[3];
    offsets(m, i, o);
    int64_t j = idx[o[1]];
    j = j < 0 ? 0 : (j >= extent ? extent - 1 : j);
    atomic_add(acc + o[2] + j * axis_stride, x[o[0]]);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < span; i += blockDim.x)
    if (acc[i] != T(0)) atomic_add(y + i, acc[i]);
}

template <class T>
__global__ void random_kernel(bool normal, int64_t n, uint64_t seed, uint64_t offset, double a, double b, T* y) {
  const int per = sizeof(T) == 8 ? 2 : 4;
  const int64_t counters = (n + per - 1) / per;
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < counters; c += int64_t(gridDim.x) * blockDim.x) {
    double v[4];
    philox::values(normal, sizeof(T) == 8, seed, offset + uint64_t(c), v);
    for (int j = 0; j < per; ++j) {
      int64_t i = c * per + j;
      if (i < n) y[i] = T(normal ? a + b * v[j] : a + (b - a) * v[j]);
    }
  }
}

}  // namespace

void launch_gather(DType dt, const Meta<3>& m, const void* x, int64_t axis_stride, int64_t extent, const int64_t* idx,
                   bool clip, void* y, int* bad, cudaStream_t s) {
  if (dt == DType::bf16 || dt == DType::f16) {  // a gather moves bits: 2-byte words will do
    gather_kernel<uint16_t><<<blocks_for(m.n), 256, 0, s>>>(m, static_cast<const uint16_t*>(x), axis_stride, extent,
                                                            idx, clip, static_cast<uint16_t*>(y), bad);
    return check_launch("gather");
  }
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    gather_kernel<T><<<blocks_for(m.n), 256, 0, s>>>(m, static_cast<const T*>(x), axis_stride, extent, idx, clip,
                                                     static_cast<T*>(y), bad);
  });
  check_launch("gather");
}

void launch_scatter_add(DType dt, const Meta<3>& m, const void* x, int64_t axis_stride, int64_t extent,
                        const int64_t* idx, void* y, cudaStream_t s) {
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, bool>) {
      throw Error("scatter_add: bool dtype not supported");
    } else {
      // The destination's span of elements (non-negative strides: a fresh gradient buffer).
      int64_t span = 1 + (extent - 1) * axis_stride;
      bool small = axis_stride >= 0;
      for (int d = 0; d < m.nd; ++d) {
        small = small && m.strides[2][d] >= 0;
        span += (m.shape[d] - 1) * m.strides[2][d];
      }
      constexpr int64_t kSharedBytes = 32 * 1024;
      if (small && span > 0 && span * int64_t(sizeof(T)) <= kSharedBytes && m.n > 16 * span) {
        int device = 0, sms = 0;
        cudaGetDevice(&device);
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
        const unsigned blocks = std::min<unsigned>(blocks_for(m.n), unsigned(std::max(1, 2 * sms)));
        scatter_add_shared_kernel<T><<<blocks, 256, size_t(span) * sizeof(T), s>>>(
            m, static_cast<const T*>(x), axis_stride, extent, idx, static_cast<T*>(y), span);
      } else {
        scatter_add_kernel<T><<<blocks_for(m.n), 256, 0, s>>>(m, static_cast<const T*>(x), axis_stride, extent, idx,
                                                              static_cast<T*>(y));
      }
    }
  });
  check_launch("scatter_add");
}

void launch_random(bool normal, DType dt, int64_t n, uint64_t seed, uint64_t offset, double a, double b, void* y,
                   cudaStream_t s) {
  if (n == 0) return;
  if (dt == DType::f32)
    random_kernel<float><<<blocks_for((n + 3) / 4), 256, 0, s>>>(normal, n, seed, offset, a, b, static_cast<float*>(y));
  else if (dt == DType::f64)
    random_kernel<double><<<blocks_for((n + 1) / 2), 256, 0, s>>>(normal, n, seed, offset, a, b, static_cast<double*>(y));
  else
    throw Error(std::string("random: dtype ") + dtype_name(dt) + " not supported (f32, f64)");
  check_launch("random");
}

}  // namespace dimx::gpu

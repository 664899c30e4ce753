// Reductions, softmax and cumsum along the middle axis of a contiguous [A, N, B] block with
// optional valid lengths per (a, b). Reductions: long rows with few outputs get a block per
// output; wide column blocks (B >= 32) go in tiles of 32 columns whose N is split over threads
// and, where the outputs alone cannot fill the device, over blocks and a second pass; the rest
// a thread per output.
#include <dimx/error.h>

#include <algorithm>

#include "common.cuh"
#include "float_types.cuh"
#include "reduce_math.h"

namespace dimx::gpu {

namespace {

constexpr int kThreads = 256;

using reduce_math::combine;
using reduce_math::identity;
using reduce_math::lowest;
using reduce_math::valid_len;

// Block-wide reduction of one value per thread: warp shuffles, then one warp over the warps.
template <class T>
__device__ T block_reduce(ReduceOp op, T v) {
  __shared__ unsigned char raw[32 * sizeof(double)];
  T* sh = reinterpret_cast<T*>(raw);
  for (int o = 16; o > 0; o >>= 1) v = combine(op, v, T(__shfl_xor_sync(0xffffffffu, v, o)));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = (blockDim.x + 31) / 32;
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? sh[lane] : identity<T>(op);
    for (int o = 16; o > 0; o >>= 1) v = combine(op, v, T(__shfl_xor_sync(0xffffffffu, v, o)));
    if (lane == 0) sh[0] = v;
  }
  __syncthreads();
  T r = sh[0];
  __syncthreads();
  return r;
}

// An input value as the accumulating type T (bf16/f16 widened to f32).
template <class T, class S>
__device__ __forceinline__ T ld(S v) {
  if constexpr (std::is_same_v<S, T>) return v;
  else return T(widen(v));
}

// A block per output t = a * B + b and chunk z = blockIdx.y of N (n in [z * chunk, (z + 1) *
// chunk)): its threads stride over the chunk's entries (B apart). The result goes to
// y[t * gridDim.y + z]: with one chunk the output, with several partial results for a second
// pass. logsumexp takes one chunk.
template <class T, class S = T>
__global__ void reduce_rows(ReduceOp op, int64_t N, int64_t B, const S* x, const int64_t* len, int64_t chunk, T* y) {
  const int64_t t = blockIdx.x, a = t / B, b = t % B, z = blockIdx.y;
  const int64_t begin = z * chunk, end = min(valid_len(len, t, N), begin + chunk);
  const S* row = x + a * N * B + b;
  if constexpr (std::is_floating_point_v<T> && std::is_same_v<S, T>) {
    if (op == ReduceOp::logsumexp) {
      T m = lowest<T>();
      for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) m = combine(ReduceOp::max, m, row[i * B]);
      m = block_reduce(ReduceOp::max, m);
      T s = 0;
      if (!reduce_math::lse_trivial(m))
        for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) s += ::exp(row[i * B] - m);
      s = block_reduce(ReduceOp::sum, s);
      if (threadIdx.x == 0) y[t] = reduce_math::lse_trivial(m) ? m : m + ::log(s);
      return;
    }
  }
  T acc = identity<T>(op);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) acc = combine(op, acc, ld<T>(row[i * B]));
  acc = block_reduce(op, acc);
  if (threadIdx.x == 0) y[t * gridDim.y + z] = acc;
}

// A block of kTileRows x 32 threads covers 32 adjacent columns b of one a (coalesced reads);
// its rows of threads stride over the chunk blockIdx.z of N (n in [z * chunk, (z + 1) * chunk)).
// The result of chunk z goes to y[(a * gridDim.z + z) * B + b]: with one chunk that is the
// output, with several a block of partial results for a second pass over z.
constexpr int kTileRows = 8;

template <class T, class S = T>
__global__ void reduce_col_tiles(ReduceOp op, int64_t A, int64_t N, int64_t B, const S* x, const int64_t* len,
                                 int64_t chunk, T* y) {
  __shared__ unsigned char raw[kTileRows * 33 * sizeof(double)];
  T(*sh)[33] = reinterpret_cast<T(*)[33]>(raw);
  const int64_t b = blockIdx.x * 32 + threadIdx.x, z = blockIdx.z;
  for (int64_t a = blockIdx.y; a < A; a += gridDim.y) {
    T acc = identity<T>(op);
    if (b < B) {
      const int64_t end = min(valid_len(len, a * B + b, N), (z + 1) * chunk);
      const S* col = x + a * N * B + b;
      for (int64_t n = z * chunk + threadIdx.y; n < end; n += kTileRows) acc = combine(op, acc, ld<T>(col[n * B]));
    }
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && b < B) {
      for (int i = 1; i < kTileRows; ++i) acc = combine(op, acc, sh[i][threadIdx.x]);
      y[(a * gridDim.z + z) * B + b] = acc;
    }
    __syncthreads();
  }
}

template <class T, class S = T>
__global__ void reduce_cols(ReduceOp op, int64_t A, int64_t N, int64_t B, const S* x, const int64_t* len, T* y) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < A * B; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t a = t / B, b = t % B;
    const int64_t L = valid_len(len, t, N);
    const S* col = x + a * N * B + b;
    if constexpr (std::is_floating_point_v<T> && std::is_same_v<S, T>) {
      if (op == ReduceOp::logsumexp) {
        T m = lowest<T>();
        for (int64_t n = 0; n < L; ++n) m = combine(ReduceOp::max, m, col[n * B]);
        T s = 0;
        if (!reduce_math::lse_trivial(m))
          for (int64_t n = 0; n < L; ++n) s += ::exp(col[n * B] - m);
        y[t] = reduce_math::lse_trivial(m) ? m : m + ::log(s);
        continue;
      }
    }
    T acc = identity<T>(op);
    for (int64_t n = 0; n < L; ++n) acc = combine(op, acc, ld<T>(col[n * B]));
    y[t] = acc;
  }
}

template <class T>
__global__ void arg_cols(bool is_max, int64_t A, int64_t N, int64_t B, const T* x, const int64_t* len, int64_t* y) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < A * B; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t a = t / B, b = t % B;
    const int64_t L = valid_len(len, t, N);
    const T* col = x + a * N * B + b;
    int64_t best = 0;
    for (int64_t n = 1; n < L; ++n)
      if (reduce_math::arg_better(is_max, col[n * B], col[best * B])) best = n;
    y[t] = best;
  }
}

template <class T>
__device__ __forceinline__ T warp_reduce(ReduceOp op, T v) {
  for (int o = 16; o > 0; o >>= 1) v = combine(op, v, T(__shfl_xor_sync(0xffffffffu, v, o)));
  return v;
}

// One warp per row of up to 32 * E elements, kept in registers: one read, one write, no
// shared memory. E is a power of two picked from the row length; each lane reads runs of V
// consecutive elements (one 16-byte access for V = 16 / sizeof(T)), and each exp is taken once.
template <class T, int E, int V>
__global__ void softmax_warp_rows(bool log, int64_t A, int64_t N, const T* x, const int64_t* len, T* y) {
  struct alignas(sizeof(T) * V) Run {
    T v[V];
  };
  const int64_t a = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (a >= A) return;
  const int lane = threadIdx.x % 32;
  const int64_t L = valid_len(len, a, N);
  const T* row = x + a * N;
  T* out = y + a * N;
  const T ninf = lowest<T>();
  T v[E];
  T m = ninf;
#pragma unroll
  for (int j = 0; j < E / V; ++j) {
    const int64_t i0 = (lane + 32 * int64_t(j)) * V;
    Run r;
    if (V > 1 && i0 + V <= L) {
      r = *reinterpret_cast<const Run*>(row + i0);
    } else {
#pragma unroll
      for (int u = 0; u < V; ++u) r.v[u] = i0 + u < L ? row[i0 + u] : ninf;
    }
#pragma unroll
    for (int u = 0; u < V; ++u) {
      v[j * V + u] = r.v[u];
      m = r.v[u] > m ? r.v[u] : m;
    }
  }
  m = warp_reduce(ReduceOp::max, m);
  T s = 0;
#pragma unroll
  for (int j = 0; j < E; ++j) {
    v[j] -= m;
    if (m != ninf) {
      const T e = ::exp(v[j]);
      s += e;
      if (!log) v[j] = e;
    }
  }
  s = warp_reduce(ReduceOp::sum, s);
  const T ls = ::log(s), inv = T(1) / s;
#pragma unroll
  for (int j = 0; j < E / V; ++j) {
    const int64_t i0 = (lane + 32 * int64_t(j)) * V;
    Run r;
#pragma unroll
    for (int u = 0; u < V; ++u) {
      const bool valid = i0 + u < L && m != ninf;
      r.v[u] = valid ? (log ? v[j * V + u] - ls : v[j * V + u] * inv) : (log ? ninf : T(0));
    }
    if (V > 1 && i0 + V <= N) {
      *reinterpret_cast<Run*>(out + i0) = r;
    } else {
#pragma unroll
      for (int u = 0; u < V; ++u)
        if (i0 + u < N) out[i0 + u] = r.v[u];
    }
  }
}

template <class T, int E>
void launch_warp_rows_e(bool log, int64_t A, int64_t N, const T* x, const int64_t* len, T* y, cudaStream_t s) {
  const unsigned blocks = unsigned((A + 7) / 8);  // 8 rows (warps) per block of 256
  constexpr int V = E < int(16 / sizeof(T)) ? E : int(16 / sizeof(T));
  // Vector runs need every row 16-byte aligned.
  const bool aligned = N % V == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0;
  if (V > 1 && aligned) softmax_warp_rows<T, E, V><<<blocks, 256, 0, s>>>(log, A, N, x, len, y);
  else softmax_warp_rows<T, E, 1><<<blocks, 256, 0, s>>>(log, A, N, x, len, y);
}

template <class T>
void launch_warp_rows(bool log, int64_t A, int64_t N, const T* x, const int64_t* len, T* y, cudaStream_t s) {
  if (N <= 32) launch_warp_rows_e<T, 1>(log, A, N, x, len, y, s);
  else if (N <= 64) launch_warp_rows_e<T, 2>(log, A, N, x, len, y, s);
  else if (N <= 128) launch_warp_rows_e<T, 4>(log, A, N, x, len, y, s);
  else if (N <= 256) launch_warp_rows_e<T, 8>(log, A, N, x, len, y, s);
  else if (N <= 512) launch_warp_rows_e<T, 16>(log, A, N, x, len, y, s);
  else launch_warp_rows_e<T, 32>(log, A, N, x, len, y, s);
}

// Rows longer than a warp's registers hold: three passes over global memory.
template <class T>
__global__ void softmax_long_rows(bool log, int64_t N, const T* x, const int64_t* len, T* y) {
  const int64_t a = blockIdx.x;
  const int64_t L = valid_len(len, a, N);
  const T* row = x + a * N;
  T* out = y + a * N;
  const T ninf = lowest<T>();
  T m = ninf;
  for (int64_t i = threadIdx.x; i < L; i += blockDim.x) m = row[i] > m ? row[i] : m;
  m = block_reduce(ReduceOp::max, m);
  T s = 0;
  if (m != ninf)
    for (int64_t i = threadIdx.x; i < L; i += blockDim.x) s += ::exp(row[i] - m);
  s = block_reduce(ReduceOp::sum, s);
  const T ls = ::log(s), inv = T(1) / s;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    bool valid = i < L && m != ninf;
    out[i] = valid ? (log ? row[i] - m - ls : ::exp(row[i] - m) * inv) : (log ? ninf : T(0));
  }
}

template <class T>
__global__ void softmax_cols(bool log, int64_t A, int64_t N, int64_t B, const T* x, const int64_t* len, T* y) {
  const T ninf = lowest<T>();
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < A * B; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t a = t / B, b = t % B;
    const int64_t L = valid_len(len, t, N);
    const T* col = x + a * N * B + b;
    T* out = y + a * N * B + b;
    T m = ninf;
    for (int64_t n = 0; n < L; ++n) m = col[n * B] > m ? col[n * B] : m;
    T s = 0;
    if (m != ninf)
      for (int64_t n = 0; n < L; ++n) s += ::exp(col[n * B] - m);
    const T ls = ::log(s), inv = T(1) / s;
    for (int64_t n = 0; n < N; ++n) {
      bool valid = n < L && m != ninf;
      out[n * B] = valid ? (log ? col[n * B] - m - ls : ::exp(col[n * B] - m) * inv) : (log ? ninf : T(0));
    }
  }
}

// Softmax's gradient (see softmax_backward in src/backend.h): rows of up to 2048 a warp each,
// longer rows a block each, columns a thread each. Each reads y and g twice (the second time
// from cache for rows).
template <class T>
__device__ __forceinline__ T softmax_grad(bool log, T y, T g, T s) {
  return log ? g - ::exp(y) * s : y * (g - s);
}

template <class T>
__global__ void softmax_backward_warp_rows(bool log, int64_t A, int64_t N, const T* y, const T* g, const int64_t* len,
                                           T* dx) {
  const int64_t a = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (a >= A) return;  // whole warps leave together
  const int lane = threadIdx.x % 32;
  const int64_t L = valid_len(len, a, N);
  const T *yr = y + a * N, *gr = g + a * N;
  T s = 0;
  for (int64_t i = lane; i < L; i += 32) s += log ? gr[i] : gr[i] * yr[i];
  s = warp_reduce(ReduceOp::sum, s);
  T* out = dx + a * N;
  for (int64_t i = lane; i < N; i += 32) out[i] = i < L ? softmax_grad(log, yr[i], gr[i], s) : T(0);
}

template <class T>
__global__ void softmax_backward_long_rows(bool log, int64_t N, const T* y, const T* g, const int64_t* len, T* dx) {
  const int64_t a = blockIdx.x;
  const int64_t L = valid_len(len, a, N);
  const T *yr = y + a * N, *gr = g + a * N;
  T s = 0;
  for (int64_t i = threadIdx.x; i < L; i += blockDim.x) s += log ? gr[i] : gr[i] * yr[i];
  s = block_reduce(ReduceOp::sum, s);
  T* out = dx + a * N;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) out[i] = i < L ? softmax_grad(log, yr[i], gr[i], s) : T(0);
}

template <class T>
__global__ void softmax_backward_cols(bool log, int64_t A, int64_t N, int64_t B, const T* y, const T* g,
                                      const int64_t* len, T* dx) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < A * B; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t a = t / B, b = t % B;
    const int64_t L = valid_len(len, t, N), off = a * N * B + b;
    T s = 0;
    for (int64_t n = 0; n < L; ++n) s += log ? g[off + n * B] : g[off + n * B] * y[off + n * B];
    for (int64_t n = 0; n < N; ++n)
      dx[off + n * B] = n < L ? softmax_grad(log, y[off + n * B], g[off + n * B], s) : T(0);
  }
}

template <class T>
__global__ void cumsum_cols(int64_t A, int64_t N, int64_t B, const T* x, T* y) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < A * B; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t a = t / B, b = t % B;
    T acc = 0;
    for (int64_t n = 0; n < N; ++n) {
      acc = combine(ReduceOp::sum, acc, x[(a * N + n) * B + b]);
      y[(a * N + n) * B + b] = acc;
    }
  }
}

}  // namespace

void launch_reduce(ReduceOp op, DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* len, void* y,
                   cudaStream_t s) {
  if (A * B == 0) return;
  // Blocks enough to fill an H100/H200 a few times over (132 multiprocessors).
  constexpr int64_t kWantBlocks = 1024;
  const int64_t outputs = A * B;
  // T: the accumulating (and output) type; S: the stored input type (bf16/f16 sums: T = f32).
  auto go = [&](auto t_tag, auto s_tag) {
    using T = decltype(t_tag);
    using S = decltype(s_tag);
    const S* xs = static_cast<const S*>(x);
    T* ys = static_cast<T*>(y);
    // Partial results [outputs, parts] (rows) or [A, parts, B] (tiles) of a first pass.
    auto scratch = [&](int64_t parts) {
      T* part = nullptr;
      const size_t bytes = size_t(outputs * parts) * sizeof(T);
      if (cudaMallocAsync(reinterpret_cast<void**>(&part), bytes, s) != cudaSuccess) {
        cudaGetLastError();
        throw Error("reduce: cudaMallocAsync of " + std::to_string(bytes) + " bytes failed");
      }
      return part;
    };
    const int64_t tiles = (B + 31) / 32;
    if (N >= 64 && (B == 1 || (B < 32 && outputs < 65536)) && outputs < (int64_t(1) << 31)) {
      // A block per output; long rows with few outputs split over blocks (each >= 2048 entries).
      const int64_t parts = op == ReduceOp::logsumexp
                                ? 1
                                : std::max<int64_t>(1, std::min({kWantBlocks / outputs, N / 2048, int64_t(65535)}));
      const int64_t chunk = (N + parts - 1) / parts;
      if (parts == 1) {
        reduce_rows<T, S><<<unsigned(outputs), kThreads, 0, s>>>(op, N, B, xs, len, chunk, ys);
      } else {
        T* part = scratch(parts);
        reduce_rows<T, S><<<dim3(unsigned(outputs), unsigned(parts)), kThreads, 0, s>>>(op, N, B, xs, len, chunk, part);
        reduce_rows<T><<<unsigned(outputs), kThreads, 0, s>>>(op, parts, 1, part, nullptr, parts, ys);
        cudaFreeAsync(part, s);
      }
    } else if (B >= 32 && tiles <= 65535 && op != ReduceOp::logsumexp) {
      // Tiles of 32 columns; N split over blocks where the tiles alone cannot fill the device.
      const int64_t blocks = tiles * A;
      const int64_t parts = std::max<int64_t>(1, std::min({kWantBlocks / blocks, (N + 63) / 64, int64_t(64)}));
      const int64_t chunk = (N + parts - 1) / parts;
      const dim3 block(32, kTileRows), grid(unsigned(tiles), unsigned(std::min<int64_t>(A, 65535)), unsigned(parts));
      if (parts == 1) {
        reduce_col_tiles<T, S><<<grid, block, 0, s>>>(op, A, N, B, xs, len, chunk, ys);
      } else {
        T* part = scratch(parts);
        reduce_col_tiles<T, S><<<grid, block, 0, s>>>(op, A, N, B, xs, len, chunk, part);
        const dim3 grid2(unsigned(tiles), unsigned(std::min<int64_t>(A, 65535)), 1);
        reduce_col_tiles<T><<<grid2, block, 0, s>>>(op, A, parts, B, part, nullptr, parts, ys);
        cudaFreeAsync(part, s);
      }
    } else {
      reduce_cols<T, S><<<blocks_for(outputs), kThreads, 0, s>>>(op, A, N, B, xs, len, ys);
    }
  };
  if (dt == DType::bf16) go(float{}, __nv_bfloat16{});
  else if (dt == DType::f16) go(float{}, __half{});
  else dispatch(dt, [&](auto tag) { go(tag, tag); });
  check_launch("reduce");
}

void launch_arg_reduce(bool is_max, DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* len,
                       int64_t* y, cudaStream_t s) {
  if (A * B == 0) return;
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    arg_cols<T><<<blocks_for(A * B), kThreads, 0, s>>>(is_max, A, N, B, static_cast<const T*>(x), len, y);
  });
  check_launch("arg_reduce");
}

void launch_softmax(bool log, DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* len, void* y,
                    cudaStream_t s) {
  if (A * B * N == 0) return;
  auto go = [&](auto tag) {
    using T = decltype(tag);
    if (B == 1 && N <= 1024)
      launch_warp_rows<T>(log, A, N, static_cast<const T*>(x), len, static_cast<T*>(y), s);
    else if (B == 1)
      softmax_long_rows<T><<<unsigned(A), kThreads, 0, s>>>(log, N, static_cast<const T*>(x), len, static_cast<T*>(y));
    else
      softmax_cols<T><<<blocks_for(A * B), kThreads, 0, s>>>(log, A, N, B, static_cast<const T*>(x), len,
                                                              static_cast<T*>(y));
  };
  if (dt == DType::f32) go(float{});
  else if (dt == DType::f64) go(double{});
  else throw Error(std::string(log ? "log_softmax" : "softmax") + ": needs a floating dtype");
  check_launch("softmax");
}

void launch_softmax_backward(bool log, DType dt, int64_t A, int64_t N, int64_t B, const void* y, const void* g,
                             const int64_t* len, void* dx, cudaStream_t s) {
  if (A * B * N == 0) return;
  auto go = [&](auto tag) {
    using T = decltype(tag);
    const T *ys = static_cast<const T*>(y), *gs = static_cast<const T*>(g);
    T* out = static_cast<T*>(dx);
    if (B == 1 && N <= 2048)
      softmax_backward_warp_rows<T><<<unsigned((A + 7) / 8), 256, 0, s>>>(log, A, N, ys, gs, len, out);
    else if (B == 1)
      softmax_backward_long_rows<T><<<unsigned(A), kThreads, 0, s>>>(log, N, ys, gs, len, out);
    else
      softmax_backward_cols<T><<<blocks_for(A * B), kThreads, 0, s>>>(log, A, N, B, ys, gs, len, out);
  };
  if (dt == DType::f32) go(float{});
  else if (dt == DType::f64) go(double{});
  else throw Error(std::string(log ? "log_softmax" : "softmax") + " backward: needs f32 or f64 on cuda");
  check_launch("softmax_backward");
}

void launch_cumsum(DType dt, int64_t A, int64_t N, int64_t B, const void* x, void* y, cudaStream_t s) {
  if (A * B * N == 0) return;
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, bool>)
      cumsum_cols<T><<<blocks_for(A * B), kThreads, 0, s>>>(A, N, B, static_cast<const T*>(x), static_cast<T*>(y));
  });
  check_launch("cumsum");
}

}  // namespace dimx::gpu

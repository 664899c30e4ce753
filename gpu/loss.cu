// Cross-entropy along the middle axis of a contiguous [A, N, B] block (see
// Backend::cross_entropy). Rows (B = 1): a warp per row up to 1024 classes, a block of 256
// threads per row beyond; each thread keeps an online (max, sum of exp) over its strided share
// of the row, so the logits are read once, and the pairs are merged by shuffles (and shared
// memory across warps). Columns (B > 1): a thread per (a, b), reading coalesced along b. The
// backward is elementwise given the saved log-sum-exp. bf16/f16 are computed in f32. Padded rows
// are selected out (the row kernels do not read them).
#include <dimx/error.h>

#include <cmath>

#include "common.cuh"
#include "float_types.cuh"

namespace dimx::gpu {

namespace {

constexpr int kThreads = 256;

template <class T>
__device__ __forceinline__ T ninf() {
  return -INFINITY;
}

// Adds v to a running (max m, sum s of exp(. - m)). -inf adds nothing; NaN makes s NaN.
template <class T>
__device__ __forceinline__ void absorb(T& m, T& s, T v) {
  if (v > m) {
    s = s * ::exp(m - v) + T(1);  // m = -inf at first: exp(-inf) = 0
    m = v;
  } else if (v != ninf<T>()) {
    s += v == m ? T(1) : ::exp(v - m);  // v == m == +inf counts 1, not exp(inf - inf)
  }
}

// Merges the pair (m2, s2) into (m, s).
template <class T>
__device__ __forceinline__ void merge(T& m, T& s, T m2, T s2) {
  const T mm = m2 > m ? m2 : m;
  if (mm == ninf<T>()) {  // both empty (s may carry a NaN)
    s += s2;
    return;
  }
  s = (m == mm ? s : s * ::exp(m - mm)) + (m2 == mm ? s2 : s2 * ::exp(m2 - mm));
  m = mm;
}

template <class T>
__device__ __forceinline__ void warp_merge(T& m, T& s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const T m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge(m, s, m2, s2);
  }
}

// TPR threads (32, or the whole block of kThreads) per row of N contiguous logits.
template <class S, int TPR>
__global__ void forward_rows(int64_t A, int64_t N, const S* x, const int64_t* target, const bool* valid,
                             ComputeOf<S>* loss, ComputeOf<S>* lse, int* bad) {
  using T = ComputeOf<S>;
  constexpr int kRows = kThreads / TPR;
  const int64_t a = blockIdx.x * int64_t(kRows) + threadIdx.x / TPR;
  const int lane = threadIdx.x % TPR;
  // Every thread reaches the merges below (a block-wide row synchronizes).
  const bool active = a < A && (!valid || valid[a]);
  const S* row = x + a * N;
  T m = ninf<T>(), s = T(0);
  if (active)
    for (int64_t i = lane; i < N; i += TPR) absorb(m, s, widen(row[i]));
  warp_merge(m, s);
  if constexpr (TPR > 32) {
    __shared__ T sm[kThreads / 32], ss[kThreads / 32];
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) {
      sm[warp] = m;
      ss[warp] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0)
      for (int w = 1; w < kThreads / 32; ++w) merge(m, s, sm[w], ss[w]);
  }
  if (lane != 0 || a >= A) return;
  if (!active) {
    loss[a] = lse[a] = T(0);
    return;
  }
  const T l = m + ::log(s);  // all -inf: -inf + log 0 = -inf
  const int64_t t = target[a];
  const bool in_range = t >= 0 && t < N;
  if (!in_range) *bad = 1;
  lse[a] = l;
  loss[a] = in_range ? l - widen(row[t]) : T(NAN);
}

template <class S>
__global__ void forward_cols(int64_t A, int64_t N, int64_t B, const S* x, const int64_t* target, const bool* valid,
                             ComputeOf<S>* loss, ComputeOf<S>* lse, int* bad) {
  using T = ComputeOf<S>;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < A * B; r += int64_t(gridDim.x) * blockDim.x) {
    if (valid && !valid[r]) {
      loss[r] = lse[r] = T(0);
      continue;
    }
    const int64_t a = r / B, b = r % B;
    const S* col = x + a * N * B + b;
    T m = ninf<T>(), s = T(0);
    for (int64_t n = 0; n < N; ++n) absorb(m, s, widen(col[n * B]));
    const T l = m + ::log(s);
    const int64_t t = target[r];
    const bool in_range = t >= 0 && t < N;
    if (!in_range) *bad = 1;
    lse[r] = l;
    loss[r] = in_range ? l - widen(col[t * B]) : T(NAN);
  }
}

// dx = g (exp(x - lse) - [n == target]) on valid rows, 0 on padded ones.
template <class S>
__device__ __forceinline__ S grad_of(const S& x, ComputeOf<S> l, ComputeOf<S> g, bool is_target) {
  using T = ComputeOf<S>;
  return narrow<S>(g * (::exp(widen(x) - l) - (is_target ? T(1) : T(0))));
}

template <class S, int TPR>
__global__ void backward_rows(int64_t A, int64_t N, const S* x, const int64_t* target, const bool* valid,
                              const ComputeOf<S>* lse, const ComputeOf<S>* g, S* dx) {
  using T = ComputeOf<S>;
  constexpr int kRows = kThreads / TPR;
  const int64_t a = blockIdx.x * int64_t(kRows) + threadIdx.x / TPR;
  if (a >= A) return;
  const int lane = threadIdx.x % TPR;
  S* out = dx + a * N;
  if (valid && !valid[a]) {
    for (int64_t i = lane; i < N; i += TPR) out[i] = narrow<S>(T(0));
    return;
  }
  const S* row = x + a * N;
  const T l = lse[a], ga = g[a];
  const int64_t t = target[a];
  for (int64_t i = lane; i < N; i += TPR) out[i] = grad_of(row[i], l, ga, i == t);
}

template <class S>
__global__ void backward_cols(int64_t A, int64_t N, int64_t B, const S* x, const int64_t* target, const bool* valid,
                              const ComputeOf<S>* lse, const ComputeOf<S>* g, S* dx) {
  using T = ComputeOf<S>;
  const int64_t total = A * N * B;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i % B, an = i / B, n = an % N, a = an / N, r = a * B + b;
    dx[i] = valid && !valid[r] ? narrow<S>(T(0)) : grad_of(x[i], lse[r], g[r], target[r] == n);
  }
}

unsigned row_blocks(int64_t A, int rows_per_block) { return unsigned((A + rows_per_block - 1) / rows_per_block); }

}  // namespace

void launch_cross_entropy(DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* target,
                          const bool* valid, void* loss, void* lse, int* bad, cudaStream_t s) {
  if (A * B == 0) return;
  dispatch_floating(dt, "cross_entropy", [&](auto tag) {
    using S = decltype(tag);
    using T = ComputeOf<S>;
    const S* xs = static_cast<const S*>(x);
    T *ls = static_cast<T*>(loss), *es = static_cast<T*>(lse);
    if (B == 1 && N <= 1024)
      forward_rows<S, 32><<<row_blocks(A, kThreads / 32), kThreads, 0, s>>>(A, N, xs, target, valid, ls, es, bad);
    else if (B == 1)
      forward_rows<S, kThreads><<<row_blocks(A, 1), kThreads, 0, s>>>(A, N, xs, target, valid, ls, es, bad);
    else
      forward_cols<S><<<blocks_for(A * B), kThreads, 0, s>>>(A, N, B, xs, target, valid, ls, es, bad);
  });
  check_launch("cross_entropy");
}

void launch_cross_entropy_backward(DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* target,
                                   const bool* valid, const void* lse, const void* g, void* dx, cudaStream_t s) {
  if (A * N * B == 0) return;
  dispatch_floating(dt, "cross_entropy", [&](auto tag) {
    using S = decltype(tag);
    using T = ComputeOf<S>;
    const S* xs = static_cast<const S*>(x);
    const T *es = static_cast<const T*>(lse), *gs = static_cast<const T*>(g);
    S* out = static_cast<S*>(dx);
    if (B == 1 && N <= 1024)
      backward_rows<S, 32><<<row_blocks(A, kThreads / 32), kThreads, 0, s>>>(A, N, xs, target, valid, es, gs, out);
    else if (B == 1)
      backward_rows<S, kThreads><<<row_blocks(A, 1), kThreads, 0, s>>>(A, N, xs, target, valid, es, gs, out);
    else
      backward_cols<S><<<blocks_for(A * N * B), kThreads, 0, s>>>(A, N, B, xs, target, valid, es, gs, out);
  });
  check_launch("cross_entropy_backward");
}

}  // namespace dimx::gpu

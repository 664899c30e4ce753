// Layer normalization along the middle axis of a contiguous [A, N, B] block (see
// backend::LayerNorm in src/backend.h).
//
// Rows (B = 1) whose length is a multiple of 16 bytes' worth of elements, with 16-byte aligned
// operands, and at most 1024 entries (768 for f64): a warp per row keeps the row in registers,
// loaded 16 bytes per lane at a time, so the forward reads x once and writes y once, and the
// backward reads x and g once and writes dx once. Its weight and bias gradients stay in the
// lanes' registers over the rows a warp visits (a lane owns the same columns in every row);
// the warps of a block are then summed in order into one partial row per block, and a second
// kernel sums the blocks' rows in block order, 32 columns per block (a single block doing all
// of them took most of the backward's time): the same result on every run. Other rows: a warp (a block beyond 4096 entries) per row looping over it; columns
// (B > 1): a thread per (a, b). Their parameter gradients take a second kernel (tiles of 32
// columns for rows, a block per n for columns), also summed in a fixed order.
#include <dimx/error.h>

#include <algorithm>
#include <type_traits>

#include "common.cuh"
#include "float_types.cuh"

namespace dimx::gpu {

namespace {

constexpr int kWarps = 8;  // warps per block of the row kernels
constexpr int kThreads = 32 * kWarps;
constexpr int kMaxParamBlocks = 512;  // blocks (partial rows) of the fused backward
constexpr int64_t kWarpLoopMax = 4096;  // longer rows get a block each

template <int V>
using Lanes = std::integral_constant<int, V>;

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (every thread calls it), in a fixed order.
template <class T>
__device__ T block_sum(T v) {
  __shared__ T sh[32];
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = (blockDim.x + 31) / 32;
  __syncthreads();  // sh may still be read by a previous call
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  T r = 0;
  for (int i = 0; i < warps; ++i) r += sh[i];
  return r;
}

// V consecutive elements, loaded and stored as one aligned access.
template <class S, int V>
struct alignas(sizeof(S) * V) Pack {
  S v[V];
};

template <class S, int V>
__device__ __forceinline__ void load(const S* p, ComputeOf<S> (&out)[V]) {
  const Pack<S, V> k = *reinterpret_cast<const Pack<S, V>*>(p);
#pragma unroll
  for (int i = 0; i < V; ++i) out[i] = widen(k.v[i]);
}

template <class S, int V>
__device__ __forceinline__ void store(S* p, const ComputeOf<S> (&in)[V]) {
  Pack<S, V> k;
#pragma unroll
  for (int i = 0; i < V; ++i) k.v[i] = narrow<S>(in[i]);
  *reinterpret_cast<Pack<S, V>*>(p) = k;
}

// ---- forward

// A warp per row of N <= 32 * V * E entries, lane l holding entries (l + 32 j) * V + [0, V).
template <class S, int V, int E>
__global__ void __launch_bounds__(kThreads) forward_rows(int64_t A, int N, const S* x, const S* w, const S* b,
                                                         ComputeOf<S> eps, S* y, ComputeOf<S>* mean,
                                                         ComputeOf<S>* rstd) {
  using C = ComputeOf<S>;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= A) return;  // whole warps leave together
  const int lane = threadIdx.x % 32;
  const S* xr = x + row * N;
  C v[E][V];
  C s = 0;
#pragma unroll
  for (int j = 0; j < E; ++j) {
    const int i = (lane + 32 * j) * V;
    if (i < N) {
      load<S, V>(xr + i, v[j]);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) v[j][k] = 0;
    }
#pragma unroll
    for (int k = 0; k < V; ++k) s += v[j][k];
  }
  const C inv_n = C(1) / C(N);
  const C m = warp_sum(s) * inv_n;
  C q = 0;
#pragma unroll
  for (int j = 0; j < E; ++j)
    if ((lane + 32 * j) * V < N)
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const C d = v[j][k] - m;
        q += d * d;
      }
  const C r = C(1) / ::sqrt(warp_sum(q) * inv_n + eps);
  S* yr = y + row * N;
#pragma unroll
  for (int j = 0; j < E; ++j) {
    const int i = (lane + 32 * j) * V;
    if (i >= N) continue;
    C wv[V], bv[V], o[V];
    if (w) load<S, V>(w + i, wv);
    if (b) load<S, V>(b + i, bv);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      C t = (v[j][k] - m) * r;
      if (w) t = t * wv[k];
      if (b) t = t + bv[k];
      o[k] = t;
    }
    store<S, V>(yr + i, o);
  }
  if (lane == 0) {
    if (mean) mean[row] = m;
    if (rstd) rstd[row] = r;
  }
}

// Any row: a warp (kBlock: the block) per row, three passes over it.
template <class S, bool kBlock>
__global__ void forward_rows_loop(int64_t A, int64_t N, const S* x, const S* w, const S* b, ComputeOf<S> eps, S* y,
                                  ComputeOf<S>* mean, ComputeOf<S>* rstd) {
  using C = ComputeOf<S>;
  const int64_t row = kBlock ? int64_t(blockIdx.x) : int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= A) return;
  const int t0 = kBlock ? threadIdx.x : threadIdx.x % 32, step = kBlock ? blockDim.x : 32;
  auto sum = [](C v) { return kBlock ? block_sum(v) : warp_sum(v); };
  const S* xr = x + row * N;
  const C inv_n = C(1) / C(N);
  C s = 0;
  for (int64_t i = t0; i < N; i += step) s += widen(xr[i]);
  const C m = sum(s) * inv_n;
  C q = 0;
  for (int64_t i = t0; i < N; i += step) {
    const C d = widen(xr[i]) - m;
    q += d * d;
  }
  const C r = C(1) / ::sqrt(sum(q) * inv_n + eps);
  S* yr = y + row * N;
  for (int64_t i = t0; i < N; i += step) {
    C t = (widen(xr[i]) - m) * r;
    if (w) t = t * widen(w[i]);
    if (b) t = t + widen(b[i]);
    yr[i] = narrow<S>(t);
  }
  if (t0 == 0) {
    if (mean) mean[row] = m;
    if (rstd) rstd[row] = r;
  }
}

// Columns (B > 1): a thread per (a, b), looping over n (adjacent threads read adjacent b).
template <class S>
__global__ void forward_cols(int64_t A, int64_t N, int64_t B, const S* x, const S* w, const S* b, ComputeOf<S> eps,
                             S* y, ComputeOf<S>* mean, ComputeOf<S>* rstd) {
  using C = ComputeOf<S>;
  const C inv_n = C(1) / C(N);
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < A * B; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t a = t / B, off = a * N * B + (t - a * B);
    C s = 0;
    for (int64_t n = 0; n < N; ++n) s += widen(x[off + n * B]);
    const C m = s * inv_n;
    C q = 0;
    for (int64_t n = 0; n < N; ++n) {
      const C d = widen(x[off + n * B]) - m;
      q += d * d;
    }
    const C r = C(1) / ::sqrt(q * inv_n + eps);
    for (int64_t n = 0; n < N; ++n) {
      C v = (widen(x[off + n * B]) - m) * r;
      if (w) v = v * widen(w[n]);
      if (b) v = v + widen(b[n]);
      y[off + n * B] = narrow<S>(v);
    }
    if (mean) mean[t] = m;
    if (rstd) rstd[t] = r;
  }
}

// ---- backward: dx = rstd (g w - mean_n(g w) - xhat mean_n(g w xhat)), xhat = (x - mean) rstd;
// dweight = sum_rows g xhat, dbias = sum_rows g.

// dweight and dbias from part [P, 2, N] (a partial row per block of backward_rows): a block
// of 32 x kWarps threads per 32 columns; warp y sums partial rows y, y + kWarps, ... in order
// (eight loads in flight at a time), then the kWarps sums are added in order. Every column
// gets the same order on every run.
template <class S>
__global__ void __launch_bounds__(kThreads) sum_partials(const ComputeOf<S>* part, int P, int64_t N, S* dw, S* db) {
  using C = ComputeOf<S>;
  __shared__ C sh[kWarps][32];
  const int64_t c = int64_t(blockIdx.x) * 32 + threadIdx.x;  // column of [2, N]
  const int y = threadIdx.y;
  C s = 0;
  if (c < 2 * N) {
    int p = y;
    for (; p + 7 * kWarps < P; p += 8 * kWarps) {
      C v[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = __ldcg(part + int64_t(p + k * kWarps) * 2 * N + c);
#pragma unroll
      for (int k = 0; k < 8; ++k) s += v[k];
    }
    for (; p < P; p += kWarps) s += __ldcg(part + int64_t(p) * 2 * N + c);
  }
  sh[y][threadIdx.x] = s;
  __syncthreads();
  if (y != 0 || c >= 2 * N) return;
  C t = 0;
#pragma unroll
  for (int k = 0; k < kWarps; ++k) t += sh[k][threadIdx.x];
  S* out = c < N ? dw : db;
  if (out) out[c < N ? c : c - N] = narrow<S>(t);
}

// A warp per row as forward_rows; the warps stride over the rows (row += gridDim.x * kWarps).
// part (null: no parameter gradients) gets a partial row [2, N] per block.
template <class S, int V, int E>
__global__ void __launch_bounds__(kThreads) backward_rows(int64_t A, int N, const S* x, const S* w,
                                                          const ComputeOf<S>* mean, const ComputeOf<S>* rstd,
                                                          const S* g, const bool* mask, S* dx, ComputeOf<S>* part) {
  using C = ComputeOf<S>;
  const int wi = threadIdx.x / 32, lane = threadIdx.x % 32;
  const C inv_n = C(1) / C(N);
  C aw[E][V], ab[E][V];
#pragma unroll
  for (int j = 0; j < E; ++j)
#pragma unroll
    for (int k = 0; k < V; ++k) aw[j][k] = ab[j][k] = 0;
  for (int64_t row = int64_t(blockIdx.x) * kWarps + wi; row < A; row += int64_t(gridDim.x) * kWarps) {
    const C m = mean[row], r = rstd[row];
    const S *xr = x + row * N, *gr = g + row * N;
    C xh[E][V], gv[E][V];
    C s1 = 0, s2 = 0;
#pragma unroll
    for (int j = 0; j < E; ++j) {
      const int i = (lane + 32 * j) * V;
      if (i < N) {
        C wv[V];
        load<S, V>(xr + i, xh[j]);
        load<S, V>(gr + i, gv[j]);
        if (w) load<S, V>(w + i, wv);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          xh[j][k] = (xh[j][k] - m) * r;
          const C gw = w ? gv[j][k] * wv[k] : gv[j][k];
          s1 += gw;
          s2 += gw * xh[j][k];
        }
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) xh[j][k] = gv[j][k] = 0;
      }
    }
    s1 = warp_sum(s1) * inv_n;
    s2 = warp_sum(s2) * inv_n;
    if (dx) {
      S* dr = dx + row * N;
#pragma unroll
      for (int j = 0; j < E; ++j) {
        const int i = (lane + 32 * j) * V;
        if (i >= N) continue;
        C wv[V], o[V];
        if (w) load<S, V>(w + i, wv);
#pragma unroll
        for (int k = 0; k < V; ++k) o[k] = ((w ? gv[j][k] * wv[k] : gv[j][k]) - s1 - xh[j][k] * s2) * r;
        store<S, V>(dr + i, o);
      }
    }
    if (part && (!mask || mask[row]))
#pragma unroll
      for (int j = 0; j < E; ++j)
#pragma unroll
        for (int k = 0; k < V; ++k) {
          aw[j][k] += gv[j][k] * xh[j][k];
          ab[j][k] += gv[j][k];
        }
  }
  if (!part) return;
  // The block's warps summed in order, one slice of 32 * V columns at a time.
  __shared__ C sh[kWarps][32 * V];
  C* pb = part + int64_t(blockIdx.x) * 2 * N;
#pragma unroll
  for (int j = 0; j < E; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int k = 0; k < V; ++k) sh[wi][lane * V + k] = h ? ab[j][k] : aw[j][k];
      __syncthreads();
      for (int c = threadIdx.x; c < 32 * V; c += kThreads) {
        const int i = 32 * V * j + c;
        if (i < N) {
          C s = 0;
          for (int k = 0; k < kWarps; ++k) s += sh[k][c];
          pb[h * N + i] = s;
        }
      }
      __syncthreads();
    }
}

// dx of any row: a warp (kBlock: the block) per row.
template <class S, bool kBlock>
__global__ void backward_rows_loop(int64_t A, int64_t N, const S* x, const S* w, const ComputeOf<S>* mean,
                                   const ComputeOf<S>* rstd, const S* g, S* dx) {
  using C = ComputeOf<S>;
  const int64_t row = kBlock ? int64_t(blockIdx.x) : int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= A) return;
  const int t0 = kBlock ? threadIdx.x : threadIdx.x % 32, step = kBlock ? blockDim.x : 32;
  auto sum = [](C v) { return kBlock ? block_sum(v) : warp_sum(v); };
  const S *xr = x + row * N, *gr = g + row * N;
  const C m = mean[row], r = rstd[row], inv_n = C(1) / C(N);
  C s1 = 0, s2 = 0;
  for (int64_t i = t0; i < N; i += step) {
    const C gw = w ? widen(gr[i]) * widen(w[i]) : widen(gr[i]);
    s1 += gw;
    s2 += gw * ((widen(xr[i]) - m) * r);
  }
  s1 = sum(s1) * inv_n;
  s2 = sum(s2) * inv_n;
  S* dr = dx + row * N;
  for (int64_t i = t0; i < N; i += step) {
    const C gw = w ? widen(gr[i]) * widen(w[i]) : widen(gr[i]);
    dr[i] = narrow<S>((gw - s1 - (widen(xr[i]) - m) * r * s2) * r);
  }
}

// dx of columns (B > 1): a thread per (a, b).
template <class S>
__global__ void backward_cols(int64_t A, int64_t N, int64_t B, const S* x, const S* w, const ComputeOf<S>* mean,
                              const ComputeOf<S>* rstd, const S* g, S* dx) {
  using C = ComputeOf<S>;
  const C inv_n = C(1) / C(N);
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < A * B; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t a = t / B, off = a * N * B + (t - a * B);
    const C m = mean[t], r = rstd[t];
    C s1 = 0, s2 = 0;
    for (int64_t n = 0; n < N; ++n) {
      const C gw = w ? widen(g[off + n * B]) * widen(w[n]) : widen(g[off + n * B]);
      s1 += gw;
      s2 += gw * ((widen(x[off + n * B]) - m) * r);
    }
    s1 *= inv_n;
    s2 *= inv_n;
    for (int64_t n = 0; n < N; ++n) {
      const C gw = w ? widen(g[off + n * B]) * widen(w[n]) : widen(g[off + n * B]);
      dx[off + n * B] = narrow<S>((gw - s1 - (widen(x[off + n * B]) - m) * r * s2) * r);
    }
  }
}

// Parameter gradients of rows (B = 1): a block of 32 x kWarps threads per tile of 32 columns;
// row group y of the block visits rows y, y + kWarps, ...; the groups are summed in order.
template <class S>
__global__ void params_row_tiles(int64_t A, int64_t N, const S* x, const ComputeOf<S>* mean,
                                 const ComputeOf<S>* rstd, const S* g, const bool* mask, S* dw, S* db) {
  using C = ComputeOf<S>;
  __shared__ C sh[2][kWarps][33];
  const int64_t n = int64_t(blockIdx.x) * 32 + threadIdx.x;
  C sw = 0, sb = 0;
  if (n < N)
    for (int64_t row = threadIdx.y; row < A; row += kWarps) {
      if (mask && !mask[row]) continue;
      const C gv = widen(g[row * N + n]);
      sw += gv * ((widen(x[row * N + n]) - mean[row]) * rstd[row]);
      sb += gv;
    }
  sh[0][threadIdx.y][threadIdx.x] = sw;
  sh[1][threadIdx.y][threadIdx.x] = sb;
  __syncthreads();
  if (threadIdx.y == 0 && n < N) {
    C tw = 0, tb = 0;
    for (int k = 0; k < kWarps; ++k) {
      tw += sh[0][k][threadIdx.x];
      tb += sh[1][k][threadIdx.x];
    }
    if (dw) dw[n] = narrow<S>(tw);
    if (db) db[n] = narrow<S>(tb);
  }
}

// Parameter gradients of columns (B > 1): a block per n, its threads over t = (a, b).
template <class S>
__global__ void params_cols(int64_t A, int64_t N, int64_t B, const S* x, const ComputeOf<S>* mean,
                            const ComputeOf<S>* rstd, const S* g, const bool* mask, S* dw, S* db) {
  using C = ComputeOf<S>;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    C sw = 0, sb = 0;
    for (int64_t t = threadIdx.x; t < A * B; t += blockDim.x) {
      if (mask && !mask[t]) continue;
      const int64_t a = t / B, off = (a * N + n) * B + (t - a * B);
      const C gv = widen(g[off]);
      sw += gv * ((widen(x[off]) - mean[t]) * rstd[t]);
      sb += gv;
    }
    sw = block_sum(sw);
    sb = block_sum(sb);
    if (threadIdx.x == 0) {
      if (dw) dw[n] = narrow<S>(sw);
      if (db) db[n] = narrow<S>(sb);
    }
  }
}

// ---- launch helpers

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Calls f(Lanes<E>{}) with the smallest E in {1, 2, 4, 6, 8, 12} (at most 32 / V: 32 values
// per lane, which the backward keeps four times in registers) that covers `per_lane` vectors
// per lane; false if none does.
template <int V, class F>
bool with_lanes(int64_t per_lane, F&& f) {
  if (per_lane <= 1) return f(Lanes<1>{}), true;
  if (per_lane <= 2) return f(Lanes<2>{}), true;
  if (per_lane <= 4) return f(Lanes<4>{}), true;
  if constexpr (32 / V >= 8) {
    if (per_lane <= 6) return f(Lanes<6>{}), true;
    if (per_lane <= 8) return f(Lanes<8>{}), true;
  }
  if constexpr (32 / V >= 12) {
    if (per_lane <= 12) return f(Lanes<12>{}), true;
  }
  return false;
}

unsigned row_blocks(int64_t A) { return unsigned(std::min<int64_t>((A + kWarps - 1) / kWarps, int64_t(1) << 30)); }

}  // namespace

void launch_layer_norm(DType dt, const LayerNormLaunch& a, void* y, void* mean, void* rstd, cudaStream_t s) {
  if (a.A * a.N * a.B == 0) return;
  dispatch_floating(dt, "layer_norm", [&](auto tag) {
    using S = decltype(tag);
    using C = ComputeOf<S>;
    constexpr int V = int(16 / sizeof(S));
    const S *x = static_cast<const S*>(a.x), *w = static_cast<const S*>(a.weight), *b = static_cast<const S*>(a.bias);
    S* ys = static_cast<S*>(y);
    C *ms = static_cast<C*>(mean), *rs = static_cast<C*>(rstd);
    const C eps = C(a.eps);
    if (a.B > 1) {
      forward_cols<S><<<blocks_for(a.A * a.B), kThreads, 0, s>>>(a.A, a.N, a.B, x, w, b, eps, ys, ms, rs);
      return;
    }
    const bool vec = a.N % V == 0 && aligned16(x) && aligned16(y) && aligned16(w) && aligned16(b);
    if (vec && with_lanes<V>((a.N + 32 * V - 1) / (32 * V), [&](auto e) {
          forward_rows<S, V, decltype(e)::value><<<row_blocks(a.A), kThreads, 0, s>>>(a.A, int(a.N), x, w, b, eps,
                                                                                      ys, ms, rs);
        }))
      return;
    if (a.N <= kWarpLoopMax)
      forward_rows_loop<S, false><<<row_blocks(a.A), kThreads, 0, s>>>(a.A, a.N, x, w, b, eps, ys, ms, rs);
    else
      forward_rows_loop<S, true><<<unsigned(a.A), kThreads, 0, s>>>(a.A, a.N, x, w, b, eps, ys, ms, rs);
  });
  check_launch("layer_norm");
}

void launch_layer_norm_backward(DType dt, const LayerNormLaunch& a, const void* mean, const void* rstd, const void* g,
                                const bool* mask, void* dx, void* dweight, void* dbias, cudaStream_t s) {
  if (a.N == 0) return;
  const bool params = dweight || dbias;
  if (a.A * a.B == 0) {  // no rows: zero parameter gradients (all-zero bits are 0 in every float dtype)
    for (void* p : {dweight, dbias})
      if (p && cudaMemsetAsync(p, 0, size_t(a.N) * dtype_size(dt), s) != cudaSuccess) {
        cudaGetLastError();
        throw Error("layer_norm: cudaMemsetAsync failed");
      }
    return;
  }
  dispatch_floating(dt, "layer_norm", [&](auto tag) {
    using S = decltype(tag);
    using C = ComputeOf<S>;
    constexpr int V = int(16 / sizeof(S));
    const S *x = static_cast<const S*>(a.x), *w = static_cast<const S*>(a.weight), *gs = static_cast<const S*>(g);
    const C *ms = static_cast<const C*>(mean), *rs = static_cast<const C*>(rstd);
    S *dxs = static_cast<S*>(dx), *dws = static_cast<S*>(dweight), *dbs = static_cast<S*>(dbias);
    if (a.B == 1) {
      const bool vec = a.N % V == 0 && aligned16(x) && aligned16(w) && aligned16(g) && aligned16(dx);
      if (vec && with_lanes<V>((a.N + 32 * V - 1) / (32 * V), [&](auto e) {
            constexpr int E = decltype(e)::value;
            if (!params) {
              backward_rows<S, V, E><<<row_blocks(a.A), kThreads, 0, s>>>(a.A, int(a.N), x, w, ms, rs, gs, mask, dxs,
                                                                          nullptr);
              return;
            }
            // Scratch: a partial row [2, N] per block, summed by a second kernel.
            const unsigned blocks = unsigned(std::min<int64_t>((a.A + kWarps - 1) / kWarps, kMaxParamBlocks));
            const size_t bytes = size_t(blocks) * 2 * size_t(a.N) * sizeof(C);
            C* scratch = nullptr;
            if (cudaMallocAsync(reinterpret_cast<void**>(&scratch), bytes, s) != cudaSuccess) {
              cudaGetLastError();
              throw Error("layer_norm: cudaMallocAsync of " + std::to_string(bytes) + " bytes failed");
            }
            backward_rows<S, V, E><<<blocks, kThreads, 0, s>>>(a.A, int(a.N), x, w, ms, rs, gs, mask, dxs, scratch);
            sum_partials<S><<<unsigned((2 * a.N + 31) / 32), dim3(32, kWarps), 0, s>>>(scratch, int(blocks), a.N, dws,
                                                                                       dbs);
            cudaFreeAsync(scratch, s);
          }))
        return;
      if (dx) {
        if (a.N <= kWarpLoopMax)
          backward_rows_loop<S, false><<<row_blocks(a.A), kThreads, 0, s>>>(a.A, a.N, x, w, ms, rs, gs, dxs);
        else
          backward_rows_loop<S, true><<<unsigned(a.A), kThreads, 0, s>>>(a.A, a.N, x, w, ms, rs, gs, dxs);
      }
      if (params)
        params_row_tiles<S><<<unsigned((a.N + 31) / 32), dim3(32, kWarps), 0, s>>>(a.A, a.N, x, ms, rs, gs, mask, dws,
                                                                                   dbs);
      return;
    }
    if (dx) backward_cols<S><<<blocks_for(a.A * a.B), kThreads, 0, s>>>(a.A, a.N, a.B, x, w, ms, rs, gs, dxs);
    if (params)
      params_cols<S><<<unsigned(std::min<int64_t>(a.N, 65535)), kThreads, 0, s>>>(a.A, a.N, a.B, x, ms, rs, gs, mask,
                                                                                  dws, dbs);
  });
  check_launch("layer_norm_backward");
}

}  // namespace dimx::gpu

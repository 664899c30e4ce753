#pragma once
// Tile helpers shared by the fused attention kernels (forward and backward): 16-byte vectors,
// cp.async copies and zero-filled tile loads into shared memory, the bias's rows and a relative
// bias's band, the dropout mask, and the backwards' first kernel and the last ones of a relative
// bias's gradients (the table's from diagonal sums, the row scale's from row sums).
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "float_types.cuh"
#include "launch.h"
#include "philox.h"

namespace dimx::gpu::attention_tiles {

using gpu::AttentionArgs;

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

// Whether the bias is a table by relative position read through its view (row stride = -column
// stride: element j - i of a problem's row of positions).
__host__ __device__ __forceinline__ bool relative_view(const AttentionArgs& a) {
  return a.bias && a.bias_cs != 0 && a.bias_rs == -a.bias_cs;
}

// The bias term of problem b's rows, in log2 units (the energies' units in the kernels), times
// the row's factor where the relative bias has a row scale.
template <class T, class C>
struct BiasRows {
  const T* base;  // null: no bias
  int64_t rs, cs;
  const T* scale;  // null: no row scale
  int64_t scale_rs;
  // enabled: a compile-time constant of the kernel (false: no bias, and its code folds away).
  __device__ BiasRows(const AttentionArgs& a, int64_t b, bool enabled)
      : base(enabled && a.bias ? static_cast<const T*>(a.bias) + (a.bias_off ? a.bias_off[b] : 0) : nullptr),
        rs(a.bias_rs),
        cs(a.bias_cs),
        scale(enabled && a.bias && a.row_scale
                  ? static_cast<const T*>(a.row_scale) + (a.row_scale_off ? a.row_scale_off[b] : 0)
                  : nullptr),
        scale_rs(a.row_scale_rs) {}
  // Row r's start (base non-null), and key j of such a row, without the row's factor.
  __device__ __forceinline__ const T* row(int64_t r) const { return base + r * rs; }
  __device__ __forceinline__ C at(const T* row, int64_t j) const {
    return C(widen(row[j * cs])) * C(1.4426950408889634);
  }
  // Row r's factor (r < tq): its row scale, 1 without one.
  __device__ __forceinline__ C factor(int64_t r) const { return scale ? C(widen(scale[r * scale_rs])) : C(1); }
  // The term of (r, j); 0 without a bias.
  __device__ __forceinline__ C operator()(int64_t r, int64_t j) const {
    return base ? at(row(r), j) * factor(r) : C(0);
  }
};

// The band of relative terms a tile pair reads: band[i] = the term of key - row = first + i
// (log2 units, without row factors; 0 outside the table's (-tq, tk)), for i < n, by the block
// (of NT threads).
template <class T, class C, int NT = kThreads>
__device__ __forceinline__ void stage_band(C* band, const BiasRows<T, C>& bias, const AttentionArgs& a,
                                           int64_t first, int n) {
  for (int i = threadIdx.x; i < n; i += NT) {
    const int64_t p = first + i;
    band[i] = p > -a.tq && p < a.tk ? bias.at(bias.base, p) : C(0);
  }
}

// A relative bias's gradient, first step: adds a tile pair's diagonal sums into its key tile's
// row of them (diag_row, tq + BK - 1 wide, where key - row = p lands at p - j0 + tq - 1). S is
// the pair's dS by key (S[key * LS + row]: BK keys, BQ rows starting at row i0, zeros outside
// the problem), each row times fac[row] where FAC (a row scale). Diagonal c (key - row =
// c - (BQ - 1)) sums its rows in order, rows outside the pair adding 0 (a fixed trip count:
// the loads issue back to back); one thread per diagonal, by the block (of NT threads).
// Walking the query tiles in order, a block gives each element its shares in a fixed order.
template <class C, int BK, int BQ, int LS, bool FAC, int NT = kThreads>
__device__ __forceinline__ void add_diagonals(const C* S, const C* fac, C* diag_row, int64_t i0, int64_t tq) {
  for (int c = threadIdx.x; c < BK + BQ - 1; c += NT) {
    const int dl = c - (BQ - 1);
    C x = 0;
#pragma unroll
    for (int r = 0; r < BQ; ++r) {
      const int kr = r + dl;
      if constexpr (FAC) x = fma(fac[r], kr >= 0 && kr < BK ? S[kr * LS + r] : C(0), x);
      else x += kr >= 0 && kr < BK ? S[kr * LS + r] : C(0);
    }
    const int64_t at = int64_t(dl) - i0 + tq - 1;  // p - j0 + tq - 1
    if (at >= 0 && at < tq + BK - 1) diag_row[at] += x;
  }
}

// The shortest of a warp's row lengths (each thread's WM x 2 rows of the mma fragments); every
// lane must call it (shuffles).
template <int WM>
__device__ __forceinline__ int warp_shortest(const int (&len)[WM][2]) {
  int x = INT_MAX;
#pragma unroll
  for (int m = 0; m < WM; ++m) x = min(x, min(len[m][0], len[m][1]));
#pragma unroll
  for (int w = 16; w > 0; w >>= 1) x = min(x, __shfl_xor_sync(0xffffffffu, x, w));
  return x;
}

// Calls f with std::true_type where c holds, std::false_type elsewhere: one compiled body
// per case (a kernel's fast path without a test it can skip).
template <class F>
__device__ __forceinline__ void either(bool c, F&& f) {
  if (c) f(std::true_type{});
  else f(std::false_type{});
}

// The sum of x over a quad (lanes 4g .. 4g + 3: one row of an mma fragment), in a fixed order.
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// The dropout mask of problem (b0, b1) (AttentionArgs' drop fields); `on` false without dropout.
// Elements are regenerated where they are needed (the backward draws the forward's mask).
template <class C>
struct DropMask {
  uint64_t seed, offset, threshold;
  int64_t base, rs, cs;
  C scale;  // 1 / (1 - p): the kept weights' factor
  bool on, f64;
  // The mask's counters cover aligned groups of four consecutive keys of a row (f32 values,
  // keys contiguous in the mask, rows and problems starting at multiples of 4): the kernels
  // then draw a group's block once and share it between lanes.
  bool quads;
  // enabled: as BiasRows's.
  __device__ DropMask(const AttentionArgs& a, int64_t b0, int64_t b1, bool enabled)
      : seed(a.drop_seed),
        offset(a.drop_offset),
        threshold(a.drop_threshold),
        base(b0 * a.drop_s0 + b1 * a.drop_s1),
        rs(a.drop_rs),
        cs(a.drop_cs),
        scale(C(a.drop_scale)),
        on(enabled && a.drop_p > 0),
        f64(a.drop_f64),
        quads(!a.drop_f64 && a.drop_cs == 1 && a.drop_rs % 4 == 0 && (b0 * a.drop_s0 + b1 * a.drop_s1) % 4 == 0) {}
  // Whether word x of a block keeps its weight (f32 values: the top 24 bits).
  __device__ __forceinline__ bool kept_word(uint32_t x) const { return (x >> 8) >= threshold; }
  __device__ __forceinline__ philox::KeepStream stream() const { return {seed, offset, threshold, f64}; }
  __device__ __forceinline__ uint64_t index(int64_t r, int64_t j) const { return uint64_t(base + r * rs + j * cs); }
  // Whether weight (r, j) is kept.
  __device__ __forceinline__ bool keep(int64_t r, int64_t j) const {
    philox::KeepStream s = stream();
    return s(index(r, j));
  }
};

// The variants of the exact (f32/f64) kernels, a compile-time parameter: kPlain leaves the
// bias and dropout code out (no registers spent on it where neither is asked for), kExtras
// reads a bias tensor and draws dropout, kRelative reads a relative bias (its band of terms
// staged in shared memory, times the row scale) and draws no dropout (its registers would
// spill in the f32 forward's loop); -1: none fits (a relative bias with dropout).
enum : int { kPlain = 0, kExtras = 1, kRelative = 2 };
inline int exact_variant(const AttentionArgs& a) {
  if (relative_view(a)) return a.drop_p > 0 ? -1 : kRelative;
  return a.bias || a.drop_p > 0 ? kExtras : kPlain;
}

// Where problem b's part of the bias gradient starts (null: none wanted, or the bias
// broadcasts over keys, where the gradient is exactly 0: each row's dS sums to 0).
template <class G>
__device__ __forceinline__ G* dbias_part(const AttentionArgs& a, const AttentionGradArgs& ga, int64_t b, bool enabled) {
  if (!enabled || !ga.dbias || a.bias_cs == 0) return nullptr;
  const int64_t* off = ga.dbias_off ? ga.dbias_off : a.bias_off;
  return static_cast<G*>(ga.dbias) + (off ? off[b] : 0);
}

__device__ __forceinline__ int row_length(const AttentionArgs& a, int64_t b, int64_t r) {
  if (r >= a.tq) return 0;
  const int64_t l = a.key_lengths ? a.key_lengths[b * a.tq + r] : a.tk;
  return int(l < 0 ? 0 : (l > a.tk ? a.tk : l));
}

// The longest key length of the row tiles (`tile` rows each: tile_kmax[b, tile] of the rows
// kernel below, rtiles per problem) that rows [i0, i0 + rows) of problem b span.
__device__ __forceinline__ int longest_length(const int* tile_kmax, int64_t b, int64_t rtiles, int64_t i0, int rows,
                                              int tile) {
  int kmax = 0;
  for (int64_t rt = i0 / tile; rt < rtiles && rt < (i0 + rows) / tile; ++rt)
    kmax = tile_kmax[b * rtiles + rt] > kmax ? tile_kmax[b * rtiles + rt] : kmax;
  return kmax;
}

// The first kernel of each backward. Per row: Dr[b, r] = sum_c g[b, r, c] out[b, r, c] (in C)
// and the row's length, 0 where its output gradient is all zero (a padded query frame: its
// weights and q, which may hold anything, stay out of every sum; the share it would add is
// exactly 0). Per query tile: tile_kmax[b, tile] = the longest length of its BM rows, where
// tile_kmin is given tile_kmin[b, tile] = the shortest (0 for a tile past the last query), and,
// where dq is given, dQ rows of 0 where tile_kmax is 0 (no key tile visits it). One block of 128
// threads per (problem, query tile), 8 lanes per row (4 rows of a warp in flight at once), in
// 16-byte loads where the rows are aligned to them. S: the stored type, C: the computing one.
template <class S, class C, int BM>
__global__ void __launch_bounds__(kThreads)
    rows_kernel(AttentionArgs a, const S* g, C* dr, int* row_len, int* tile_kmax, int* tile_kmin, S* dq,
                int64_t dq_bs0, int64_t dq_bs1, int64_t dq_rs) {
  constexpr int L = 8, VN = 16 / int(sizeof(S));  // lanes per row; elements per 16 bytes
  __shared__ int kmax_s, kmin_s;
  const int64_t b = blockIdx.x, b0 = b / a.batch1, b1 = b % a.batch1;
  const int64_t i0 = int64_t(blockIdx.y) * BM;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, sub = lane % L;
  if (threadIdx.x == 0) kmax_s = 0, kmin_s = INT_MAX;
  __syncthreads();
  const int64_t off = b0 * a.o_bs0 + b1 * a.o_bs1;
  const S* o = static_cast<const S*>(a.out) + off;
  g += off;
  const bool vec = a.dv % VN == 0 && a.o_rs % VN == 0 && reinterpret_cast<uintptr_t>(o) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(g) % 16 == 0;
  int mine = 0, least = INT_MAX;
  // The row loop's trip count is the same for every lane of a warp (the shuffles below).
  for (int base = warp * (32 / L); base < BM; base += kThreads / L) {
    const int64_t r = i0 + base + lane / L;
    const bool in = base + lane / L < BM && r < a.tq;
    C s = 0;
    int nonzero = 0;  // (a zero gradient adds nothing, whatever the output holds there)
    if (in && vec) {
      for (int64_t c = int64_t(sub) * VN; c < a.dv; c += L * VN) {
        S gv[VN], ov[VN];
        *reinterpret_cast<uint4*>(gv) = *reinterpret_cast<const uint4*>(g + r * a.o_rs + c);
        *reinterpret_cast<uint4*>(ov) = *reinterpret_cast<const uint4*>(o + r * a.o_rs + c);
#pragma unroll
        for (int e = 0; e < VN; ++e) {
          const C gc = C(widen(gv[e]));
          nonzero |= gc != C(0);
          if (gc != C(0)) s = fma(gc, C(widen(ov[e])), s);
        }
      }
    } else if (in) {
      for (int64_t c = sub; c < a.dv; c += L) {
        const C gc = C(widen(g[r * a.o_rs + c]));
        nonzero |= gc != C(0);
        if (gc != C(0)) s = fma(gc, C(widen(o[r * a.o_rs + c])), s);
      }
    }
#pragma unroll
    for (int w = L / 2; w > 0; w >>= 1) {
      s += __shfl_xor_sync(0xffffffffu, s, w);
      nonzero |= __shfl_xor_sync(0xffffffffu, nonzero, w);
    }
    const int l = in && nonzero ? row_length(a, b, r) : 0;
    if (in && sub == 0) {
      dr[b * a.tq + r] = s;
      row_len[b * a.tq + r] = l;
    }
    mine = l > mine ? l : mine;
    if (base + lane / L < BM) least = l < least ? l : least;
  }
  if (sub == 0 && mine > 0) atomicMax(&kmax_s, mine);
  if (sub == 0 && tile_kmin) atomicMin(&kmin_s, least);
  __syncthreads();
  if (threadIdx.x == 0) tile_kmax[b * gridDim.y + blockIdx.y] = kmax_s;
  if (threadIdx.x == 0 && tile_kmin) tile_kmin[b * gridDim.y + blockIdx.y] = kmin_s;
  if (kmax_s == 0 && dq) {
    S* out = dq + b0 * dq_bs0 + b1 * dq_bs1;
    for (int64_t i = threadIdx.x; i < int64_t(BM) * a.d; i += kThreads) {
      const int64_t r = i0 + i / a.d;
      if (r < a.tq) out[r * dq_rs + i % a.d] = narrow<S>(ComputeOf<S>(0));
    }
  }
}

// A relative bias's gradient, last step: element p of problem b's table part is the sum over
// its key tiles (of bk keys, in order) of their diagonal sums along key - row = p (diag:
// [problems, ktiles, tq + bk - 1], see add_diagonals).
template <class C>
__global__ void relative_dbias_kernel(AttentionArgs a, AttentionGradArgs ga, const C* diag, int64_t ktiles, int bk) {
  const int64_t width = a.tq + bk - 1, n = a.tq + a.tk - 1;
  for (int64_t b = blockIdx.y; b < a.batch0 * a.batch1; b += gridDim.y) {
    C* part = dbias_part<C>(a, ga, b, true);
    for (int64_t pos = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; pos < n; pos += int64_t(gridDim.x) * blockDim.x) {
      // Key tile kt holds pos at pos - kt bk (p - j0 + tq - 1 with pos = p + tq - 1).
      const int64_t first = pos >= width ? (pos - width) / bk + 1 : 0;
      const int64_t last = pos / bk < ktiles - 1 ? pos / bk : ktiles - 1;
      C x = 0;
      for (int64_t kt = first; kt <= last; ++kt) x += diag[(b * ktiles + kt) * width + pos - kt * bk];
      part[(pos - (a.tq - 1)) * a.bias_cs] = x;
    }
  }
}

// Writes each problem's part of the table's gradient from the diagonal sums, on stream s.
template <class C>
void launch_relative_dbias(const AttentionArgs& a, const AttentionGradArgs& ga, const C* diag, int64_t ktiles, int bk,
                           cudaStream_t s) {
  const int64_t problems = a.batch0 * a.batch1, n = a.tq + a.tk - 1;
  const unsigned blocks = unsigned((n + 255) / 256 < 1024 ? (n + 255) / 256 : 1024);
  const unsigned ys = unsigned(problems < 65535 ? problems : 65535);
  relative_dbias_kernel<C><<<dim3(blocks, ys), 256, 0, s>>>(a, ga, diag, ktiles, bk);
  check_launch("dot_attention backward (relative bias)");
}

// The row scale's gradient from row sums of dS times the term: row r of problem b has `parts`
// partial sums at dscale[(b * parts + k) * tq + r], of which, where tile_kmax is given (the
// rows kernel's, query tiles of bm), only the key tiles of bn keys that r's query tile sees
// were written. A row's parts are added in order, and its total into problem b's part of the
// gradient at the scale's row stride, or, where the scale broadcasts over the rows, the rows'
// totals in order.
template <class C>
__global__ void row_scale_grad_kernel(AttentionArgs a, AttentionGradArgs ga, const C* dscale, int64_t parts,
                                      const int* tile_kmax, int bm, int bn) {
  const int64_t problems = a.batch0 * a.batch1;
  const int64_t* off = ga.drow_scale_off ? ga.drow_scale_off : a.row_scale_off;
  C* out = static_cast<C*>(ga.drow_scale);
  auto total = [&](int64_t b, int64_t r) {
    const int64_t n = tile_kmax ? (tile_kmax[b * ((a.tq + bm - 1) / bm) + r / bm] + bn - 1) / bn : parts;
    const C* x = dscale + b * parts * a.tq + r;
    C sum = n > 0 ? x[0] : C(0);
    for (int64_t k = 1; k < n; ++k) sum += x[k * a.tq];
    return sum;
  };
  if (a.row_scale_rs == 0) {
    for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < problems; b += int64_t(gridDim.x) * blockDim.x) {
      C x = 0;
      for (int64_t r = 0; r < a.tq; ++r) x += total(b, r);
      out[off ? off[b] : 0] += x;
    }
    return;
  }
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < problems * a.tq;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / a.tq, r = i % a.tq;
    out[(off ? off[b] : 0) + r * a.row_scale_rs] += total(b, r);
  }
}

// Adds the row scale's gradient from the row sums (row_scale_grad_kernel), on stream s.
template <class C>
void launch_row_scale_grad(const AttentionArgs& a, const AttentionGradArgs& ga, const C* dscale, int64_t parts,
                           const int* tile_kmax, int bm, int bn, cudaStream_t s) {
  const int64_t problems = a.batch0 * a.batch1, n = a.row_scale_rs == 0 ? problems : problems * a.tq;
  row_scale_grad_kernel<C><<<unsigned((n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096), 256, 0, s>>>(
      a, ga, dscale, parts, tile_kmax, bm, bn);
  check_launch("dot_attention backward (row scale)");
}

}  // namespace dimx::gpu::attention_tiles

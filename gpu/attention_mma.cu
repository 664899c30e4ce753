// Fused attention for bf16 and f16 on tensor cores (mma.sync m16n8k16, f32 accumulation), and
// for f32 as TF32 where the caller allows it (m16n8k8: see kStep), forward and backward, for the
// problems of gpu/attention.cu (the same AttentionArgs: strided q, k, v, out; per (problem,
// query) key lengths; the forward writes each row's log2-sum-exp2, in f32, for the backward).
//
// Forward: a block of 4 warps owns 64 queries (16 per warp) and walks the keys they can see in
// tiles of 64. A warp's energies S = Q K^T stay in the accumulator fragments, the online
// softmax works on them in registers, and the weights become the A operand of O += P V
// without leaving registers (the m16n8 accumulator layout of two adjacent key tiles is the
// m16k16 operand layout). V reaches its operand layout through ldmatrix.trans.
// Backward (P = exp2(S scale log2e - lse), Dr = rowsum(dO O), dS = P (dP - Dr)), three kernels:
//   rows: Dr, each row's effective length (0 where dO's row is all zero: a padded query
//         frame stays out of every sum) and each query tile's longest length;
//   keys: a block owns 64 keys (16 per warp) and walks the query tiles that see any of them:
//         S^T, P^T, dV += P^T dO, dP^T = V dO^T, dK += dS^T Q;
//   queries: a block owns 64 queries and walks their keys: S, P, dP = dO V^T, dQ += dS K.
// Splitting dQ from dK/dV recomputes S and dP once more, but every gradient is a sum in one
// block in a fixed order: two runs give the same bits, with no atomics.
// Weights and dS enter the products rounded to the element type, as in the usual flash
// attention; everything else accumulates in f32. An additive bias is read where an energy is
// formed; its gradient (f32) is written by the keys kernel from dS before rounding. Dropout
// regenerates its mask (Philox by element index) wherever a weight is formed: the forward drops
// weights after the row sums, the backward takes dV from the dropped weights and dP through
// the mask.
// On compute capability 9.0, bf16/f16 without a bias up to head size 64 (the backward, and
// the forward without dropout) go to the same kernels on wgmma instead (gpu/attention_wgmma.cu).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "attention_fragments.cuh"
#include "attention_tiles.cuh"
#include "attention_wgmma.h"
#include "common.cuh"

namespace dimx::gpu {

namespace {

using namespace attention_tiles;
using namespace attention_fragments;

constexpr int kTile = 64;  // queries and keys per tile; 16 rows per warp

// c += a b for one k step: a row-major 16 x kStep, b column-major kStep x 8, c 16 x 8 in f32.
// f32 operands run as TF32 (the instruction reads a register's top 19 bits).
template <class T>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Four 8x8 matrices of 16-bit elements (ldmatrix); lane l gives the address of row l % 8 of
// matrix l / 8, and each thread receives row g, columns 2t and 2t + 1 of each.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

// The same, transposed on the way (ldmatrix.trans).
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

// The A operand (16 rows x one k step at column c0) of a warp's rows r0.. of a row-major
// shared tile with row stride LD, in one ldmatrix: the four 8 x 16-byte quarters (rows 0-7 and
// 8-15 at column c0, then 16 bytes on).
template <class T, int LD>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* s, int r0, int c0) {
  const int lane = threadIdx.x % 32;
  ldsm_x4(a, s + (r0 + (lane & 15)) * LD + c0 + (lane >> 4) * kVec<T>);
}

// acc[m][n] = A_m . X[rows x0 + 8 n ..][:D]^T: a warp's WM tiles of 16 rows (A operands af, one
// per k step) times the rows of X (row-major, stride LD) as columns, NT tiles of 8 rows of X.
// Each operand of X is loaded once for the WM tiles; those of two column tiles come in one
// ldmatrix (their 8 rows of X at the step's two 16-byte halves).
template <class T, int D, int NT, int LD, int WM>
__device__ __forceinline__ void rows_times_rows(float (&acc)[WM][NT][4], const uint32_t (&af)[WM][D / kStep<T>][4],
                                                const T* X, int x0) {
  static_assert(NT % 2 == 0, "column tiles come in pairs");
  const int lane = threadIdx.x % 32;
  const int row = (lane & 7) + ((lane >> 4) << 3), col = ((lane >> 3) & 1) * kVec<T>;
#pragma unroll
  for (int m = 0; m < WM; ++m)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[m][n][e] = 0.f;
#pragma unroll
  for (int kk = 0; kk < D / kStep<T>; ++kk)
#pragma unroll
    for (int n = 0; n < NT; n += 2) {
      uint32_t b[4];
      ldsm_x4(b, X + (x0 + 8 * n + row) * LD + kStep<T> * kk + col);
#pragma unroll
      for (int m = 0; m < WM; ++m) {
        mma<T>(acc[m][n], af[m][kk], b[0], b[1]);
        mma<T>(acc[m][n + 1], af[m][kk], b[2], b[3]);
      }
    }
}

// acc[m][n] += P_m . Y[rows y0 ..][cols 8 n ..] over NK rows of Y: the weights of WM row tiles as
// A operands (pf: one per k step of Y's rows, from as_operand), Y row-major (stride LD); D / 8
// output tiles. 16-bit: Y through ldmatrix.trans. TF32: the k slots t and t + 4 of a step hold
// its rows 2t and 2t + 1 (as_operand's order), so each thread reads those two rows of its
// column (8t + g mod 32 distinct banks with LD = 4 mod 32).
template <class T, int D, int NK, int LD, int WM>
__device__ __forceinline__ void weights_times_rows(float (&acc)[WM][D / 8][4],
                                                   const uint32_t (&pf)[WM][NK / kStep<T>][4], const T* Y, int y0) {
  const int lane = threadIdx.x % 32;
  if constexpr (std::is_same_v<T, float>) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int kk = 0; kk < NK / 8; ++kk)
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const float* y = Y + (y0 + 8 * kk + 2 * t) * LD + 8 * n + g;
        const uint32_t b0 = __float_as_uint(y[0]), b1 = __float_as_uint(y[LD]);
#pragma unroll
        for (int m = 0; m < WM; ++m) mma<T>(acc[m][n], pf[m][kk], b0, b1);
      }
  } else {
    const int row = (lane & 7) + ((lane >> 3) & 1) * 8, col = (lane >> 4) * 8;
#pragma unroll
    for (int kk = 0; kk < NK / 16; ++kk)
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t r[4];
        ldsm_x4_t(r, Y + (y0 + 16 * kk + row) * LD + 16 * np + col);
#pragma unroll
        for (int m = 0; m < WM; ++m) {
          mma<T>(acc[m][2 * np], pf[m][kk], r[0], r[1]);
          mma<T>(acc[m][2 * np + 1], pf[m][kk], r[2], r[3]);
        }
      }
  }
}

// The forward's bias kinds (a compile-time parameter: each kernel carries only the code of its
// own, which keeps the registers of the plain and the relative variants free of the others').
enum : int { kNoBias = 0, kBiasTensor = 1, kBiasRelative = 2 };
inline int bias_kind(const AttentionArgs& a) { return !a.bias ? kNoBias : relative_view(a) ? kBiasRelative : kBiasTensor; }

// The forward: 4 warps of WM tiles of 16 queries each (BM = 64 WM queries per block), key
// tiles of BN.
template <class T, int D, int WM, int BN, int BIAS, bool DROP>
__global__ void __launch_bounds__(kThreads) forward_kernel(AttentionArgs a) {
  constexpr int LD = D + kVec<T>, KS = D / kStep<T>, NT = BN / 8, PS = NT * 8 / kStep<T>, BM = 64 * WM;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);  // [BM][LD]
  T* Ks = Qs + BM * LD;                    // [BN][LD]
  T* Vs = Ks + BN * LD;                    // [BN][LD]
  __shared__ int kmax_s;
  // A relative bias (row stride = -column stride): the band of terms a key tile's (row, key)
  // pairs read, key - row from j0 - (i0 + BM - 1) up, in log2 units; two, by key tile parity.
  __shared__ float band_s[2][BIAS == kBiasRelative ? BM + BN : 1];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.x, b0 = b / a.batch1, b1 = b % a.batch1;
  const int64_t i0 = int64_t(gridDim.y - 1 - blockIdx.y) * BM;  // longest (causal) blocks first
  const T* q = static_cast<const T*>(a.q) + b0 * a.q_bs0 + b1 * a.q_bs1 + i0 * a.q_rs;
  const T* k = static_cast<const T*>(a.k) + b0 * a.k_bs0 + b1 * a.k_bs1;
  const T* v = static_cast<const T*>(a.v) + b0 * a.v_bs0 + b1 * a.v_bs1;

  if (threadIdx.x == 0) kmax_s = 0;
  __syncthreads();
  // This thread's rows: r0 + 16 m + 8 h (m < WM, h < 2).
  const int64_t r0 = i0 + warp * 16 * WM + g;
  int len[WM][2], mine = 0;
#pragma unroll
  for (int m = 0; m < WM; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      len[m][h] = row_length(a, b, r0 + 16 * m + 8 * h);  // 0 past the rows
      mine = len[m][h] > mine ? len[m][h] : mine;
    }
  if (mine > 0) atomicMax(&kmax_s, mine);
  // The key tiles below the warp's shortest row are seen whole: no per-element length test.
  const int least = warp_shortest<WM>(len);
  __syncthreads();
  const int kmax = kmax_s, d = int(a.d), dv = int(a.dv);

  load_tile<T, D, LD, true>(Qs, q, a.q_rs, BM, int(a.tq - i0 < BM ? a.tq - i0 : BM), d);
  if (kmax > 0) load_tile<T, D, LD, true>(Ks, k, a.k_rs, BN, kmax < BN ? kmax : BN, d);
  cp_async_commit();
  if (kmax > 0) load_tile<T, D, LD, true>(Vs, v, a.v_rs, BN, kmax < BN ? kmax : BN, dv);
  cp_async_commit();

  float o[WM][D / 8][4];
  float m_[WM][2], l[WM][2];
#pragma unroll
  for (int m = 0; m < WM; ++m) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[m][n][e] = 0.f;
    m_[m][0] = m_[m][1] = -INFINITY;
    l[m][0] = l[m][1] = 0.f;
  }
  const float sl2 = float(a.scale * 1.4426950408889634);
  const bool raw_scores = BIAS == kNoBias && sl2 > 0.f;  // see energies below
  const float exp_scale = raw_scores ? sl2 : 1.f;
  const BiasRows<T, float> bias(a, b, BIAS != kNoBias);
  constexpr bool banded = BIAS == kBiasRelative;
  // The band's factor for each of this thread's rows (the row scale; 1 without one).
  float fac[WM][2];
#pragma unroll
  for (int m = 0; m < WM; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = r0 + 16 * m + 8 * h;
      fac[m][h] = banded && r < a.tq ? bias.factor(r) : 1.f;
    }
  const DropMask<float> drop(a, b0, b1, DROP);
  uint32_t qf[WM][KS][4];

  for (int j0 = 0; j0 < kmax; j0 += BN) {
    float* band = band_s[(j0 / BN) & 1];  // the other one may still be read by the previous tile
    if (banded) stage_band(band, bias, a, int64_t(j0) - (i0 + BM - 1), BM + BN - 1);
    cp_async_wait1();  // Q and this K tile are in
    __syncthreads();
    if (j0 == 0) {
#pragma unroll
      for (int m = 0; m < WM; ++m)
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) load_a<T, LD>(qf[m][kk], Qs, warp * 16 * WM + 16 * m, kStep<T> * kk);
    }
    float s[WM][NT][4];
    rows_times_rows<T, D, NT, LD, WM>(s, qf, Ks, 0);
    __syncthreads();  // every warp is done with Ks
    const int next = j0 + BN;
    if (next < kmax)
      load_tile<T, D, LD, true>(Ks, k + int64_t(next) * a.k_rs, a.k_rs, BN, kmax - next < BN ? kmax - next : BN, d);
    cp_async_commit();

    // Online softmax of rows g (e = 0, 1) and g + 8 (e = 2, 3) of each tile; a row lives in one quad.
    uint32_t pf[WM][PS][4];
    // The energies in log2 units with the bias term; -inf past a row's keys (unless the tile is
    // seen whole by every row of the warp). Without a bias and with a positive scale they stay
    // unscaled (raw) until the exponent: the row maxima scale with them, and the scale joins
    // the exponent's fma.
    auto energies = [&](auto whole, auto raw) {
#pragma unroll
      for (int m = 0; m < WM; ++m)
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = j0 + 8 * n + 2 * t + (e & 1);
            const int64_t row = r0 + 16 * m + 8 * (e / 2);
            const bool seen = decltype(whole)::value || key < len[m][e / 2];
            const float term = banded ? band[key - row + (i0 + BM - 1) - j0] * fac[m][e / 2]
                                      : BIAS == kNoBias || !seen ? 0.f : bias(row, key);
            const float x = decltype(raw)::value ? s[m][n][e]
                            : BIAS == kNoBias    ? s[m][n][e] * sl2
                                                 : s[m][n][e] * sl2 + term;
            s[m][n][e] = seen ? x : -INFINITY;
          }
    };
    auto by_tile = [&](auto raw) { either(j0 + BN <= least, [&](auto whole) { energies(whole, raw); }); };
    if constexpr (BIAS == kNoBias) either(raw_scores, by_tile);
    else by_tile(std::false_type{});
#pragma unroll
    for (int m = 0; m < WM; ++m) {
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) mx[e / 2] = fmaxf(mx[e / 2], s[m][n][e]);
      float alpha[2], base[2], sum[2] = {0.f, 0.f};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        const float mnew = fmaxf(m_[m][h], raw_scores ? mx[h] * sl2 : mx[h]);  // (-inf stays -inf)
        base[h] = mnew == -INFINITY ? 0.f : mnew;  // no visible key yet: all weights 0
        alpha[h] = ex2(m_[m][h] - base[h]);
        m_[m][h] = mnew;
      }
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[m][n][e] = ex2(fmaf(s[m][n][e], exp_scale, -base[e / 2]));
          sum[e / 2] += s[m][n][e];
        }
      if (drop.on) {  // after the sums: the softmax is taken before dropout
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          bool kept[4];
          keep_by_rows(drop, r0 + 16 * m, j0 + 8 * n, t, kept);
#pragma unroll
          for (int e = 0; e < 4; ++e) s[m][n][e] = kept[e] ? s[m][n][e] * drop.scale : 0.f;
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) l[m][h] = l[m][h] * alpha[h] + sum[h];  // the quad's partial sums
      // Rescaled only where a row's maximum moved (once the largest energies are seen, most
      // tiles leave every row's alone).
      if (!__all_sync(0xffffffffu, alpha[0] == 1.f && alpha[1] == 1.f)) {
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          o[m][n][0] *= alpha[0];
          o[m][n][1] *= alpha[0];
          o[m][n][2] *= alpha[1];
          o[m][n][3] *= alpha[1];
        }
      }
      as_operand<T, NT>(pf[m], s[m]);
    }
    cp_async_wait1();  // this V tile is in
    __syncthreads();
    weights_times_rows<T, D, BN, LD, WM>(o, pf, Vs, 0);
    __syncthreads();  // every warp is done with Vs
    if (next < kmax)
      load_tile<T, D, LD, true>(Vs, v + int64_t(next) * a.v_rs, a.v_rs, BN, kmax - next < BN ? kmax - next : BN, dv);
    cp_async_commit();
  }
  cp_async_wait_all();

  T* out = static_cast<T*>(a.out) + b0 * a.o_bs0 + b1 * a.o_bs1;
#pragma unroll
  for (int m = 0; m < WM; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float total = quad_sum(l[m][h]);
      const int64_t r = r0 + 16 * m + 8 * h;
      if (r >= a.tq) continue;
      if (a.lse && t == 0)
        static_cast<float*>(a.lse)[b * a.tq + r] = total > 0.f ? m_[m][h] + log2f(total) : INFINITY;
      const float inv = total > 0.f ? 1.f / total : 0.f;
      T* row = out + r * a.o_rs;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const int col = 8 * n + 2 * t;
        if (col < dv) store2<T>(row + col, o[m][n][2 * h] * inv, o[m][n][2 * h + 1] * inv);
      }
    }
}

// dK and dV of BK = 64 WM keys of one problem (WM tiles of 16 per warp), walking the query
// tiles (BQ queries, two stages in shared memory) that see any of them.
// A relative bias's gradient goes to `diag` instead of the table: per (problem, key tile), the
// sums of dS along each diagonal key - row = p, at p - j0 + tq - 1 of a row of tq + BK - 1
// (zeros on entry). Each tile pair's dS goes through shared memory, a thread sums one diagonal
// in row order and adds it to the row in global memory; the query tiles come in order, so
// every element gets its shares in a fixed order.
template <class T, int D, int WM, int BQ, int BIAS, bool DROP>
__global__ void __launch_bounds__(kThreads)
    keys_kernel(AttentionArgs a, AttentionGradArgs ga, const float* dr, const int* row_len, const int* tile_kmax,
                const int* tile_kmin, float* diag) {
  constexpr int LD = D + kVec<T>, KS = D / kStep<T>, NT = BQ / 8, PS = NT * 8 / kStep<T>, BK = 64 * WM,
                LS = BQ + 1;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Ks = reinterpret_cast<T*>(smem_raw);  // [BK][LD]
  T* Vs = Ks + BK * LD;                    // [BK][LD]
  T* Qs = Vs + BK * LD;                    // two stages of [BQ][LD]
  T* Gs = Qs + 2 * BQ * LD;                // dO, two stages
  float* Ss = reinterpret_cast<float*>(Gs + 2 * BQ * LD);  // dS of a tile pair, [BK][LS] (relative bias)
  __shared__ float lse_s[2][BQ], dr_s[2][BQ];
  constexpr bool REL = BIAS == kBiasRelative;
  // A relative bias: the rows' factors (row scale), and the band of terms a tile pair's (row,
  // key) pairs read, key - row from j0 - (i0 + BQ - 1) up (log2 units, without the factors).
  __shared__ float fac_s[2][REL ? BQ : 1];
  __shared__ float band_s[2][REL ? BK + BQ : 1];
  __shared__ int len_s[2][BQ], kmin_s[2];  // the rows' lengths, the shortest of their row tile

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t ktiles = (a.tk + BK - 1) / BK, qtiles = (a.tq + BQ - 1) / BQ, rtiles = (a.tq + kTile - 1) / kTile;
  const int64_t b = blockIdx.x / ktiles, b0 = b / a.batch1, b1 = b % a.batch1;
  const int j0 = int(blockIdx.x % ktiles) * BK, nk = int(a.tk - j0 < BK ? a.tk - j0 : BK);
  const int d = int(a.d), dv = int(a.dv);
  const T* q = static_cast<const T*>(a.q) + b0 * a.q_bs0 + b1 * a.q_bs1;
  const T* go = static_cast<const T*>(ga.g) + b0 * a.o_bs0 + b1 * a.o_bs1;
  const float* lse = static_cast<const float*>(a.lse) + b * a.tq;

  load_tile<T, D, LD, true>(Ks, static_cast<const T*>(a.k) + b0 * a.k_bs0 + b1 * a.k_bs1 + int64_t(j0) * a.k_rs,
                            a.k_rs, BK, nk, d);
  load_tile<T, D, LD, true>(Vs, static_cast<const T*>(a.v) + b0 * a.v_bs0 + b1 * a.v_bs1 + int64_t(j0) * a.v_rs,
                            a.v_rs, BK, nk, dv);
  const BiasRows<T, float> bias(a, b, BIAS != kNoBias);
  // The query tiles that see a key of this block, in order (the row tiles of the rows kernel
  // are 64 queries, a multiple of BQ).
  auto visits = [&](int64_t it) { return tile_kmax[b * rtiles + it * BQ / kTile] > j0; };
  auto stage = [&](int64_t it, int buf) {
    const int64_t i0 = it * BQ;
    const int nq = int(a.tq - i0 < BQ ? a.tq - i0 : BQ);
    load_tile<T, D, LD, true>(Qs + buf * BQ * LD, q + i0 * a.q_rs, a.q_rs, BQ, nq, d);
    load_tile<T, D, LD, true>(Gs + buf * BQ * LD, go + i0 * a.o_rs, a.o_rs, BQ, nq, dv);
    for (int i = threadIdx.x; i < BQ; i += kThreads) {
      const int64_t r = i0 + i;
      const bool in = r < a.tq;
      lse_s[buf][i] = in ? lse[r] : INFINITY;
      dr_s[buf][i] = in ? dr[b * a.tq + r] : 0.f;
      len_s[buf][i] = in ? row_len[b * a.tq + r] : 0;
      // A row without keys (padding, whose gate may be NaN) weighs its dS of 0 by 1.
      if (REL) fac_s[buf][i] = len_s[buf][i] > 0 && bias.scale ? float(bias.factor(r)) : 1.f;
    }
    if (threadIdx.x == 0) kmin_s[buf] = tile_kmin[b * rtiles + i0 / kTile];
    if (REL) stage_band(band_s[buf], bias, a, int64_t(j0) - (i0 + BQ - 1), BK + BQ - 1);
  };
  int64_t it = 0;
  while (it < qtiles && !visits(it)) ++it;
  if (it < qtiles) stage(it, 0);
  cp_async_commit();

  float dk[WM][D / 8][4], dvv[WM][D / 8][4];
#pragma unroll
  for (int m = 0; m < WM; ++m)
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) dk[m][n][e] = dvv[m][n][e] = 0.f;
  const float sl2 = float(a.scale * 1.4426950408889634);
  const int key0 = j0 + warp * 16 * WM + g;  // this thread's keys: key0 + 16 m + 8 h
  const DropMask<float> drop(a, b0, b1, DROP);
  // The bias's gradient (f32): dS itself at each (row, key) element, or, for a bias over the
  // keys alone, the sum over the rows (the thread's partial sums, then over its quad); for a
  // relative bias, the diagonal sums below.
  float* dbias = BIAS == kBiasTensor ? dbias_part<float>(a, ga, b, true) : nullptr;
  float dbias_key[WM][2] = {};
  const bool by_diagonal = REL && ga.dbias && diag;
  float* diag_row = by_diagonal ? diag + (b * ktiles + blockIdx.x % ktiles) * (a.tq + BK - 1) : nullptr;

  for (int buf = 0; it < qtiles; buf ^= 1) {
    int64_t nx = it + 1;
    while (nx < qtiles && !visits(nx)) ++nx;
    if (nx < qtiles) stage(nx, buf ^ 1);
    cp_async_commit();
    cp_async_wait1();
    __syncthreads();
    T* Q = Qs + buf * BQ * LD;
    const T* G = Gs + buf * BQ * LD;
    const int64_t i0 = it * BQ;
    // A padded query row (length 0) may hold anything: zero it, so that 0 weights stay 0 (a
    // tile whose shortest row has keys has none).
    if (kmin_s[buf] == 0) {
      constexpr int VN = kVec<T>;
      for (int i = threadIdx.x; i < BQ * (D / VN); i += kThreads) {
        const int r = i / (D / VN);
        if (len_s[buf][r] == 0) *reinterpret_cast<uint4*>(Q + r * LD + (i % (D / VN)) * VN) = make_uint4(0, 0, 0, 0);
      }
      __syncthreads();
    }
    // The warp's keys and values as A operands, from shared memory each time (registers are
    // scarce next to the dK and dV accumulators).
    uint32_t af[WM][KS][4];
    float s[WM][NT][4], dp[WM][NT][4];
#pragma unroll
    for (int m = 0; m < WM; ++m)
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) load_a<T, LD>(af[m][kk], Ks, warp * 16 * WM + 16 * m, kStep<T> * kk);
    rows_times_rows<T, D, NT, LD, WM>(s, af, Q, 0);  // S^T: keys x queries
#pragma unroll
    for (int m = 0; m < WM; ++m)
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) load_a<T, LD>(af[m][kk], Vs, warp * 16 * WM + 16 * m, kStep<T> * kk);
    rows_times_rows<T, D, NT, LD, WM>(dp, af, G, 0);  // dP^T
    uint32_t pf[WM][PS][4];
    // P^T and dS^T of the tile pair (P into s, dS into dp), each weight tested against its row's
    // length unless every row of the query tile sees all the warp's keys.
    auto weights = [&](auto whole) {
#pragma unroll
      for (int m = 0; m < WM; ++m) {
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          bool kept[4] = {true, true, true, true};  // dV from the dropped weights, dP through the mask
          if (drop.on) keep_by_keys(drop, i0 + 8 * n + 2 * t, key0 - (g & 3) + 16 * m, g & 3, kept);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = 8 * n + 2 * t + (e & 1), key = key0 + 16 * m + 8 * (e / 2);
            const bool seen = decltype(whole)::value || key < len_s[buf][r];
            // (A bias tensor is read only where the key is seen: past the keys it has no element.)
            const float term = REL    ? band_s[buf][key - j0 - r + BQ - 1] * fac_s[buf][r]
                               : seen ? bias(i0 + r, key)
                                      : 0.f;
            const float x = fmaf(s[m][n][e], sl2, BIAS == kNoBias ? -lse_s[buf][r] : term - lse_s[buf][r]);
            const float p = seen ? ex2(x) : 0.f;
            const float f = drop.on ? drop.scale : 1.f;
            const float dpd = kept[e] ? dp[m][n][e] * f : 0.f;
            s[m][n][e] = kept[e] ? p * f : 0.f;
            dp[m][n][e] = seen ? p * (dpd - dr_s[buf][r]) : 0.f;
            if (dbias && seen) {
              if (a.bias_rs != 0) dbias[(i0 + r) * a.bias_rs + int64_t(key) * a.bias_cs] += dp[m][n][e];
              else dbias_key[m][e / 2] += dp[m][n][e];
            }
            if constexpr (REL)
              if (diag_row) Ss[(key - j0) * LS + r] = dp[m][n][e] * fac_s[buf][r];  // d table = factor dS
          }
        }
        as_operand<T, NT>(pf[m], s[m]);
      }
    };
    either(j0 + (warp + 1) * 16 * WM <= kmin_s[buf], weights);
    weights_times_rows<T, D, BQ, LD, WM>(dvv, pf, G, 0);  // dV += P^T dO
#pragma unroll
    for (int m = 0; m < WM; ++m) as_operand<T, NT>(pf[m], dp[m]);
    weights_times_rows<T, D, BQ, LD, WM>(dk, pf, Q, 0);  // dK += dS^T Q
    if (REL && diag_row) {
      __syncthreads();  // the tile pair's dS is in
      add_diagonals<float, BK, BQ, LS, false>(Ss, nullptr, diag_row, i0, a.tq);  // Ss has the factors
    }
    __syncthreads();  // this stage's buffers are free
    it = nx;
  }
  cp_async_wait_all();

  const float sc = float(a.scale);
#pragma unroll
  for (int m = 0; m < WM; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int kr = warp * 16 * WM + 16 * m + g + 8 * h;
      if (BIAS == kBiasTensor && dbias && a.bias_rs == 0) {  // a quad holds one key's rows
        const float x = quad_sum(dbias_key[m][h]);
        if (t == 0 && kr < nk) dbias[int64_t(j0 + kr) * a.bias_cs] += x;
      }
      if (kr >= nk) continue;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const int col = 8 * n + 2 * t;
        if (ga.dk && col < d)
          store2<T>(static_cast<T*>(ga.dk) + b0 * ga.dk_bs0 + b1 * ga.dk_bs1 + int64_t(j0 + kr) * ga.dk_rs + col,
                    dk[m][n][2 * h] * sc, dk[m][n][2 * h + 1] * sc);
        if (ga.dv && col < dv)
          store2<T>(static_cast<T*>(ga.dv) + b0 * ga.dv_bs0 + b1 * ga.dv_bs1 + int64_t(j0 + kr) * ga.dv_rs + col,
                    dvv[m][n][2 * h], dvv[m][n][2 * h + 1]);
      }
    }
}

// dQ of BM = 64 WM queries of one problem (WM tiles of 16 per warp), walking their keys in
// tiles of BK. With a row scale whose gradient is wanted, also each row's sum over its keys of
// dS times the (unscaled) bias term, into dscale[b, row] (non-null then).
template <class T, int D, int WM, int BK, int BIAS, bool DROP>
__global__ void __launch_bounds__(kThreads)
    queries_kernel(AttentionArgs a, AttentionGradArgs ga, const float* dr, const int* row_len, const int* tile_kmax,
                   float* dscale) {
  constexpr int LD = D + kVec<T>, KS = D / kStep<T>, NT = BK / 8, PS = NT * 8 / kStep<T>, BM = 64 * WM;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);  // [BM][LD]
  T* Gs = Qs + BM * LD;                    // [BM][LD]
  T* Ks = Gs + BM * LD;                    // [BK][LD]
  T* Vs = Ks + BK * LD;                    // [BK][LD]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t b = blockIdx.x, b0 = b / a.batch1, b1 = b % a.batch1;
  const int64_t i0 = int64_t(gridDim.y - 1 - blockIdx.y) * BM, rtiles = (a.tq + kTile - 1) / kTile;
  const int nq = int(a.tq - i0 < BM ? a.tq - i0 : BM);
  const int kmax = longest_length(tile_kmax, b, rtiles, i0, BM, kTile);
  const int d = int(a.d), dv = int(a.dv);
  const T* k = static_cast<const T*>(a.k) + b0 * a.k_bs0 + b1 * a.k_bs1;
  const T* v = static_cast<const T*>(a.v) + b0 * a.v_bs0 + b1 * a.v_bs1;

  // Copies in flight in the order V, then K (dP needs V first; V is free before K is).
  load_tile<T, D, LD, true>(Qs, static_cast<const T*>(a.q) + b0 * a.q_bs0 + b1 * a.q_bs1 + i0 * a.q_rs, a.q_rs, BM,
                            nq, d);
  load_tile<T, D, LD, true>(Gs, static_cast<const T*>(ga.g) + b0 * a.o_bs0 + b1 * a.o_bs1 + i0 * a.o_rs, a.o_rs, BM,
                            nq, dv);
  if (kmax > 0) load_tile<T, D, LD, true>(Vs, v, a.v_rs, BK, kmax < BK ? kmax : BK, dv);
  cp_async_commit();
  if (kmax > 0) load_tile<T, D, LD, true>(Ks, k, a.k_rs, BK, kmax < BK ? kmax : BK, d);
  cp_async_commit();

  const int64_t r0 = i0 + warp * 16 * WM + g;  // this thread's rows: r0 + 16 m + 8 h
  int len[WM][2];
  float lse[WM][2], drr[WM][2];
#pragma unroll
  for (int m = 0; m < WM; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = r0 + 16 * m + 8 * h;
      const bool in = r < a.tq;
      len[m][h] = in ? row_len[b * a.tq + r] : 0;
      lse[m][h] = in ? static_cast<const float*>(a.lse)[b * a.tq + r] : INFINITY;
      drr[m][h] = in ? dr[b * a.tq + r] : 0.f;
    }
  const int least = warp_shortest<WM>(len);  // the key tiles below it are seen whole
  float dq[WM][D / 8][4];
#pragma unroll
  for (int m = 0; m < WM; ++m)
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) dq[m][n][e] = 0.f;
  const float sl2 = float(a.scale * 1.4426950408889634);
  constexpr bool REL = BIAS == kBiasRelative;
  const BiasRows<T, float> bias(a, b, BIAS != kNoBias);
  const bool scaled = REL && bias.scale && dscale;
  float fac[WM][2], dsc[WM][2];
#pragma unroll
  for (int m = 0; m < WM; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = r0 + 16 * m + 8 * h;
      fac[m][h] = REL && bias.scale && r < a.tq ? bias.factor(r) : 1.f;
      dsc[m][h] = 0.f;
    }
  // A relative bias: the band of terms a key tile's (row, key) pairs read, key - row from
  // j0 - (i0 + BM - 1) up (log2 units, without the factors). One buffer: every warp is past
  // the previous tile's reads when the next is staged (the loop's last barrier).
  __shared__ float band_s[REL ? BM + BK : 1];
  const DropMask<float> drop(a, b0, b1, DROP);
  uint32_t qf[WM][KS][4], gf[WM][KS][4];

  for (int j0 = 0; j0 < kmax; j0 += BK) {
    if constexpr (REL) stage_band(band_s, bias, a, int64_t(j0) - (i0 + BM - 1), BM + BK - 1);
    cp_async_wait1();  // Q, dO and this V tile
    __syncthreads();
    if (j0 == 0) {
#pragma unroll
      for (int m = 0; m < WM; ++m)
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
          load_a<T, LD>(qf[m][kk], Qs, warp * 16 * WM + 16 * m, kStep<T> * kk);
          load_a<T, LD>(gf[m][kk], Gs, warp * 16 * WM + 16 * m, kStep<T> * kk);
        }
    }
    float s[WM][NT][4], dp[WM][NT][4];
    rows_times_rows<T, D, NT, LD, WM>(dp, gf, Vs, 0);
    __syncthreads();  // every warp is done with Vs
    const int next = j0 + BK;
    const int n_next = kmax - next < BK ? kmax - next : BK;
    if (next < kmax) load_tile<T, D, LD, true>(Vs, v + int64_t(next) * a.v_rs, a.v_rs, BK, n_next, dv);
    cp_async_commit();
    cp_async_wait1();  // this K tile
    __syncthreads();
    rows_times_rows<T, D, NT, LD, WM>(s, qf, Ks, 0);
    uint32_t pf[WM][PS][4];
    // dS of the tile (into dp), each weight tested against its row's length unless every row of
    // the warp sees the whole key tile.
    auto weights = [&](auto whole) {
#pragma unroll
      for (int m = 0; m < WM; ++m) {
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          bool kept[4] = {true, true, true, true};
          if (drop.on) keep_by_rows(drop, r0 + 16 * m, j0 + 8 * n, t, kept);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = j0 + 8 * n + 2 * t + (e & 1), h = e / 2;
            const bool seen = decltype(whole)::value || key < len[m][h];
            // The term without the row's factor (log2 units).
            const int row = warp * 16 * WM + g + 16 * m + 8 * h;  // in the block
            const float raw = !seen                 ? 0.f
                              : REL                 ? band_s[key - j0 - row + BM - 1]
                              : BIAS == kBiasTensor ? bias.at(bias.row(i0 + row), key)
                                                    : 0.f;
            const float p =
                seen ? ex2(fmaf(s[m][n][e], sl2, BIAS == kNoBias ? -lse[m][h] : raw * fac[m][h] - lse[m][h])) : 0.f;
            const float dpd = kept[e] ? dp[m][n][e] * (drop.on ? drop.scale : 1.f) : 0.f;
            dp[m][n][e] = seen ? p * (dpd - drr[m][h]) : 0.f;
            if (scaled) dsc[m][h] = fmaf(dp[m][n][e], raw, dsc[m][h]);
          }
        }
        as_operand<T, NT>(pf[m], dp[m]);
      }
    };
    either(j0 + BK <= least, weights);
    weights_times_rows<T, D, BK, LD, WM>(dq, pf, Ks, 0);  // dQ += dS K
    __syncthreads();  // every warp is done with Ks
    if (next < kmax) load_tile<T, D, LD, true>(Ks, k + int64_t(next) * a.k_rs, a.k_rs, BK, n_next, d);
    cp_async_commit();
  }
  cp_async_wait_all();

  if (scaled) {  // a row lives in one quad; the sums were in log2 units
#pragma unroll
    for (int m = 0; m < WM; ++m)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float x = quad_sum(dsc[m][h]);
        const int64_t r = r0 + 16 * m + 8 * h;
        if (t == 0 && r < a.tq) dscale[b * a.tq + r] = x * 0.6931471805599453f;
      }
  }
  if (!ga.dq) return;
  const float sc = float(a.scale);
  T* out = static_cast<T*>(ga.dq) + b0 * ga.dq_bs0 + b1 * ga.dq_bs1;
#pragma unroll
  for (int m = 0; m < WM; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = r0 + 16 * m + 8 * h;
      if (r >= a.tq) continue;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const int col = 8 * n + 2 * t;
        if (col < d) store2<T>(out + r * ga.dq_rs + col, dq[m][n][2 * h] * sc, dq[m][n][2 * h + 1] * sc);
      }
    }
}

// The tensor-core kernels need 16-byte rows: d, dv, every base and stride multiples of 16 bytes.
template <class T>
bool aligned(const AttentionArgs& a, const AttentionGradArgs* ga) {
  constexpr int64_t VN = kVec<T>;
  auto p = [](const void* x) { return x == nullptr || reinterpret_cast<uintptr_t>(x) % 16 == 0; };
  bool ok = a.d % VN == 0 && a.dv % VN == 0 && p(a.q) && p(a.k) && p(a.v) && p(a.out);
  for (int64_t s : {a.q_bs0, a.q_bs1, a.q_rs, a.k_bs0, a.k_bs1, a.k_rs, a.v_bs0, a.v_bs1, a.v_rs, a.o_bs0, a.o_bs1,
                    a.o_rs})
    ok = ok && s % VN == 0;
  if (ga) {
    ok = ok && p(ga->g) && p(ga->dq) && p(ga->dk) && p(ga->dv);
    for (int64_t s : {ga->dq_bs0, ga->dq_bs1, ga->dq_rs, ga->dk_bs0, ga->dk_bs1, ga->dk_rs, ga->dv_bs0, ga->dv_bs1,
                      ga->dv_rs})
      ok = ok && s % 2 == 0;  // the gradients are written in pairs
  }
  return ok;
}

template <class T, int D, int WM, int BN, int BIAS, bool DROP>
void forward(const AttentionArgs& a, cudaStream_t s) {
  // Without a bias or dropout, bf16 and f16 up to head size 64 run on wgmma where the device
  // has it (gpu/attention_wgmma.cu).
  if constexpr (BIAS == kNoBias && !DROP && D == 64 && !std::is_same_v<T, float>) {
    if (launch_attention_forward_wgmma(std::is_same_v<T, __nv_bfloat16> ? DType::bf16 : DType::f16, a, s)) return;
  }
  constexpr int BM = 64 * WM;
  constexpr size_t smem = sizeof(T) * size_t((BM + 2 * BN) * (D + kVec<T>));
  set_smem<forward_kernel<T, D, WM, BN, BIAS, DROP>>(smem, "dot_attention");
  const dim3 grid(unsigned(a.batch0 * a.batch1), unsigned((a.tq + BM - 1) / BM));
  forward_kernel<T, D, WM, BN, BIAS, DROP><<<grid, kThreads, smem, s>>>(a);
  check_launch("dot_attention");
}

// The forward variant of a's bias kind and dropout.
template <class T, int D, int WM, int BN>
void forward_for(const AttentionArgs& a, cudaStream_t s) {
  const bool drop = a.drop_p > 0;
  switch (bias_kind(a)) {
    case kNoBias: return drop ? forward<T, D, WM, BN, kNoBias, true>(a, s) : forward<T, D, WM, BN, kNoBias, false>(a, s);
    case kBiasTensor:
      return drop ? forward<T, D, WM, BN, kBiasTensor, true>(a, s) : forward<T, D, WM, BN, kBiasTensor, false>(a, s);
    default:
      return drop ? forward<T, D, WM, BN, kBiasRelative, true>(a, s)
                  : forward<T, D, WM, BN, kBiasRelative, false>(a, s);
  }
}

// Backward tiles: WK key tiles of 16 per warp and query tiles of BQ in the keys kernel, WQ
// query tiles per warp and key tiles of BK in the queries kernel.
template <class T, int D, int WK, int BQ, int WQ, int BK, int BIAS, bool DROP>
void backward(const AttentionArgs& a, const AttentionGradArgs& ga, cudaStream_t s) {
  static_assert(kTile % BQ == 0, "query tiles of the keys kernel divide the row tiles");
  const int64_t problems = a.batch0 * a.batch1, rtiles = (a.tq + kTile - 1) / kTile;
  const int64_t kblocks = (a.tk + 64 * WK - 1) / (64 * WK), qblocks = (a.tq + 64 * WQ - 1) / (64 * WQ);
  if (problems * kblocks > 0x7fffffff)
    throw Error("dot_attention backward: " + std::to_string(a.tk) + " keys per problem are too many for cuda");
  // Scratch: Dr [problems, tq] (f32), row lengths [problems, tq], the row tiles' longest and
  // shortest lengths [problems, rtiles] each. With a row scale's gradient wanted, each row's
  // share of it [problems, tq] (f32) after them.
  const bool scaled = BIAS == kBiasRelative && ga.drow_scale && a.row_scale;
  const size_t rows = size_t(problems * a.tq),
               bytes = rows * 8 + size_t(problems * rtiles) * 8 + (scaled ? rows * 4 : 0);
  unsigned char* scratch = nullptr;
  if (cudaMallocAsync(reinterpret_cast<void**>(&scratch), bytes, s) != cudaSuccess) {
    cudaGetLastError();
    throw Error("dot_attention backward: out of device memory for its scratch (" + std::to_string(bytes) + " bytes)");
  }
  float* dr = reinterpret_cast<float*>(scratch);
  int* row_len = reinterpret_cast<int*>(scratch + rows * 4);
  int* tile_kmax = row_len + rows;
  int* tile_kmin = tile_kmax + problems * rtiles;
  float* dscale = scaled ? reinterpret_cast<float*>(tile_kmin + problems * rtiles) : nullptr;
  rows_kernel<T, float, kTile><<<dim3(unsigned(problems), unsigned(rtiles)), kThreads, 0, s>>>(
      a, static_cast<const T*>(ga.g), dr, row_len, tile_kmax, tile_kmin, static_cast<T*>(nullptr), 0, 0, 0);
  check_launch("dot_attention backward (rows)");
  // Without a bias, bf16 and f16 up to head size 64 run their products on wgmma where the
  // device has it (gpu/attention_wgmma.cu).
  if constexpr (BIAS == kNoBias && D == 64 && !std::is_same_v<T, float>) {
    const DType dt = std::is_same_v<T, __nv_bfloat16> ? DType::bf16 : DType::f16;
    if (launch_attention_backward_wgmma(dt, a, ga, dr, row_len, tile_kmax, tile_kmin, s)) {
      cudaFreeAsync(scratch, s);
      return;
    }
  }
  // A relative bias's gradient: the keys kernel's diagonal sums, [problems, key tiles, tq + BK - 1].
  float* diag = nullptr;
  const int64_t diag_width = a.tq + 64 * WK - 1;
  const bool relative = BIAS == kBiasRelative && ga.dbias;
  if (relative) {
    const size_t dbytes = size_t(problems * kblocks * diag_width) * sizeof(float);
    if (cudaMallocAsync(reinterpret_cast<void**>(&diag), dbytes, s) != cudaSuccess) {
      cudaGetLastError();
      cudaFreeAsync(scratch, s);
      throw Error("dot_attention backward: out of device memory for the relative bias's diagonal sums (" +
                  std::to_string(dbytes) + " bytes)");
    }
    cudaMemsetAsync(diag, 0, dbytes, s);
  }
  if (ga.dk || ga.dv || ga.dbias) {
    // (A relative bias's dS tile only where its gradient is wanted; the limit covers it always.)
    constexpr size_t tiles = sizeof(T) * size_t((2 * 64 * WK + 4 * BQ) * (D + kVec<T>)),
                     diag_tile = BIAS == kBiasRelative ? sizeof(float) * size_t(64 * WK * (BQ + 1)) : 0;
    const size_t smem = tiles + (relative ? diag_tile : 0);
    // With a relative bias, bf16 and f16 up to head size 64 run the keys kernel on wgmma where
    // the device has it (the same 128 keys per block, so the same diagonal sums' layout).
    bool on_wgmma = false;
    if constexpr (BIAS == kBiasRelative && D == 64 && WK == 2 && !std::is_same_v<T, float>)
      on_wgmma = launch_attention_keys_wgmma(std::is_same_v<T, __nv_bfloat16> ? DType::bf16 : DType::f16, a, ga, dr,
                                             row_len, tile_kmax, tile_kmin, diag, s);
    if (!on_wgmma) {
      set_smem<keys_kernel<T, D, WK, BQ, BIAS, DROP>>(tiles + diag_tile, "dot_attention backward");
      keys_kernel<T, D, WK, BQ, BIAS, DROP><<<unsigned(problems * kblocks), kThreads, smem, s>>>(
          a, ga, dr, row_len, tile_kmax, tile_kmin, diag);
      check_launch("dot_attention backward (keys)");
    }
  }
  if (relative) {
    launch_relative_dbias(a, ga, diag, kblocks, 64 * WK, s);
    cudaFreeAsync(diag, s);
  }
  if (ga.dq || scaled) {
    // The dQ kernel likewise (with its row scale's shares).
    bool on_wgmma = false;
    if constexpr (BIAS == kBiasRelative && D == 64 && !std::is_same_v<T, float>)
      on_wgmma = launch_attention_queries_wgmma(std::is_same_v<T, __nv_bfloat16> ? DType::bf16 : DType::f16, a, ga,
                                                dr, row_len, tile_kmax, dscale, s);
    if (!on_wgmma) {
      constexpr size_t smem = sizeof(T) * size_t((2 * 64 * WQ + 2 * BK) * (D + kVec<T>));
      set_smem<queries_kernel<T, D, WQ, BK, BIAS, DROP>>(smem, "dot_attention backward");
      queries_kernel<T, D, WQ, BK, BIAS, DROP><<<dim3(unsigned(problems), unsigned(qblocks)), kThreads, smem, s>>>(
          a, ga, dr, row_len, tile_kmax, dscale);
      check_launch("dot_attention backward (queries)");
    }
  }
  if (scaled) launch_row_scale_grad(a, ga, static_cast<const float*>(dscale), 1, nullptr, 1, 1, s);
  cudaFreeAsync(scratch, s);
}

// The backward variant of a's bias kind and dropout.
template <class T, int D, int WK, int BQ, int WQ, int BK>
void backward_for(const AttentionArgs& a, const AttentionGradArgs& ga, cudaStream_t s) {
  const bool drop = a.drop_p > 0;
  switch (bias_kind(a)) {
    case kNoBias:
      return drop ? backward<T, D, WK, BQ, WQ, BK, kNoBias, true>(a, ga, s)
                  : backward<T, D, WK, BQ, WQ, BK, kNoBias, false>(a, ga, s);
    case kBiasTensor:
      return drop ? backward<T, D, WK, BQ, WQ, BK, kBiasTensor, true>(a, ga, s)
                  : backward<T, D, WK, BQ, WQ, BK, kBiasTensor, false>(a, ga, s);
    default:
      return drop ? backward<T, D, WK, BQ, WQ, BK, kBiasRelative, true>(a, ga, s)
                  : backward<T, D, WK, BQ, WQ, BK, kBiasRelative, false>(a, ga, s);
  }
}

// Whether the problem fits the kernels' grid and alignment (T's).
template <class T>
bool fits(const AttentionArgs& a, const AttentionGradArgs* ga) {
  const int64_t width = a.d > a.dv ? a.d : a.dv;
  return width <= 256 && aligned<T>(a, ga) && (a.tq + kTile - 1) / kTile <= 65535 &&
         a.batch0 * a.batch1 <= 0x7fffffff;
}

template <class T>
bool dispatch_width(const AttentionArgs& a, const AttentionGradArgs* ga, cudaStream_t s) {
  if (!fits<T>(a, ga)) return false;
  const int64_t width = a.d > a.dv ? a.d : a.dv;
  // Forward: 32 queries per warp up to head size 64 (each K and V operand serves two row
  // tiles, halving the shared-memory reads per product), 16 above (registers).
  if (width <= 64) ga ? backward_for<T, 64, 2, 32, 2, 32>(a, *ga, s) : forward_for<T, 64, 2, 64>(a, s);
  else if (width <= 128) ga ? backward_for<T, 128, 1, 64, 1, 64>(a, *ga, s) : forward_for<T, 128, 1, 64>(a, s);
  // Up to 256: half the key tiles (registers; the backward still spills some).
  else ga ? backward_for<T, 256, 1, 16, 1, 32>(a, *ga, s) : forward_for<T, 256, 1, 32>(a, s);
  return true;
}

// TF32: f32 operand fragments take twice the registers of 16-bit ones, so 16 queries (keys)
// per warp and head sizes up to 128.
bool dispatch_tf32(const AttentionArgs& a, const AttentionGradArgs* ga, cudaStream_t s) {
  const int64_t width = a.d > a.dv ? a.d : a.dv;
  if (!fits<float>(a, ga) || width > 128) return false;
  if (width <= 64)
    ga ? backward_for<float, 64, 1, 32, 1, 32>(a, *ga, s) : forward_for<float, 64, 2, 32>(a, s);
  else ga ? backward_for<float, 128, 1, 16, 1, 32>(a, *ga, s) : forward_for<float, 128, 1, 32>(a, s);
  return true;
}

}  // namespace

bool launch_attention_mma(DType dt, const AttentionArgs& a, const AttentionGradArgs* ga, cudaStream_t s) {
  if (dt == DType::bf16) return dispatch_width<__nv_bfloat16>(a, ga, s);
  if (dt == DType::f16) return dispatch_width<__half>(a, ga, s);
  if (dt == DType::f32) return dispatch_tf32(a, ga, s);
  return false;
}

}  // namespace dimx::gpu

// The tensor-core attention kernels on Hopper's warpgroup instructions (wgmma, sm_90a), for
// bf16 and f16 with head sizes up to 64, without a bias: the backward's two product kernels
// (keys: dK and dV of a key tile over the query tiles that see it; queries: dQ of a query tile
// over its keys), also with a relative bias (its table's gradient by diagonal sums, its row
// scale's by row sums), and the forward without a bias or dropout. The same math, tiles, order
// of sums and results layout as the mma.sync kernels of gpu/attention_mma.cu, which serve every
// other case.
// A warpgroup owns 64 rows (16 per warp, in the mma.sync accumulator layout, so the
// element-wise code is the same), two warpgroups a block; the products run asynchronously
// while the next tiles load. Operands wait in shared memory as 8 x 8 core matrices
// (gpu/wgmma.cuh); the weights and dS enter the second products from registers. Every result is
// a sum in one block in a fixed order: two runs give the same bits.
#include "attention_wgmma.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <string>
#include <type_traits>

#include "attention_fragments.cuh"
#include "attention_tiles.cuh"
#include "common.cuh"
#include "wgmma.cuh"

namespace dimx::gpu {

namespace {

using namespace attention_tiles;
using namespace attention_fragments;

constexpr int kWarpgroups = 2;                  // per block
constexpr int kBlockThreads = 128 * kWarpgroups;
constexpr int kRows = 64;                       // a warpgroup's rows; the walked tiles' rows too
constexpr int kTileBytes = kRows * 64 * 2;      // 64 rows x 64 16-bit elements, core-matrix order
constexpr int kStages = 3;                      // of the walked tiles
constexpr int kMaxTiles = 512;                  // query tiles whose lengths the keys kernel keeps

// 4 bytes by cp.async (zeros where !valid).
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 4 : 0));
}

// rows x 64 of a row-major matrix (16-bit, row stride rs) into a core-matrix tile at s, zero
// outside [nrows, ncols): cp.async, 8 consecutive threads filling one core matrix (128
// contiguous bytes of shared memory, no bank conflicts).
template <class T, int ROWS>
__device__ __forceinline__ void load_core(unsigned char* s, const T* g, int64_t rs, int nrows, int ncols) {
  static_assert(ROWS * 8 % kBlockThreads == 0, "whole passes of the block");
#pragma unroll
  for (int k = 0; k < ROWS * 8 / kBlockThreads; ++k) {
    const int i = int(threadIdx.x) + k * kBlockThreads;
    const int r = (i >> 6) * 8 + (i & 7), c = ((i >> 3) & 7) * 8;
    const bool valid = r < nrows && c < ncols;
    cp_async16(s + wgmma::offset<64>(r, c), valid ? g + r * rs + c : g, valid);
  }
}

// Key tile j0 of k and v (one problem's) into stage buf of Ks and Vs, rows up to kmax (the
// longest length the block's rows see) and zeros past it: padded keys may hold anything.
template <class T>
__device__ __forceinline__ void stage_keys(unsigned char* Ks, unsigned char* Vs, int buf, const T* k, const T* v,
                                           const AttentionArgs& a, int j0, int kmax) {
  if (j0 >= kmax) return;
  const int n = kmax - j0 < kRows ? kmax - j0 : kRows;
  load_core<T, kRows>(Ks + buf * kTileBytes, k + int64_t(j0) * a.k_rs, a.k_rs, n, int(a.d));
  load_core<T, kRows>(Vs + buf * kTileBytes, v + int64_t(j0) * a.v_rs, a.v_rs, n, int(a.dv));
}

// Descriptors of a core-matrix tile of 64-element rows from row r0, k step kk: as a K-major
// operand (k along the rows' elements) and as an MN-major one (k along the rows).
__device__ __forceinline__ uint64_t k_major(const unsigned char* s, int r0, int kk) {
  return wgmma::desc(s + wgmma::offset<64>(r0, 16 * kk), 128, 1024);
}
__device__ __forceinline__ uint64_t mn_major(const unsigned char* s, int kk) {
  return wgmma::desc(s + wgmma::offset<64>(16 * kk, 0), 1024, 128);
}

// 16-bit operands (as_operand's) of a warp's 16 x 64 accumulator tile (8 column tiles of 4).
template <class T>
__device__ __forceinline__ void operands(uint32_t (&a)[4][4], const float (&x)[32]) {
  as_operand<T, 8>(a, reinterpret_cast<const float(&)[8][4]>(x));
}

// d (64 x 64) = A (rows r0.. of tile a) B^T (the 64 rows of tile b), k = 64, both K-major.
template <bool BF>
__device__ __forceinline__ void rows_times_rows(float (&d)[32], const unsigned char* a, int r0,
                                                const unsigned char* b) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) wgmma::mma_ss<BF, 0>(d, k_major(a, r0, kk), k_major(b, 0, kk), kk > 0);
}

// d += P Y: P (64 x 64) from registers, Y the 64 rows of tile y (k along its rows).
template <bool BF>
__device__ __forceinline__ void weights_times_rows(float (&d)[32], const uint32_t (&p)[4][4], const unsigned char* y) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) wgmma::mma_rs<BF, 1>(d, p[kk], mn_major(y, kk), true);
}

// A relative bias's band of terms (and, for the keys kernel, its rows' factors) for a later
// stage, in two steps: the raw loads early in a tile's step, the stores (the terms in log2
// units, as BiasRows gives them) at its end, so that no thread waits on them. Thread i holds
// band element i (< n) and the factor of row r0 + i - factor0 (i >= factor0; none where
// factor0 is the block's size).
template <class T>
struct PendingTerms {
  T band{}, fac{};
  bool band_in = false, fac_in = false;
  __device__ __forceinline__ void load(const BiasRows<T, float>& bias, const AttentionArgs& a, int64_t first, int n,
                                       int64_t r0, int factor0) {
    const int i = threadIdx.x;
    const int64_t p = first + i, r = r0 + i - factor0;
    band_in = i < n && p > -a.tq && p < a.tk;
    if (band_in) band = bias.base[p * bias.cs];
    fac_in = i >= factor0 && r < a.tq && bias.scale;
    if (fac_in) fac = bias.scale[r * bias.scale_rs];
  }
  __device__ __forceinline__ void store(float* band_s, int n, float* fac_s, int factor0) const {
    const int i = threadIdx.x;
    if (i < n) band_s[i] = band_in ? float(widen(band)) * float(1.4426950408889634) : 0.f;
    if (fac_s && i >= factor0) fac_s[i - factor0] = fac_in ? float(widen(fac)) : 1.f;
  }
};

// dK and dV of 128 keys of one problem (64 per warpgroup), walking the query tiles of 64 that
// see any of them (three stages in shared memory: one barrier per tile), as keys_kernel
// without a bias or (REL) with a relative one: then its gradient's diagonal sums go to diag
// (when not null; keys_kernel's layout) through a tile of dS in shared memory.
template <class T, bool DROP, bool REL>
__global__ void __launch_bounds__(kBlockThreads, 1)
    keys_wgmma_kernel(AttentionArgs a, AttentionGradArgs ga, const float* dr, const int* row_len,
                      const int* tile_kmax, const int* tile_kmin, float* diag) {
#ifdef DIMX_WGMMA
  constexpr bool BF = std::is_same_v<T, __nv_bfloat16>;
  constexpr int BK = kRows * kWarpgroups, BQ = kRows, NS = kStages, LS = BQ + 1;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* Ks = smem_raw;  // BK rows
  unsigned char* Vs = Ks + kWarpgroups * kTileBytes;
  unsigned char* Qs = Vs + kWarpgroups * kTileBytes;  // NS stages of BQ rows
  unsigned char* Gs = Qs + NS * kTileBytes;           // dO, NS stages
  float* Ss = reinterpret_cast<float*>(Gs + NS * kTileBytes);  // REL with diag: a tile's dS, [BK][LS]
  __shared__ __align__(16) float lse_s[NS][BQ], dr_s[NS][BQ];
  __shared__ __align__(16) int len_s[NS][BQ], kmin_s[NS][4];
  __shared__ int kmax_s[kMaxTiles];  // the query tiles' longest lengths, where they fit
  // REL: the rows' factors (row scale) and the band of terms a tile's (key, row) pairs read, key -
  // row from j0 - (i0 + BQ - 1) up (log2 units, without the factors), as keys_kernel's.
  __shared__ float fac_s[NS][REL ? BQ : 1];
  __shared__ float band_s[NS][REL ? BK + BQ : 1];

  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4,
            t = lane % 4;
  const int64_t ktiles = (a.tk + BK - 1) / BK, qtiles = (a.tq + BQ - 1) / BQ;
  const int64_t b = blockIdx.x / ktiles, b0 = b / a.batch1, b1 = b % a.batch1;
  const int j0 = int(blockIdx.x % ktiles) * BK, nk = int(a.tk - j0 < BK ? a.tk - j0 : BK);
  const int d = int(a.d), dv = int(a.dv);
  const T* q = static_cast<const T*>(a.q) + b0 * a.q_bs0 + b1 * a.q_bs1;
  const T* go = static_cast<const T*>(ga.g) + b0 * a.o_bs0 + b1 * a.o_bs1;
  const float* lse = static_cast<const float*>(a.lse) + b * a.tq;
  const BiasRows<T, float> bias(a, b, REL);

  const bool kept_kmax = qtiles <= kMaxTiles;
  if (kept_kmax)
    for (int64_t i = threadIdx.x; i < qtiles; i += kBlockThreads) kmax_s[i] = tile_kmax[b * qtiles + i];
  load_core<T, BK>(Ks, static_cast<const T*>(a.k) + b0 * a.k_bs0 + b1 * a.k_bs1 + int64_t(j0) * a.k_rs, a.k_rs,
                   nk, d);
  load_core<T, BK>(Vs, static_cast<const T*>(a.v) + b0 * a.v_bs0 + b1 * a.v_bs1 + int64_t(j0) * a.v_rs, a.v_rs,
                   nk, dv);
  __syncthreads();  // kmax_s
  // The first query tile from `from` on that sees a key of this block (qtiles: none).
  auto next_visit = [&](int64_t from) {
    while (from < qtiles && (kept_kmax ? kmax_s[from] : tile_kmax[b * qtiles + from]) <= j0) ++from;
    return from;
  };
  // A tile's rows, their dO, log2-sum-exp2, Dr and lengths, and the tile's shortest length,
  // all by cp.async (rows past the problem: zeros, which no weight reads).
  auto stage = [&](int64_t it, int buf, bool with_terms) {
    if (it >= qtiles) return;
    const int64_t i0 = it * BQ;
    const int nq = int(a.tq - i0 < BQ ? a.tq - i0 : BQ);
    load_core<T, BQ>(Qs + buf * kTileBytes, q + i0 * a.q_rs, a.q_rs, nq, d);
    load_core<T, BQ>(Gs + buf * kTileBytes, go + i0 * a.o_rs, a.o_rs, nq, dv);
    const int i = threadIdx.x;
    if (i < 3 * BQ / 4) {  // 16-byte groups of 4 rows of the three row values (tq % 4 == 0: whole groups)
      const int which = i / (BQ / 4), r = (i % (BQ / 4)) * 4;
      void* dst = which == 0 ? static_cast<void*>(&lse_s[buf][r]) : which == 1 ? static_cast<void*>(&dr_s[buf][r])
                                                                                 : static_cast<void*>(&len_s[buf][r]);
      const char* row0 = which == 0   ? reinterpret_cast<const char*>(lse)
                         : which == 1 ? reinterpret_cast<const char*>(dr + b * a.tq)
                                      : reinterpret_cast<const char*>(row_len + b * a.tq);
      if (a.tq % 4 == 0) {
        const bool in = i0 + r < a.tq;
        cp_async16(dst, in ? row0 + 4 * (i0 + r) : row0, in);
      } else {
        for (int k = 0; k < 4; ++k) {
          const bool in = i0 + r + k < a.tq;
          cp_async4(static_cast<char*>(dst) + 4 * k, in ? row0 + 4 * (i0 + r + k) : row0, in);
        }
      }
    } else if (i == 3 * BQ / 4) {
      cp_async4(&kmin_s[buf][0], tile_kmin + b * qtiles + it, true);
    }
    if (REL && with_terms) {  // (the first two tiles; the loop's come by PendingTerms)
      // (A padded row's factor may be NaN: its weights are never seen, and its dS is 0.)
      if (i >= kBlockThreads - BQ) {
        const int64_t r = i0 + i - (kBlockThreads - BQ);
        fac_s[buf][i - (kBlockThreads - BQ)] = r < a.tq && bias.scale ? bias.factor(r) : 1.f;
      }
      stage_band<T, float, kBlockThreads>(band_s[buf], bias, a, int64_t(j0) - (i0 + BQ - 1), BK + BQ - 1);
    }
  };
  int64_t it = next_visit(0), nx = next_visit(it + 1);
  stage(it, 0, true);
  cp_async_commit();
  stage(nx, 1, true);
  cp_async_commit();
  PendingTerms<T> terms;

  float dk[32], dvv[32];
#pragma unroll
  for (int e = 0; e < 32; ++e) dk[e] = dvv[e] = 0.f;
  const float sl2 = float(a.scale * 1.4426950408889634);
  const int key0 = j0 + wg * kRows + warp * 16 + g;  // this thread's keys: key0, key0 + 8
  const DropMask<float> drop(a, b0, b1, DROP);
  float* diag_row = REL && diag ? diag + (b * ktiles + blockIdx.x % ktiles) * (a.tq + BK - 1) : nullptr;

  for (int buf = 0; it < qtiles; buf = (buf + 1) % NS) {
    const int64_t nx2 = next_visit(nx + 1);
    cp_async_wait1();  // this tile's stage
    wgmma::fence_shared();
    __syncthreads();  // every thread's copies are in; the stage of two tiles ago is free
    unsigned char* Q = Qs + buf * kTileBytes;
    const unsigned char* G = Gs + buf * kTileBytes;
    const int64_t i0 = it * BQ;
    const int kmin = kmin_s[buf][0];
    if (REL && nx2 < qtiles)
      terms.load(bias, a, int64_t(j0) - (nx2 * BQ + BQ - 1), BK + BQ - 1, nx2 * BQ, kBlockThreads - BQ);
    // A padded query row (length 0) may hold anything: zero it (dK's products would carry it).
    if (kmin == 0) {
      for (int i = threadIdx.x; i < BQ * 8; i += kBlockThreads) {
        const int r = i / 8;
        if (len_s[buf][r] == 0)
          *reinterpret_cast<uint4*>(Q + wgmma::offset<64>(r, (i % 8) * 8)) = make_uint4(0, 0, 0, 0);
      }
      wgmma::fence_shared();
      __syncthreads();
    }
    float s[32], dp[32];
    wgmma::fence();
    rows_times_rows<BF>(s, Ks, wg * kRows, Q);  // S^T: keys x queries
    wgmma::commit();
    rows_times_rows<BF>(dp, Vs, wg * kRows, G);  // dP^T
    wgmma::commit();
    stage(nx2, (buf + 2) % NS, false);  // (while the products run)
    cp_async_commit();
    wgmma::wait<1>();
    wgmma::pin(s);  // (reads of s stay after the wait)
    // P^T (into s, before dropout) while dP^T's product runs, then dS^T (into dp). Each weight
    // is tested against its row's length unless every row of the tile sees all the warp's keys.
    uint32_t pf[4][4], df[4][4];
    auto weights = [&](auto whole) {
      uint32_t dropped = 0;  // bit 4 n + e: weight (n, e) dropped
      float kept_p[32];
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        bool kept[4] = {true, true, true, true};
        if (DROP) keep_by_keys(drop, i0 + 8 * n + 2 * t, key0 - (g & 3), g & 3, kept);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = 8 * n + 2 * t + (e & 1), key = key0 + 8 * (e / 2);
          const bool seen = decltype(whole)::value || key < len_s[buf][r];
          const float term = REL ? band_s[buf][key - j0 - r + BQ - 1] * fac_s[buf][r] : 0.f;
          const float p = seen ? ex2(fmaf(s[4 * n + e], sl2, REL ? term - lse_s[buf][r] : -lse_s[buf][r])) : 0.f;
          s[4 * n + e] = p;
          kept_p[4 * n + e] = kept[e] ? (DROP ? p * drop.scale : p) : 0.f;
          if (DROP && !kept[e]) dropped |= 1u << (4 * n + e);
        }
      }
      operands<T>(pf, kept_p);  // dV from the dropped weights
      wgmma::wait<0>();
      wgmma::pin(dp);
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = 8 * n + 2 * t + (e & 1), key = key0 + 8 * (e / 2);
          const bool seen = decltype(whole)::value || key < len_s[buf][r];  // (dP^T may be NaN past it)
          const float x = dp[4 * n + e];
          const float dpd = DROP && (dropped >> (4 * n + e)) & 1 ? 0.f : DROP ? x * drop.scale : x;
          dp[4 * n + e] = seen ? s[4 * n + e] * (dpd - dr_s[buf][r]) : 0.f;
          if constexpr (REL)
            if (diag_row) Ss[(key - j0) * LS + r] = seen ? dp[4 * n + e] * fac_s[buf][r] : 0.f;  // d table
        }
      operands<T>(df, dp);
    };
    either(j0 + wg * kRows + (warp + 1) * 16 <= kmin, weights);
    wgmma::fence();
    weights_times_rows<BF>(dvv, pf, G);  // dV += P^T dO
    weights_times_rows<BF>(dk, df, Q);   // dK += dS^T Q
    wgmma::commit();
    if (REL && diag_row) {  // while the products run
      __syncthreads();      // the tile's dS is in
      add_diagonals<float, BK, BQ, LS, false, kBlockThreads>(Ss, nullptr, diag_row, i0, a.tq);
    }
    if (REL && nx2 < qtiles) terms.store(band_s[(buf + 2) % NS], BK + BQ - 1, fac_s[(buf + 2) % NS], kBlockThreads - BQ);
    wgmma::wait<0>();
    it = nx;
    nx = nx2;
  }
  cp_async_wait_all();
  wgmma::pin(dk);
  wgmma::pin(dvv);

  const float sc = float(a.scale);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int kr = wg * kRows + warp * 16 + g + 8 * h;
    if (kr >= nk) continue;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      const int col = 8 * n + 2 * t;
      if (ga.dk && col < d)
        store2<T>(static_cast<T*>(ga.dk) + b0 * ga.dk_bs0 + b1 * ga.dk_bs1 + int64_t(j0 + kr) * ga.dk_rs + col,
                  dk[4 * n + 2 * h] * sc, dk[4 * n + 2 * h + 1] * sc);
      if (ga.dv && col < dv)
        store2<T>(static_cast<T*>(ga.dv) + b0 * ga.dv_bs0 + b1 * ga.dv_bs1 + int64_t(j0 + kr) * ga.dv_rs + col,
                  dvv[4 * n + 2 * h], dvv[4 * n + 2 * h + 1]);
    }
  }
#endif
}

// dQ of 128 queries of one problem (64 per warpgroup), walking their keys in tiles of 64 (three
// stages in shared memory, one barrier per tile), as queries_kernel without a bias or (REL)
// with a relative one: then, with a row scale whose gradient is wanted, each row's sum of dS
// times its (unscaled) terms goes to dscale[b, row] too.
template <class T, bool DROP, bool REL>
__global__ void __launch_bounds__(kBlockThreads, DROP || REL ? 1 : 2)  // (two blocks per SM without their registers)
    queries_wgmma_kernel(AttentionArgs a, AttentionGradArgs ga, const float* dr, const int* row_len,
                         const int* tile_kmax, float* dscale) {
#ifdef DIMX_WGMMA
  constexpr bool BF = std::is_same_v<T, __nv_bfloat16>;
  constexpr int BM = kRows * kWarpgroups, BK = kRows, NS = kStages;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* Qs = smem_raw;                       // BM rows
  unsigned char* Gs = Qs + kWarpgroups * kTileBytes;  // dO, BM rows
  unsigned char* Ks = Gs + kWarpgroups * kTileBytes;  // NS stages of BK rows
  unsigned char* Vs = Ks + NS * kTileBytes;           // NS stages
  // REL: the band of terms a key tile's (row, key) pairs read, key - row from j0 - (i0 + BM - 1)
  // up (log2 units, without the factors), as queries_kernel's; staged with the tiles.
  __shared__ float band_s[NS][REL ? BM + BK : 1];

  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4,
            t = lane % 4;
  const int64_t b = blockIdx.x, b0 = b / a.batch1, b1 = b % a.batch1, rtiles = (a.tq + kRows - 1) / kRows;
  const int64_t i0 = int64_t(gridDim.y - 1 - blockIdx.y) * BM;
  const int nq = int(a.tq - i0 < BM ? a.tq - i0 : BM);
  const int kmax = longest_length(tile_kmax, b, rtiles, i0, BM, kRows);
  const int d = int(a.d), dv = int(a.dv);
  const T* k = static_cast<const T*>(a.k) + b0 * a.k_bs0 + b1 * a.k_bs1;
  const T* v = static_cast<const T*>(a.v) + b0 * a.v_bs0 + b1 * a.v_bs1;

  load_core<T, BM>(Qs, static_cast<const T*>(a.q) + b0 * a.q_bs0 + b1 * a.q_bs1 + i0 * a.q_rs, a.q_rs, nq, d);
  load_core<T, BM>(Gs, static_cast<const T*>(ga.g) + b0 * a.o_bs0 + b1 * a.o_bs1 + i0 * a.o_rs, a.o_rs, nq, dv);
  stage_keys<T>(Ks, Vs, 0, k, v, a, 0, kmax);
  cp_async_commit();
  stage_keys<T>(Ks, Vs, 1, k, v, a, BK, kmax);
  cp_async_commit();
  const BiasRows<T, float> bias(a, b, REL);
  if constexpr (REL)
    for (int j = 0; j < 2 * BK && j < kmax; j += BK)
      stage_band<T, float, kBlockThreads>(band_s[j / BK], bias, a, int64_t(j) - (i0 + BM - 1), BM + BK - 1);
  PendingTerms<T> terms;  // the band of the tile two ahead

  const int64_t r0 = i0 + wg * kRows + warp * 16 + g;  // this thread's rows: r0, r0 + 8
  int len[1][2];
  float lse[2], drr[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t r = r0 + 8 * h;
    const bool in = r < a.tq;
    len[0][h] = in ? row_len[b * a.tq + r] : 0;
    lse[h] = in ? static_cast<const float*>(a.lse)[b * a.tq + r] : INFINITY;
    drr[h] = in ? dr[b * a.tq + r] : 0.f;
  }
  const int least = warp_shortest<1>(len);  // the key tiles below it are seen whole
  const bool scaled = REL && bias.scale && dscale;
  float fac[2], dsc[2] = {0.f, 0.f};  // REL: the rows' factors, and their sums for dscale
#pragma unroll
  for (int h = 0; h < 2; ++h) fac[h] = REL && bias.scale && r0 + 8 * h < a.tq ? bias.factor(r0 + 8 * h) : 1.f;
  float dq[32];
#pragma unroll
  for (int e = 0; e < 32; ++e) dq[e] = 0.f;
  const float sl2 = float(a.scale * 1.4426950408889634);
  const DropMask<float> drop(a, b0, b1, DROP);

  for (int j0 = 0, buf = 0; j0 < kmax; j0 += BK, buf = (buf + 1) % NS) {
    cp_async_wait1();  // this tile's stage
    wgmma::fence_shared();
    __syncthreads();  // every thread's copies are in; the stage of two tiles ago is free
    const unsigned char* K = Ks + buf * kTileBytes;
    const unsigned char* V = Vs + buf * kTileBytes;
    const int j2 = j0 + 2 * BK;  // the tile whose terms load now and go to shared memory at the end
    if (REL && j2 < kmax) terms.load(bias, a, int64_t(j2) - (i0 + BM - 1), BM + BK - 1, 0, kBlockThreads);
    float s[32], dp[32];
    wgmma::fence();
    rows_times_rows<BF>(s, Qs, wg * kRows, K);  // S: queries x keys
    wgmma::commit();
    rows_times_rows<BF>(dp, Gs, wg * kRows, V);  // dP = dO V^T
    wgmma::commit();
    stage_keys<T>(Ks, Vs, (buf + 2) % NS, k, v, a, j0 + 2 * BK, kmax);  // (while the products run)
    cp_async_commit();
    wgmma::wait<1>();
    wgmma::pin(s);  // (reads of s stay after the wait)
    // P (into s) while dP's product runs, then dS (into dp), as in the keys kernel.
    uint32_t df[4][4];
    auto weights = [&](auto whole) {
      uint32_t dropped = 0;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        bool kept[4] = {true, true, true, true};
        if (DROP) keep_by_rows(drop, r0, j0 + 8 * n, t, kept);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = j0 + 8 * n + 2 * t + (e & 1), h = e / 2;
          const bool seen = decltype(whole)::value || key < len[0][h];
          const float raw = REL && seen ? band_s[buf][key - j0 - (r0 + 8 * h - i0) + BM - 1] : 0.f;
          s[4 * n + e] = seen ? ex2(fmaf(s[4 * n + e], sl2, REL ? raw * fac[h] - lse[h] : -lse[h])) : 0.f;
          if (DROP && !kept[e]) dropped |= 1u << (4 * n + e);
        }
      }
      wgmma::wait<0>();
      wgmma::pin(dp);
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = j0 + 8 * n + 2 * t + (e & 1), h = e / 2;
          const bool seen = decltype(whole)::value || key < len[0][h];
          const float x = dp[4 * n + e];
          const float dpd = DROP && (dropped >> (4 * n + e)) & 1 ? 0.f : DROP ? x * drop.scale : x;
          dp[4 * n + e] = seen ? s[4 * n + e] * (dpd - drr[h]) : 0.f;
          if (REL && scaled) {
            const float raw = seen ? band_s[buf][key - j0 - (r0 + 8 * h - i0) + BM - 1] : 0.f;
            dsc[h] = fmaf(dp[4 * n + e], raw, dsc[h]);
          }
        }
      operands<T>(df, dp);
    };
    either(j0 + BK <= least, weights);
    wgmma::fence();
    weights_times_rows<BF>(dq, df, K);  // dQ += dS K
    wgmma::commit();
    if (REL && j2 < kmax) terms.store(band_s[(buf + 2) % NS], BM + BK - 1, nullptr, kBlockThreads);
    wgmma::wait<0>();
  }
  cp_async_wait_all();
  wgmma::pin(dq);
  if (REL && scaled) {  // a row lives in one quad; the sums were in log2 units
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float x = quad_sum(dsc[h]);
      if (t == 0 && r0 + 8 * h < a.tq) dscale[b * a.tq + r0 + 8 * h] = x * 0.6931471805599453f;
    }
  }

  if (!ga.dq) return;
  const float sc = float(a.scale);
  T* out = static_cast<T*>(ga.dq) + b0 * ga.dq_bs0 + b1 * ga.dq_bs1;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t r = r0 + 8 * h;
    if (r >= a.tq) continue;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      const int col = 8 * n + 2 * t;
      if (col < d) store2<T>(out + r * ga.dq_rs + col, dq[4 * n + 2 * h] * sc, dq[4 * n + 2 * h + 1] * sc);
    }
  }
#endif
}

// The forward of bf16/f16 without a bias or dropout (as forward_kernel): 128 queries of one
// problem (64 per warpgroup) walk the keys their rows can see in tiles of 64 (three stages
// in shared memory, one barrier per tile); S = Q K^T from shared memory, the online softmax
// on the accumulators in registers, O += P V with the weights from registers.
template <class T>
__global__ void __launch_bounds__(kBlockThreads, 2) forward_wgmma_kernel(AttentionArgs a) {
#ifdef DIMX_WGMMA
  constexpr bool BF = std::is_same_v<T, __nv_bfloat16>;
  constexpr int BM = kRows * kWarpgroups, BN = kRows, NS = kStages;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* Qs = smem_raw;                       // BM rows
  unsigned char* Ks = Qs + kWarpgroups * kTileBytes;  // NS stages of BN rows
  unsigned char* Vs = Ks + NS * kTileBytes;           // NS stages
  __shared__ int kmax_s;

  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4,
            t = lane % 4;
  const int64_t b = blockIdx.x, b0 = b / a.batch1, b1 = b % a.batch1;
  const int64_t i0 = int64_t(gridDim.y - 1 - blockIdx.y) * BM;  // longest (causal) blocks first
  const T* k = static_cast<const T*>(a.k) + b0 * a.k_bs0 + b1 * a.k_bs1;
  const T* v = static_cast<const T*>(a.v) + b0 * a.v_bs0 + b1 * a.v_bs1;

  if (threadIdx.x == 0) kmax_s = 0;
  __syncthreads();
  const int64_t r0 = i0 + wg * kRows + warp * 16 + g;  // this thread's rows: r0, r0 + 8
  int len[1][2], mine = 0;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    len[0][h] = row_length(a, b, r0 + 8 * h);  // 0 past the rows
    mine = len[0][h] > mine ? len[0][h] : mine;
  }
  if (mine > 0) atomicMax(&kmax_s, mine);
  const int least = warp_shortest<1>(len);  // the key tiles below it are seen whole
  __syncthreads();
  const int kmax = kmax_s, d = int(a.d), dv = int(a.dv);

  load_core<T, BM>(Qs, static_cast<const T*>(a.q) + b0 * a.q_bs0 + b1 * a.q_bs1 + i0 * a.q_rs, a.q_rs,
                   int(a.tq - i0 < BM ? a.tq - i0 : BM), d);
  stage_keys<T>(Ks, Vs, 0, k, v, a, 0, kmax);
  cp_async_commit();
  stage_keys<T>(Ks, Vs, 1, k, v, a, BN, kmax);
  cp_async_commit();

  float o[32], m_[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
  for (int e = 0; e < 32; ++e) o[e] = 0.f;
  const float sl2 = float(a.scale * 1.4426950408889634);
  // With a positive scale the energies stay unscaled until the exponent (the row maxima scale
  // with them), as in forward_kernel.
  const bool raw_scores = sl2 > 0.f;
  const float exp_scale = raw_scores ? sl2 : 1.f;

  for (int j0 = 0, buf = 0; j0 < kmax; j0 += BN, buf = (buf + 1) % NS) {
    cp_async_wait1();  // this tile's stage
    wgmma::fence_shared();
    __syncthreads();  // every thread's copies are in; the stage of the tile before is free
    const unsigned char* K = Ks + buf * kTileBytes;
    const unsigned char* V = Vs + buf * kTileBytes;
    float s[32];
    wgmma::fence();
    rows_times_rows<BF>(s, Qs, wg * kRows, K);  // S = Q K^T
    wgmma::commit();
    stage_keys<T>(Ks, Vs, (buf + 2) % NS, k, v, a, j0 + 2 * BN, kmax);  // (while the product runs)
    cp_async_commit();
    wgmma::wait<0>();
    wgmma::pin(s);
    wgmma::pin(o);
    // The energies in log2 units (raw: unscaled), -inf past a row's keys unless every row of the
    // warp sees the whole tile.
    auto energies = [&](auto whole, auto raw) {
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = j0 + 8 * n + 2 * t + (e & 1);
          const bool seen = decltype(whole)::value || key < len[0][e / 2];
          const float x = decltype(raw)::value ? s[4 * n + e] : s[4 * n + e] * sl2;
          s[4 * n + e] = seen ? x : -INFINITY;
        }
    };
    either(raw_scores, [&](auto raw) { either(j0 + BN <= least, [&](auto whole) { energies(whole, raw); }); });
    // Online softmax of rows g (e = 0, 1) and g + 8 (e = 2, 3); a row lives in one quad.
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < 32; ++i) mx[(i % 4) / 2] = fmaxf(mx[(i % 4) / 2], s[i]);
    float alpha[2], base[2], sum[2] = {0.f, 0.f};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      const float mnew = fmaxf(m_[h], raw_scores ? mx[h] * sl2 : mx[h]);  // (-inf stays -inf)
      base[h] = mnew == -INFINITY ? 0.f : mnew;  // no visible key yet: all weights 0
      alpha[h] = ex2(m_[h] - base[h]);
      m_[h] = mnew;
    }
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      s[i] = ex2(fmaf(s[i], exp_scale, -base[(i % 4) / 2]));
      sum[(i % 4) / 2] += s[i];
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) l[h] = l[h] * alpha[h] + sum[h];  // the quad's partial sums
    // Rescaled only where a row's maximum moved.
    if (!__all_sync(0xffffffffu, alpha[0] == 1.f && alpha[1] == 1.f)) {
#pragma unroll
      for (int i = 0; i < 32; ++i) o[i] *= alpha[(i % 4) / 2];
    }
    uint32_t pf[4][4];
    operands<T>(pf, s);
    wgmma::fence();
    weights_times_rows<BF>(o, pf, V);  // O += P V
    wgmma::commit();
    wgmma::wait<0>();
  }
  cp_async_wait_all();
  wgmma::pin(o);

  T* out = static_cast<T*>(a.out) + b0 * a.o_bs0 + b1 * a.o_bs1;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float total = quad_sum(l[h]);
    const int64_t r = r0 + 8 * h;
    if (r >= a.tq) continue;
    if (a.lse && t == 0) static_cast<float*>(a.lse)[b * a.tq + r] = total > 0.f ? m_[h] + log2f(total) : INFINITY;
    const float inv = total > 0.f ? 1.f / total : 0.f;
    T* row = out + r * a.o_rs;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      const int col = 8 * n + 2 * t;
      if (col < dv) store2<T>(row + col, o[4 * n + 2 * h] * inv, o[4 * n + 2 * h + 1] * inv);
    }
  }
#endif
}

template <class T, bool DROP>
void launch(const AttentionArgs& a, const AttentionGradArgs& ga, const float* dr, const int* row_len,
            const int* tile_kmax, const int* tile_kmin, cudaStream_t s) {
  const int64_t problems = a.batch0 * a.batch1;
  if (ga.dk || ga.dv) {
    const int64_t kblocks = (a.tk + 2 * kRows - 1) / (2 * kRows);
    constexpr size_t smem = size_t(2 * kWarpgroups + 2 * kStages) * kTileBytes;
    set_smem<keys_wgmma_kernel<T, DROP, false>>(smem, "dot_attention backward");
    keys_wgmma_kernel<T, DROP, false><<<unsigned(problems * kblocks), kBlockThreads, smem, s>>>(
        a, ga, dr, row_len, tile_kmax, tile_kmin, nullptr);
    check_launch("dot_attention backward (keys, wgmma)");
  }
  if (ga.dq) {
    const int64_t qblocks = (a.tq + 2 * kRows - 1) / (2 * kRows);
    constexpr size_t smem = size_t(2 * kWarpgroups + 2 * kStages) * kTileBytes;
    set_smem<queries_wgmma_kernel<T, DROP, false>>(smem, "dot_attention backward");
    queries_wgmma_kernel<T, DROP, false><<<dim3(unsigned(problems), unsigned(qblocks)), kBlockThreads, smem, s>>>(
        a, ga, dr, row_len, tile_kmax, nullptr);
    check_launch("dot_attention backward (queries, wgmma)");
  }
}

// The keys kernel with a relative bias (its diagonal sums to diag when not null).
template <class T, bool DROP>
void launch_keys_relative(const AttentionArgs& a, const AttentionGradArgs& ga, const float* dr, const int* row_len,
                          const int* tile_kmax, const int* tile_kmin, float* diag, cudaStream_t s) {
  const int64_t kblocks = (a.tk + 2 * kRows - 1) / (2 * kRows);
  constexpr size_t tiles = size_t(2 * kWarpgroups + 2 * kStages) * kTileBytes,
                   diag_tile = sizeof(float) * size_t(2 * kRows * (kRows + 1));
  set_smem<keys_wgmma_kernel<T, DROP, true>>(tiles + diag_tile, "dot_attention backward");
  keys_wgmma_kernel<T, DROP, true><<<unsigned(a.batch0 * a.batch1 * kblocks), kBlockThreads,
                                     tiles + (diag ? diag_tile : 0), s>>>(a, ga, dr, row_len, tile_kmax, tile_kmin,
                                                                          diag);
  check_launch("dot_attention backward (keys, wgmma)");
}

// The dQ kernel with a relative bias (each row's share of its scale's gradient to dscale when not
// null).
template <class T, bool DROP>
void launch_queries_relative(const AttentionArgs& a, const AttentionGradArgs& ga, const float* dr, const int* row_len,
                             const int* tile_kmax, float* dscale, cudaStream_t s) {
  const int64_t qblocks = (a.tq + 2 * kRows - 1) / (2 * kRows);
  constexpr size_t smem = size_t(2 * kWarpgroups + 2 * kStages) * kTileBytes;
  set_smem<queries_wgmma_kernel<T, DROP, true>>(smem, "dot_attention backward");
  queries_wgmma_kernel<T, DROP, true><<<dim3(unsigned(a.batch0 * a.batch1), unsigned(qblocks)), kBlockThreads, smem,
                                        s>>>(a, ga, dr, row_len, tile_kmax, dscale);
  check_launch("dot_attention backward (queries, wgmma)");
}

// Whether the current device runs the sm_90a kernels (compute capability 9.0), per device.
bool hopper() {
  static std::atomic<uint64_t> known{0}, yes{0};  // a bit per device ordinal below 64
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return cudaGetLastError(), false;
  const uint64_t bit = uint64_t(1) << dev;
  if (!(known.load(std::memory_order_acquire) & bit)) {
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (major == 9 && minor == 0) yes.fetch_or(bit, std::memory_order_relaxed);
    known.fetch_or(bit, std::memory_order_release);
  }
  return yes.load(std::memory_order_relaxed) & bit;
}

// DIMX_WGMMA_ATTENTION=0 keeps every call on the mma.sync kernels (for comparisons).
bool wgmma_off() {
  static const bool off = [] {
    const char* e = std::getenv("DIMX_WGMMA_ATTENTION");
    return e && std::string(e) == "0";
  }();
  return off;
}

// The element type of a 16-bit dtype, as a tag.
template <class T>
struct Tag {
  using type = T;
};

// Runs f(Tag<T>, drop) with T dt's element type (bf16 or f16) and drop a compile-time constant.
template <class F>
void by_type(DType dt, bool drop, F&& f) {
  auto with = [&](auto tag) { drop ? f(tag, std::true_type{}) : f(tag, std::false_type{}); };
  dt == DType::bf16 ? with(Tag<__nv_bfloat16>{}) : with(Tag<__half>{});
}

}  // namespace

bool attention_wgmma_built() {
#ifdef DIMX_WGMMA_TARGET
  return true;
#else
  return false;
#endif
}

namespace {

// Whether the wgmma kernels may take a call of dt on this device: built for it, compute
// capability 9.0, bf16 or f16, head sizes up to 64, not switched off (its bias and dropout are
// each entry point's to check).
bool takes(DType dt, const AttentionArgs& a) {
  return !wgmma_off() && attention_wgmma_built() && (dt == DType::bf16 || dt == DType::f16) && a.d <= 64 &&
         a.dv <= 64 && hopper();
}

}  // namespace

bool launch_attention_backward_wgmma(DType dt, const AttentionArgs& a, const AttentionGradArgs& ga, const float* dr,
                                     const int* row_len, const int* tile_kmax, const int* tile_kmin, cudaStream_t s) {
  if (!takes(dt, a) || a.bias) return false;
  by_type(dt, a.drop_p > 0, [&](auto tag, auto drop) {
    launch<typename decltype(tag)::type, decltype(drop)::value>(a, ga, dr, row_len, tile_kmax, tile_kmin, s);
  });
  if (a.on_wgmma) *a.on_wgmma = true;
  return true;
}

bool launch_attention_keys_wgmma(DType dt, const AttentionArgs& a, const AttentionGradArgs& ga, const float* dr,
                                 const int* row_len, const int* tile_kmax, const int* tile_kmin, float* diag,
                                 cudaStream_t s) {
  if (!takes(dt, a) || !relative_view(a)) return false;
  by_type(dt, a.drop_p > 0, [&](auto tag, auto drop) {
    launch_keys_relative<typename decltype(tag)::type, decltype(drop)::value>(a, ga, dr, row_len, tile_kmax,
                                                                            tile_kmin, diag, s);
  });
  if (a.on_wgmma) *a.on_wgmma = true;
  return true;
}

bool launch_attention_queries_wgmma(DType dt, const AttentionArgs& a, const AttentionGradArgs& ga, const float* dr,
                                    const int* row_len, const int* tile_kmax, float* dscale, cudaStream_t s) {
  if (!takes(dt, a) || !relative_view(a)) return false;
  by_type(dt, a.drop_p > 0, [&](auto tag, auto drop) {
    launch_queries_relative<typename decltype(tag)::type, decltype(drop)::value>(a, ga, dr, row_len, tile_kmax,
                                                                               dscale, s);
  });
  if (a.on_wgmma) *a.on_wgmma = true;
  return true;
}

bool launch_attention_forward_wgmma(DType dt, const AttentionArgs& a, cudaStream_t s) {
  if (!takes(dt, a) || a.bias || a.drop_p > 0) return false;
  const int64_t problems = a.batch0 * a.batch1, qblocks = (a.tq + 2 * kRows - 1) / (2 * kRows);
  constexpr size_t smem = size_t(kWarpgroups + 2 * kStages) * kTileBytes;
  const dim3 grid{unsigned(problems), unsigned(qblocks)};
  by_type(dt, false, [&](auto tag, auto) {
    using T = typename decltype(tag)::type;
    set_smem<forward_wgmma_kernel<T>>(smem, "dot_attention");
    forward_wgmma_kernel<T><<<grid, kBlockThreads, smem, s>>>(a);
  });
  check_launch("dot_attention (wgmma)");
  if (a.on_wgmma) *a.on_wgmma = true;
  return true;
}

}  // namespace dimx::gpu

// The backward of the fused attention (gpu/attention.cu), flash-attention style: the weights
// are recomputed tile by tile from q, k and the forward's per-row log-sum-exp, so nothing of
// size tq x tk touches device memory. With P = exp(scale q.k - lse) (0 past a row's length),
// dO the output's gradient and Dr = sum_c dO[c] O[c] per row:
//   dV = P^T dO,   dP = dO V^T,   dS = P (dP - Dr),   dK = scale dS^T Q,   dQ = scale dS K.
// Two kernels:
//   rows: Dr per row and, per query tile, the longest length of its rows (zero dQ rows for a
//         tile that sees no key);
//   main: a block owns BN keys and walks the query tiles that see any of them, dK and dV in
//         registers; each tile's share of dQ is added into dQ itself (the running sum, in the
//         element type) in key-tile order (a block waits for the previous key tile's block to
//         have added its share), and the last key tile scales it. The order is fixed, so two
//         runs give the same bits, and no scratch of dQ's size is needed; blocks take
//         their tiles from a counter in that order, so the block waited for is always running.
// With dropout (the forward's mask, regenerated), dV = P~^T dO and dS = P (dP~ - Dr), where P~
// and dP~ are P and dP with the dropped weights 0 and the kept ones scaled.
// Plain FMA in the element type (exact fp32 / fp64), as the forward. With a bias, its gradient
// is dS at each element the forward read, written by the block that owns the key (each
// problem's part of it is its own: no two blocks add into one element). A relative bias (term
// f_i t[j - i], f the row scale or 1) shares its elements between key tiles instead: a block
// adds its tile pairs' diagonal sums of f_i dS_ij, query tiles in order, into its key tile's
// row of them in scratch, and a last kernel sums each position over the key tiles in order
// (attention_tiles.cuh). The row scale's gradient, sum_j dS_ij t[j - i] per row, is written
// per (key tile, row) to scratch, and a last kernel adds each row's shares in key-tile order.
//
// The score tiles (energies and dP) share one thread mapping: thread t holds entries
// (a = t / 8 + 16 i, b = t % 8 + 8 e) of an [NA, NB] tile; the accumulators hold RK
// contiguous output rows (t / 8) times the columns t % 8 * VN + 8 VN g.
#include <cuda_runtime.h>

#include <cmath>

#include "attention_tiles.cuh"
#include "common.cuh"

namespace dimx::gpu {

namespace {

using namespace attention_tiles;

// acc[i][e] = sum_c A[a_i][c] * B[b_e][c] over D columns, a_i = t / 8 + 16 i, b_e = t % 8 + 8 e.
template <class T, int D, int NA, int NB, int LD>
__device__ __forceinline__ void score_tile(const T* A, const T* B, T (&acc)[NA / 16][NB / 8]) {
  constexpr int VN = 16 / int(sizeof(T));
  using V = typename Vec<T>::type;
  const int ta = threadIdx.x / 8, tb = threadIdx.x % 8;
#pragma unroll
  for (int i = 0; i < NA / 16; ++i)
#pragma unroll
    for (int e = 0; e < NB / 8; ++e) acc[i][e] = 0;
#pragma unroll 4
  for (int c = 0; c < D; c += VN) {
    V av[NA / 16];
#pragma unroll
    for (int i = 0; i < NA / 16; ++i) av[i] = *reinterpret_cast<const V*>(A + (ta + 16 * i) * LD + c);
#pragma unroll
    for (int e = 0; e < NB / 8; ++e) {
      const V bv = *reinterpret_cast<const V*>(B + (tb + 8 * e) * LD + c);
#pragma unroll
      for (int i = 0; i < NA / 16; ++i) {
        if constexpr (VN == 4) {
          acc[i][e] = fma(av[i].x, bv.x, acc[i][e]);
          acc[i][e] = fma(av[i].y, bv.y, acc[i][e]);
          acc[i][e] = fma(av[i].z, bv.z, acc[i][e]);
          acc[i][e] = fma(av[i].w, bv.w, acc[i][e]);
        } else {
          acc[i][e] = fma(av[i].x, bv.x, acc[i][e]);
          acc[i][e] = fma(av[i].y, bv.y, acc[i][e]);
        }
      }
    }
  }
}

// acc[i][g * VN + c] += sum_{r < n} W[r][t / 8 * RK + i] * X[r][t % 8 * VN + 8 VN g + c]
// (W rows of stride LDW, X rows of stride LDX); WT: W is stored transposed, W[r][j] at j * LDW + r.
template <class T, int D, int RK, int LDW, int LDX, bool WT = false>
__device__ __forceinline__ void accumulate(const T* W, const T* X, int n, T (&acc)[RK][D / 8]) {
  constexpr int VN = 16 / int(sizeof(T)), CV = D / (8 * VN);
  using V = typename Vec<T>::type;
  const int tr = threadIdx.x / 8, tc = threadIdx.x % 8;
#pragma unroll 4
  for (int r = 0; r < n; ++r) {
    T w[RK];
#pragma unroll
    for (int i = 0; i < RK; ++i) w[i] = WT ? W[(tr * RK + i) * LDW + r] : W[r * LDW + tr * RK + i];
#pragma unroll
    for (int g = 0; g < CV; ++g) {
      const V xv = *reinterpret_cast<const V*>(X + r * LDX + tc * VN + 8 * VN * g);
#pragma unroll
      for (int i = 0; i < RK; ++i) {
        if constexpr (VN == 4) {
          acc[i][g * 4 + 0] = fma(w[i], xv.x, acc[i][g * 4 + 0]);
          acc[i][g * 4 + 1] = fma(w[i], xv.y, acc[i][g * 4 + 1]);
          acc[i][g * 4 + 2] = fma(w[i], xv.z, acc[i][g * 4 + 2]);
          acc[i][g * 4 + 3] = fma(w[i], xv.w, acc[i][g * 4 + 3]);
        } else {
          acc[i][g * 2 + 0] = fma(w[i], xv.x, acc[i][g * 2 + 0]);
          acc[i][g * 2 + 1] = fma(w[i], xv.y, acc[i][g * 2 + 1]);
        }
      }
    }
  }
}

// Writes rows [0, nrows) x columns [0, ncols) of the thread's accumulators, times f.
template <class T, int D, int RK>
__device__ __forceinline__ void store_rows(T* out, int64_t row_stride, int nrows, int ncols, T f,
                                           const T (&acc)[RK][D / 8]) {
  constexpr int VN = 16 / int(sizeof(T)), CV = D / (8 * VN);
  const int tr = threadIdx.x / 8, tc = threadIdx.x % 8;
#pragma unroll
  for (int i = 0; i < RK; ++i) {
    const int r = tr * RK + i;
    if (r >= nrows) continue;
#pragma unroll
    for (int g = 0; g < CV; ++g)
#pragma unroll
      for (int c = 0; c < VN; ++c) {
        const int col = tc * VN + 8 * VN * g + c;
        if (col < ncols) out[r * row_stride + col] = acc[i][g * VN + c] * f;
      }
  }
}

// Loads a query tile's per-row values into shared memory: lse (log2 units), Dr, length.
template <class T, int BM>
__device__ __forceinline__ void load_rows(const AttentionArgs& a, int64_t b, int64_t i0, const T* dr,
                                          const int* row_len, T* lse_s, T* dr_s, int* len_s) {
  for (int i = threadIdx.x; i < BM; i += kThreads) {
    const int64_t r = i0 + i;
    const bool in = r < a.tq;
    lse_s[i] = in ? static_cast<const T*>(a.lse)[b * a.tq + r] : T(INFINITY);
    dr_s[i] = in ? dr[b * a.tq + r] : T(0);
    len_s[i] = in ? row_len[b * a.tq + r] : 0;
  }
}

// What the blocks of the main kernel share: the next tile's ticket and each (problem, query
// tile)'s count of key tiles that have added their dQ share (into dQ itself).
struct DqShared {
  int* ticket;
  int* added;
};

// A relative bias's scratch (each null where that gradient is not wanted): the key tiles' rows
// of diagonal sums [problem, key tile, tq + BN - 1] (zeroed), and the row scale's shares
// [problem, key tile, tq] (written where the key tile sees the row's query tile).
template <class T>
struct RelativeScratch {
  T* diag;
  T* dscale;
};

// dK and dV of BN keys of one problem, and their share of dQ. EXTRA: the variant (exact_variant).
template <class T, int D, int BM, int BN, int MINB, bool VEC, int EXTRA>
__global__ void __launch_bounds__(kThreads, MINB)
    main_kernel(AttentionArgs a, AttentionGradArgs ga, const T* dr, const int* row_len, const int* tile_kmax,
                DqShared sh, RelativeScratch<T> rel) {
  constexpr int VN = 16 / int(sizeof(T)), LDD = D + VN, LDS = BN + VN, LDT = BM + VN, RK = BN / 16, RQ = BM / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Ks = reinterpret_cast<T*>(smem_raw);  // [BN][LDD]
  T* Vs = Ks + BN * LDD;                   // [BN][LDD]
  T* Qs = Vs + BN * LDD;                   // [BM][LDD]
  T* Gs = Qs + BM * LDD;                   // [BM][LDD]: dO
  T* Ps = Gs + BM * LDD;                   // [BM][LDS]: P by query row
  T* St = Ps + BM * LDS;                   // [BN][LDT]: dS by key
  __shared__ T lse_s[BM], dr_s[BM];
  __shared__ int len_s[BM], ticket_s;
  // A relative bias: the query tile's factors (the row scale; 1 without one, and for a row that
  // sees no key, whose factor may be anything), and the band of terms the tile pair reads,
  // key - row from j0 - (i0 + BM - 1) up (log2 units, without the factors).
  constexpr bool REL = EXTRA == kRelative;
  __shared__ T fac_s[REL ? BM : 1], band_s[REL ? BM + BN - 1 : 1];

  // Tiles in key-tile-major order: every problem's key tile 0, then key tile 1, ...
  if (threadIdx.x == 0) ticket_s = atomicAdd(sh.ticket, 1);
  __syncthreads();
  const int64_t problems = a.batch0 * a.batch1;
  const int64_t b = ticket_s % problems, b0 = b / a.batch1, b1 = b % a.batch1;
  const int jt = int(ticket_s / problems), j0 = jt * BN;
  const int qtiles = int((a.tq + BM - 1) / BM);
  // Keys no row sees are padding and may hold anything: they stay zeros here.
  int kmax_b = 0;
  for (int qt = 0; qt < qtiles; ++qt) kmax_b = max(kmax_b, tile_kmax[b * qtiles + qt]);
  const int nk = int(a.tk - j0 < BN ? a.tk - j0 : BN), nk_seen = min(nk, kmax_b - j0);
  const int d = int(a.d), dv = int(a.dv);
  const T* q = static_cast<const T*>(a.q) + b0 * a.q_bs0 + b1 * a.q_bs1;
  const T* g = static_cast<const T*>(ga.g) + b0 * a.o_bs0 + b1 * a.o_bs1;
  const T* k = static_cast<const T*>(a.k) + b0 * a.k_bs0 + b1 * a.k_bs1 + int64_t(j0) * a.k_rs;
  const T* v = static_cast<const T*>(a.v) + b0 * a.v_bs0 + b1 * a.v_bs1 + int64_t(j0) * a.v_rs;
  load_tile<T, D, LDD, VEC>(Ks, k, a.k_rs, BN, nk_seen, d);
  load_tile<T, D, LDD, VEC>(Vs, v, a.v_rs, BN, nk_seen, dv);
  cp_async_commit();

  T dk[RK][D / 8], dvv[RK][D / 8];
#pragma unroll
  for (int i = 0; i < RK; ++i)
#pragma unroll
    for (int c = 0; c < D / 8; ++c) dk[i][c] = dvv[i][c] = 0;
  const T sl2 = T(a.scale * 1.4426950408889634);
  const int ta = threadIdx.x / 8, tb = threadIdx.x % 8;
  const BiasRows<T, T> bias(a, b, EXTRA != kPlain);
  const DropMask<T> drop(a, b0, b1, EXTRA == kExtras);
  // The bias's gradient: dS itself at each (row, key) bias element, or its sum over the rows
  // where the bias is one per key (this thread's key threadIdx.x, summed in row order).
  T* dbias = dbias_part<T>(a, ga, b, EXTRA == kExtras);
  T dbias_key = 0;
  // A relative bias's: this key tile's row of diagonal sums, and its shares of the row scale's.
  const int64_t ktiles = (a.tk + BN - 1) / BN;
  T* diag_row = REL && rel.diag ? rel.diag + (b * ktiles + jt) * (a.tq + BN - 1) : nullptr;
  T* dscale = REL && rel.dscale ? rel.dscale + (b * ktiles + jt) * a.tq : nullptr;

  for (int qt = 0; qt < qtiles; ++qt) {
    const int kmax = tile_kmax[b * qtiles + qt];
    if (kmax <= j0) continue;  // no row of the tile sees these keys
    const bool last = kmax <= j0 + BN;  // the tile's last key tile: it writes dQ
    const int64_t i0 = int64_t(qt) * BM;
    const int nq = int(a.tq - i0 < BM ? a.tq - i0 : BM);
    __syncthreads();  // the previous tile's Qs, Gs, Ps, St are consumed
    load_tile<T, D, LDD, VEC>(Qs, q + i0 * a.q_rs, a.q_rs, BM, nq, d);
    load_tile<T, D, LDD, VEC>(Gs, g + i0 * a.o_rs, a.o_rs, BM, nq, dv);
    cp_async_commit();
    load_rows<T, BM>(a, b, i0, dr, row_len, lse_s, dr_s, len_s);
    if constexpr (REL) {
      stage_band(band_s, bias, a, int64_t(j0) - (i0 + BM - 1), BM + BN - 1);
      for (int i = threadIdx.x; i < BM; i += kThreads)
        fac_s[i] = i < nq && bias.scale && row_len[b * a.tq + i0 + i] > 0 ? bias.factor(i0 + i) : T(1);
    }
    cp_async_wait_all();
    // Rows without keys (each thread checks the row it loaded): their q rows become zeros (they
    // may hold NaN).
    static_assert(BM <= kThreads, "a thread per row");
    const bool any_idle = __syncthreads_or(int(threadIdx.x) < nq && len_s[threadIdx.x] == 0);
    if (any_idle) {
      for (int i = threadIdx.x; i < nq * D; i += kThreads)
        if (len_s[i / D] == 0) Qs[(i / D) * LDD + i % D] = T(0);
      __syncthreads();
    }

    // Selects, never 0 * x: padded keys may hold anything, NaN included.
    T p[RK][BM / 8];
    score_tile<T, D, BN, BM, LDD>(Ks, Qs, p);  // keys ta + 16 i, rows tb + 8 e
#pragma unroll
    for (int i = 0; i < RK; ++i)
#pragma unroll
      for (int e = 0; e < BM / 8; ++e) {
        const int row = tb + 8 * e, key = j0 + ta + 16 * i;
        p[i][e] = key < len_s[row] ? exp2_(p[i][e] * sl2 +
                                           (REL ? band_s[ta + 16 * i - row + BM - 1] * fac_s[row] : bias(i0 + row, key)) -
                                           lse_s[row])
                                   : T(0);
      }
    T dp[RK][BM / 8];
    score_tile<T, D, BN, BM, LDD>(Vs, Gs, dp);
#pragma unroll
    for (int i = 0; i < RK; ++i)
#pragma unroll
      for (int e = 0; e < BM / 8; ++e) {
        const int row = tb + 8 * e, key = ta + 16 * i;
        // With dropout the output took the dropped weights: dV from them, dP through the mask.
        T pd = p[i][e], dpd = dp[i][e];
        if (drop.on && pd != T(0)) {
          const bool kept = drop.keep(i0 + row, j0 + key);
          pd = kept ? pd * drop.scale : T(0);
          dpd = kept ? dpd * drop.scale : T(0);
        }
        Ps[row * LDS + key] = pd;
        St[key * LDT + row] = j0 + key < len_s[row] ? p[i][e] * (dpd - dr_s[row]) : T(0);
      }
    __syncthreads();
    if (dbias) {
      if (a.bias_rs != 0) {
        // A thread per key (consecutive threads, consecutive keys: contiguous bias rows), the
        // rows split over the kThreads / BN threads of each key.
        static_assert(kThreads % BN == 0, "threads per key");
        const int key = threadIdx.x % BN;
        if (key < nk) {
          T* col = dbias + (i0 + threadIdx.x / BN) * a.bias_rs + int64_t(j0 + key) * a.bias_cs;
          for (int row = threadIdx.x / BN; row < nq; row += kThreads / BN, col += (kThreads / BN) * a.bias_rs)
            *col += St[key * LDT + row];
        }
      } else if (int(threadIdx.x) < nk) {
        for (int row = 0; row < nq; ++row) dbias_key += St[threadIdx.x * LDT + row];
      }
    }
    if constexpr (REL) {
      if (diag_row) add_diagonals<T, BN, BM, LDT, true>(St, fac_s, diag_row, i0, a.tq);  // d table = f dS
      if (dscale)  // row r's share: sum over the tile's keys, in order, of dS times the term
        for (int r = threadIdx.x; r < nq; r += kThreads) {
          T x = 0;
#pragma unroll 8
          for (int key = 0; key < BN; ++key) x = fma(St[key * LDT + r], band_s[key - r + BM - 1], x);
          dscale[i0 + r] = x * T(0.6931471805599453);  // the band is in log2 units
        }
    }
    // Keys t / 8 * RK + i of the accumulators: P^T dO and dS^T Q.
    accumulate<T, D, RK, LDS, LDD>(Ps, Gs, nq, dvv);
    accumulate<T, D, RK, LDT, LDD, true>(St, Qs, nq, dk);
    if (!ga.dq) continue;
    T dq[RQ][D / 8];
#pragma unroll
    for (int i = 0; i < RQ; ++i)
#pragma unroll
      for (int c = 0; c < D / 8; ++c) dq[i][c] = 0;
    accumulate<T, D, RQ, LDT, LDD>(St, Ks, nk, dq);  // rows t / 8 * RQ + i: dS K

    // Add this share in key-tile order: wait for the key tiles before this one.
    int* added = sh.added + b * qtiles + qt;
    if (threadIdx.x == 0)
      while (atomicAdd(added, 0) != jt) {
      }
    __syncthreads();
    // The running sum lives in dQ itself (the element type: no rounding between shares).
    constexpr int VQ = 16 / int(sizeof(T)), CV = D / (8 * VQ);
    const int tr = threadIdx.x / 8, tc = threadIdx.x % 8;
    T* out = static_cast<T*>(ga.dq) + b0 * ga.dq_bs0 + b1 * ga.dq_bs1 + i0 * ga.dq_rs;
#pragma unroll
    for (int i = 0; i < RQ; ++i) {
      const int r = tr * RQ + i;
      if (r >= nq) continue;
#pragma unroll
      for (int gi = 0; gi < CV; ++gi) {
        const int col0 = tc * VQ + 8 * VQ * gi;
        T* slot = out + r * ga.dq_rs + col0;
        T x[VQ];
#pragma unroll
        for (int c = 0; c < VQ; ++c) x[c] = dq[i][gi * VQ + c];
        if (col0 + VQ <= d && reinterpret_cast<uintptr_t>(slot) % 16 == 0) {  // a 16-byte vector
          using V = typename Vec<T>::type;
          if (jt > 0) {  // through L2: written by another block
            const V prev = __ldcg(reinterpret_cast<const V*>(slot));
            const T* pv = reinterpret_cast<const T*>(&prev);
#pragma unroll
            for (int c = 0; c < VQ; ++c) x[c] += pv[c];
          }
#pragma unroll
          for (int c = 0; c < VQ; ++c) x[c] = last ? x[c] * T(a.scale) : x[c];
          __stcg(reinterpret_cast<V*>(slot), *reinterpret_cast<const V*>(x));
          continue;
        }
#pragma unroll
        for (int c = 0; c < VQ; ++c) {
          if (col0 + c >= d) continue;
          if (jt > 0) x[c] += __ldcg(slot + c);
          __stcg(slot + c, last ? x[c] * T(a.scale) : x[c]);
        }
      }
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) atomicExch(added, jt + 1);
  }
  static_assert(BN <= kThreads, "a thread per key");
  if (dbias && a.bias_rs == 0 && int(threadIdx.x) < nk) dbias[int64_t(j0 + threadIdx.x) * a.bias_cs] += dbias_key;
  if (ga.dk) {
    T* out = static_cast<T*>(ga.dk) + b0 * ga.dk_bs0 + b1 * ga.dk_bs1 + int64_t(j0) * ga.dk_rs;
    store_rows<T, D, RK>(out, ga.dk_rs, nk, d, T(a.scale), dk);
  }
  if (ga.dv) {
    T* out = static_cast<T*>(ga.dv) + b0 * ga.dv_bs0 + b1 * ga.dv_bs1 + int64_t(j0) * ga.dv_rs;
    store_rows<T, D, RK>(out, ga.dv_rs, nk, dv, T(1), dvv);
  }
}

template <class K>
void set_smem(K kernel, size_t smem) {
  const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (attr != cudaSuccess) {
    cudaGetLastError();
    throw Error(std::string("dot_attention backward: cudaFuncSetAttribute failed: ") + cudaGetErrorString(attr));
  }
}

template <class T, int D, int BM, int BN, int MINB, bool VEC, int EXTRA>
void launch(const AttentionArgs& a, const AttentionGradArgs& ga, cudaStream_t s) {
  static_assert(BM % 16 == 0 && BN % 16 == 0 && D % (8 * (16 / sizeof(T))) == 0, "tile shape");
  constexpr int VN = 16 / int(sizeof(T));
  const int64_t problems = a.batch0 * a.batch1, qtiles = (a.tq + BM - 1) / BM, ktiles = (a.tk + BN - 1) / BN;
  if (qtiles > 65535 || problems * ktiles > 0x7fffffff)
    throw Error("dot_attention backward: " + std::to_string(a.tq) + " queries or " + std::to_string(a.tk) +
                " keys per problem are too many for cuda");
  // Scratch: Dr [problems, tq], a relative bias's (RelativeScratch), tile lengths and counters.
  // The float parts start at multiples of 256 bytes.
  auto padded = [](size_t n) { return (n + 255) / 256 * 256; };
  const bool diagonals = EXTRA == kRelative && ga.dbias, scaled = EXTRA == kRelative && ga.drow_scale && a.row_scale;
  const size_t dr_bytes = padded(size_t(problems * a.tq) * sizeof(T));
  const size_t diag_bytes = diagonals ? padded(size_t(problems * ktiles * (a.tq + BN - 1)) * sizeof(T)) : 0;
  const size_t dscale_bytes = scaled ? padded(size_t(problems * ktiles * a.tq) * sizeof(T)) : 0;
  const size_t count_bytes = size_t(1 + problems * qtiles) * sizeof(int);
  const size_t len_bytes = size_t(problems * a.tq) * sizeof(int);
  const size_t bytes = dr_bytes + diag_bytes + dscale_bytes + 2 * count_bytes + len_bytes;
  unsigned char* scratch = nullptr;
  if (cudaMallocAsync(reinterpret_cast<void**>(&scratch), bytes, s) != cudaSuccess) {
    cudaGetLastError();
    throw Error("dot_attention backward: out of device memory for its scratch (" + std::to_string(bytes) + " bytes)");
  }
  T* dr = reinterpret_cast<T*>(scratch);
  const RelativeScratch<T> rel{diagonals ? reinterpret_cast<T*>(scratch + dr_bytes) : nullptr,
                               scaled ? reinterpret_cast<T*>(scratch + dr_bytes + diag_bytes) : nullptr};
  int* tile_kmax = reinterpret_cast<int*>(scratch + dr_bytes + diag_bytes + dscale_bytes);
  int* counters = tile_kmax + 1 + problems * qtiles;  // the ticket, then one count per (problem, query tile)
  int* row_len = counters + 1 + problems * qtiles;
  cudaMemsetAsync(counters, 0, count_bytes, s);
  if (diagonals) cudaMemsetAsync(rel.diag, 0, diag_bytes, s);
  rows_kernel<T, T, BM><<<dim3(unsigned(problems), unsigned(qtiles)), kThreads, 0, s>>>(
      a, static_cast<const T*>(ga.g), dr, row_len, tile_kmax, nullptr, static_cast<T*>(ga.dq), ga.dq_bs0, ga.dq_bs1,
      ga.dq_rs);
  check_launch("dot_attention backward (rows)");
  constexpr size_t smem = sizeof(T) * size_t((2 * BN + 2 * BM) * (D + VN) + BM * (BN + VN) + BN * (BM + VN));
  set_smem(main_kernel<T, D, BM, BN, MINB, VEC, EXTRA>, smem);
  main_kernel<T, D, BM, BN, MINB, VEC, EXTRA><<<unsigned(problems * ktiles), kThreads, smem, s>>>(
      a, ga, dr, row_len, tile_kmax, DqShared{counters, counters + 1}, rel);
  check_launch("dot_attention backward");
  if (diagonals) launch_relative_dbias(a, ga, static_cast<const T*>(rel.diag), ktiles, BN, s);
  if (scaled) launch_row_scale_grad(a, ga, static_cast<const T*>(rel.dscale), ktiles, tile_kmax, BM, BN, s);
  cudaFreeAsync(scratch, s);
}

template <class T, int D, int BM, int BN, int MINB, bool VEC>
void launch_variant(const AttentionArgs& a, const AttentionGradArgs& ga, cudaStream_t s) {
  switch (exact_variant(a)) {
    case kPlain: return launch<T, D, BM, BN, MINB, VEC, kPlain>(a, ga, s);
    case kExtras: return launch<T, D, BM, BN, MINB, VEC, kExtras>(a, ga, s);
    default: return launch<T, D, BM, BN, MINB, VEC, kRelative>(a, ga, s);
  }
}

template <class T, int D, int BM, int BN, int MINB>
void launch_vec(const AttentionArgs& a, const AttentionGradArgs& ga, cudaStream_t s) {
  constexpr int64_t VN = 16 / int64_t(sizeof(T));
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vec = a.d % VN == 0 && a.dv % VN == 0 && aligned(a.q) && aligned(a.k) && aligned(a.v) &&
                   aligned(ga.g) && a.q_bs0 % VN == 0 && a.q_bs1 % VN == 0 && a.q_rs % VN == 0 &&
                   a.k_bs0 % VN == 0 && a.k_bs1 % VN == 0 && a.k_rs % VN == 0 && a.v_bs0 % VN == 0 &&
                   a.v_bs1 % VN == 0 && a.v_rs % VN == 0 && a.o_bs0 % VN == 0 && a.o_bs1 % VN == 0 &&
                   a.o_rs % VN == 0;
  vec ? launch_variant<T, D, BM, BN, MINB, true>(a, ga, s) : launch_variant<T, D, BM, BN, MINB, false>(a, ga, s);
}

}  // namespace

bool launch_attention_backward(DType dt, const AttentionArgs& a, const AttentionGradArgs& ga, cudaStream_t s) {
  const int64_t width = a.d > a.dv ? a.d : a.dv;
  const bool half = dt == DType::bf16 || dt == DType::f16;
  if (width > 256 || (dt != DType::f32 && dt != DType::f64 && !half) || !a.lse) return false;
  if (a.batch0 * a.batch1 > 0x7fffffff) return false;
  if (a.tq == 0 || a.tk == 0 || a.d == 0 || a.dv == 0) return false;  // nothing to recompute: the caller's zeros
  if (a.batch0 * a.batch1 == 0 || (!ga.dq && !ga.dk && !ga.dv && !ga.dbias && !ga.drow_scale)) return true;
  if (half) return launch_attention_mma(dt, a, &ga, s);
  if (exact_variant(a) < 0) return false;
  if (dt == DType::f32) {
    if (width <= 64) launch_vec<float, 64, 64, 64, 2>(a, ga, s);
    else if (width <= 128) launch_vec<float, 128, 64, 32, 1>(a, ga, s);
    else launch_vec<float, 256, 32, 32, 1>(a, ga, s);
  } else {
    if (width <= 64) launch_vec<double, 64, 32, 32, 1>(a, ga, s);
    else if (width <= 128) launch_vec<double, 128, 32, 32, 1>(a, ga, s);
    else launch_vec<double, 256, 16, 16, 1>(a, ga, s);
  }
  return true;
}

}  // namespace dimx::gpu

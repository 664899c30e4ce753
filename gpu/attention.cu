// Fused scaled dot-product attention (flash-attention style). One block of 128 threads owns
// BM queries of one problem and walks the keys they can see in tiles of BN: energies of a
// tile in registers, an online softmax (running max and sum per query row), the weights
// through shared memory into the output accumulators. Nothing of size tq x tk touches
// device memory. Plain FMA in the element type (exact fp32 / fp64, no tensor cores).
//
// Threads form row groups (ty) of TX lanes (tx, 8 or 16): thread (ty, tx) holds energies of
// rows ty * RM + i and keys tx + TX e of the tile, and the output of the same rows at columns
// tx * VN + TX VN g + c. A row group lies within one warp, so row maxima and sums are
// shuffles. K and V tiles arrive by cp.async, each while the other half of the
// iteration computes; causal and padded blocks stop at the last key any of their rows sees.
// An additive bias (AttentionArgs::bias) is read where an energy is formed; for a relative
// bias, the band of BM + BN - 1 terms a tile pair reads is staged in shared memory first, and
// an energy takes its term from there times its row's scale. Dropout drops weights (Philox by
// element index) after the row sums have taken them.
#include <cuda_runtime.h>

#include <cmath>

#include "attention_tiles.cuh"
#include "common.cuh"

namespace dimx::gpu {

namespace {

using namespace attention_tiles;

// o[i][:] += sum_{j < n} Ps[j][row i] * Vs[j][the thread's columns]; U: unroll factor.
template <class T, int D, int BM, int BN, int TX, int U>
__device__ __forceinline__ void pv_tile(const T* Ps, const T* Vs, T (&o)[BM * TX / kThreads][D / TX], int tx, int ty,
                                        int n) {
  constexpr int VN = 16 / int(sizeof(T));
  constexpr int RM = BM * TX / kThreads, OG = D / (TX * VN), LDD = D + VN, LDP = BM + VN;
  using V = typename Vec<T>::type;
#pragma unroll U
  for (int j = 0; j < n; ++j) {
    T p[RM];
#pragma unroll
    for (int i = 0; i < RM; i += VN) *reinterpret_cast<V*>(p + i) = *reinterpret_cast<const V*>(Ps + j * LDP + ty * RM + i);
#pragma unroll
    for (int g = 0; g < OG; ++g) {
      const V vv = *reinterpret_cast<const V*>(Vs + j * LDD + tx * VN + TX * VN * g);
#pragma unroll
      for (int i = 0; i < RM; ++i) {
        if constexpr (VN == 4) {
          o[i][g * 4 + 0] = fma(p[i], vv.x, o[i][g * 4 + 0]);
          o[i][g * 4 + 1] = fma(p[i], vv.y, o[i][g * 4 + 1]);
          o[i][g * 4 + 2] = fma(p[i], vv.z, o[i][g * 4 + 2]);
          o[i][g * 4 + 3] = fma(p[i], vv.w, o[i][g * 4 + 3]);
        } else {
          o[i][g * 2 + 0] = fma(p[i], vv.x, o[i][g * 2 + 0]);
          o[i][g * 2 + 1] = fma(p[i], vv.y, o[i][g * 2 + 1]);
        }
      }
    }
  }
}

// EXTRA: the variant (exact_variant).
template <class T, int D, int BM, int BN, int TX, int MINB, bool VEC, int EXTRA>
__global__ void __launch_bounds__(kThreads, MINB) attention_kernel(AttentionArgs a) {
  constexpr int VN = 16 / int(sizeof(T));  // elements per 16-byte vector
  constexpr int RM = BM * TX / kThreads, CN = BN / TX, OG = D / (TX * VN);
  constexpr int LDD = D + VN, LDP = BM + VN;
  static_assert(RM % VN == 0 && OG >= 1 && BN % TX == 0 && (BM * TX) % kThreads == 0, "tile shape");
  using V = typename Vec<T>::type;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);  // [BM][LDD]
  T* Ks = Qs + BM * LDD;                   // [BN][LDD]
  T* Vs = Ks + BN * LDD;                   // [BN][LDD]
  T* Ps = Vs + BN * LDD;                   // [BN][LDP]: the weights, transposed
  __shared__ int kmax_s;
  // A relative bias: the rows' factors (the row scale, 1 without one), and the band of terms
  // the key tile's (row, key) pairs read, key - row from j0 - (i0 + BM - 1) up (log2 units,
  // without the factors). One band: every thread is past the previous tile's reads when the
  // next is staged (the barrier before its P V product).
  constexpr bool REL = EXTRA == kRelative;
  __shared__ T fac_s[REL ? BM : 1], band_s[REL ? BM + BN - 1 : 1];

  const int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
  const int64_t b = blockIdx.x, b0 = b / a.batch1, b1 = b % a.batch1;
  // Last query blocks first: under causality they are the longest.
  const int64_t i0 = int64_t(gridDim.y - 1 - blockIdx.y) * BM;
  const T* q = static_cast<const T*>(a.q) + b0 * a.q_bs0 + b1 * a.q_bs1 + i0 * a.q_rs;
  const T* k = static_cast<const T*>(a.k) + b0 * a.k_bs0 + b1 * a.k_bs1;
  const T* v = static_cast<const T*>(a.v) + b0 * a.v_bs0 + b1 * a.v_bs1;

  if (tid == 0) kmax_s = 0;
  __syncthreads();
  int len[RM];
  int mine = 0;
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int64_t r = i0 + ty * RM + i;
    int64_t l = 0;
    if (r < a.tq) {
      l = a.key_lengths ? a.key_lengths[b * a.tq + r] : a.tk;
      l = l < 0 ? 0 : (l > a.tk ? a.tk : l);
    }
    len[i] = int(l);
    mine = len[i] > mine ? len[i] : mine;
  }
  if (tx == 0 && mine > 0) atomicMax(&kmax_s, mine);
  __syncthreads();
  const int kmax = kmax_s;
  const int d = int(a.d), dv = int(a.dv);

  load_tile<T, D, LDD, VEC>(Qs, q, a.q_rs, BM, int(a.tq - i0 < BM ? a.tq - i0 : BM), d);
  if (kmax > 0) load_tile<T, D, LDD, VEC>(Ks, k, a.k_rs, BN, kmax < BN ? kmax : BN, d);
  cp_async_commit();
  if (kmax > 0) load_tile<T, D, LDD, VEC>(Vs, v, a.v_rs, BN, kmax < BN ? kmax : BN, dv);
  cp_async_commit();

  T o[RM][D / TX];
  T m[RM], l[RM];
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    m[i] = -INFINITY;
    l[i] = 0;
#pragma unroll
    for (int c = 0; c < OG * VN; ++c) o[i][c] = 0;
  }
  const T sl2 = T(a.scale * 1.4426950408889634);  // energies in log2 units: exp2 below
  const BiasRows<T, T> bias(a, b, EXTRA != kPlain);
  const DropMask<T> drop(a, b0, b1, EXTRA == kExtras);
  if constexpr (REL)
    for (int i = tid; i < BM; i += kThreads) fac_s[i] = i0 + i < a.tq ? bias.factor(i0 + i) : T(1);

  for (int j0 = 0; j0 < kmax; j0 += BN) {
    if constexpr (REL) stage_band(band_s, bias, a, int64_t(j0) - (i0 + BM - 1), BM + BN - 1);
    cp_async_wait1();  // Q and this K tile are in (this V tile may not be)
    __syncthreads();
    T s[RM][CN];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int e = 0; e < CN; ++e) s[i][e] = 0;
#pragma unroll 4
    for (int c = 0; c < D; c += VN) {
      V kv[CN];
#pragma unroll
      for (int e = 0; e < CN; ++e) kv[e] = *reinterpret_cast<const V*>(Ks + (tx + TX * e) * LDD + c);
#pragma unroll
      for (int i = 0; i < RM; ++i) {
        const V qv = *reinterpret_cast<const V*>(Qs + (ty * RM + i) * LDD + c);
#pragma unroll
        for (int e = 0; e < CN; ++e) {
          if constexpr (VN == 4) {
            s[i][e] = fma(qv.x, kv[e].x, s[i][e]);
            s[i][e] = fma(qv.y, kv[e].y, s[i][e]);
            s[i][e] = fma(qv.z, kv[e].z, s[i][e]);
            s[i][e] = fma(qv.w, kv[e].w, s[i][e]);
          } else {
            s[i][e] = fma(qv.x, kv[e].x, s[i][e]);
            s[i][e] = fma(qv.y, kv[e].y, s[i][e]);
          }
        }
      }
    }
    __syncthreads();  // every thread is done with Ks
    const int next = j0 + BN;
    if (next < kmax)
      load_tile<T, D, LDD, VEC>(Ks, k + int64_t(next) * a.k_rs, a.k_rs, BN, kmax - next < BN ? kmax - next : BN, d);
    cp_async_commit();

    // Online softmax over this tile; the weights go to Ps transposed ([key][row]).
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      T mx = -INFINITY;
      const T* brow = bias.base ? bias.row(i0 + ty * RM + i) : nullptr;
#pragma unroll
      for (int e = 0; e < CN; ++e) {
        const int key = j0 + tx + TX * e;
        if constexpr (REL)  // band index: key - row from the band's start, in the tile pair
          s[i][e] = key < len[i] ? s[i][e] * sl2 + band_s[tx + TX * e - ty * RM - i + BM - 1] * fac_s[ty * RM + i]
                                 : T(-INFINITY);
        else
          s[i][e] = key < len[i] ? s[i][e] * sl2 + (brow ? bias.at(brow, key) : T(0)) : T(-INFINITY);
        mx = s[i][e] > mx ? s[i][e] : mx;
      }
#pragma unroll
      for (int off = TX / 2; off > 0; off >>= 1) {
        const T other = __shfl_xor_sync(0xffffffffu, mx, off);
        mx = other > mx ? other : mx;
      }
      const T mnew = m[i] > mx ? m[i] : mx;
      const T base = mnew == T(-INFINITY) ? T(0) : mnew;  // no visible key yet: all weights 0
      const T alpha = exp2_(m[i] - base);
      m[i] = mnew;
      T sum = 0;
#pragma unroll
      for (int e = 0; e < CN; ++e) {
        const T p = exp2_(s[i][e] - base);
        sum += p;  // the softmax's sum: before dropout
        Ps[(tx + TX * e) * LDP + ty * RM + i] =
            drop.on && p != T(0) ? (drop.keep(i0 + ty * RM + i, j0 + tx + TX * e) ? p * drop.scale : T(0)) : p;
      }
      l[i] = l[i] * alpha + sum;  // per-thread partial sum; the row's total is summed at the end
#pragma unroll
      for (int c = 0; c < OG * VN; ++c) o[i][c] *= alpha;
    }
    cp_async_wait1();  // this V tile is in (the next K tile may not be)
    __syncthreads();   // Ps and Vs are complete
    const int jn = kmax - j0 < BN ? kmax - j0 : BN;
    if (jn == BN) pv_tile<T, D, BM, BN, TX, 8>(Ps, Vs, o, tx, ty, BN);
    else pv_tile<T, D, BM, BN, TX, 4>(Ps, Vs, o, tx, ty, jn);
    __syncthreads();  // every thread is done with Vs and Ps
    if (next < kmax)
      load_tile<T, D, LDD, VEC>(Vs, v + int64_t(next) * a.v_rs, a.v_rs, BN, kmax - next < BN ? kmax - next : BN, dv);
    cp_async_commit();
  }

  T* out = static_cast<T*>(a.out) + b0 * a.o_bs0 + b1 * a.o_bs1;
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    T sum = l[i];
#pragma unroll
    for (int off = TX / 2; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    const int64_t r = i0 + ty * RM + i;
    if (r >= a.tq) continue;
    // The row's log2-sum-exp2 of the scaled energies, for the backward (+inf: no visible key).
    if (a.lse && tx == 0) static_cast<T*>(a.lse)[b * a.tq + r] = sum > T(0) ? m[i] + log2_(sum) : T(INFINITY);
    const T inv = sum > T(0) ? T(1) / sum : T(0);
    T* row = out + r * a.o_rs;
#pragma unroll
    for (int g = 0; g < OG; ++g)
#pragma unroll
      for (int c = 0; c < VN; ++c) {
        const int col = tx * VN + TX * VN * g + c;
        if (col < dv) row[col] = o[i][g * VN + c] * inv;
      }
  }
}

template <class T, int D, int BM, int BN, int TX, int MINB, bool VEC, int EXTRA>
void launch(const AttentionArgs& a, cudaStream_t s) {
  constexpr int VN = 16 / int(sizeof(T));
  constexpr size_t smem = sizeof(T) * size_t(BM * (D + VN) + 2 * BN * (D + VN) + BN * (BM + VN));
  const cudaError_t attr = cudaFuncSetAttribute(attention_kernel<T, D, BM, BN, TX, MINB, VEC, EXTRA>,
                                                cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (attr != cudaSuccess) {
    cudaGetLastError();
    throw Error(std::string("dot_attention: cudaFuncSetAttribute failed: ") + cudaGetErrorString(attr));
  }
  const int64_t qblocks = (a.tq + BM - 1) / BM;
  if (qblocks > 65535) throw Error("dot_attention: " + std::to_string(a.tq) + " queries per problem is too many for cuda");
  const dim3 grid(unsigned(a.batch0 * a.batch1), unsigned(qblocks));
  attention_kernel<T, D, BM, BN, TX, MINB, VEC, EXTRA><<<grid, kThreads, smem, s>>>(a);
  check_launch("dot_attention");
}

template <class T, int D, int BM, int BN, int TX, int MINB, bool VEC>
void launch_variant(const AttentionArgs& a, cudaStream_t s) {
  switch (exact_variant(a)) {
    case kPlain: return launch<T, D, BM, BN, TX, MINB, VEC, kPlain>(a, s);
    case kExtras: return launch<T, D, BM, BN, TX, MINB, VEC, kExtras>(a, s);
    default: return launch<T, D, BM, BN, TX, MINB, VEC, kRelative>(a, s);
  }
}

template <class T, int D, int BM, int BN, int TX, int MINB>
void launch_vec(const AttentionArgs& a, cudaStream_t s) {
  constexpr int64_t VN = 16 / int64_t(sizeof(T));
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vec = a.d % VN == 0 && a.dv % VN == 0 && aligned(a.q) && aligned(a.k) && aligned(a.v) &&
                   a.q_bs0 % VN == 0 && a.q_bs1 % VN == 0 && a.q_rs % VN == 0 && a.k_bs0 % VN == 0 &&
                   a.k_bs1 % VN == 0 && a.k_rs % VN == 0 && a.v_bs0 % VN == 0 && a.v_bs1 % VN == 0 &&
                   a.v_rs % VN == 0;
  vec ? launch_variant<T, D, BM, BN, TX, MINB, true>(a, s) : launch_variant<T, D, BM, BN, TX, MINB, false>(a, s);
}

}  // namespace

bool launch_attention(DType dt, const AttentionArgs& a, cudaStream_t s) {
  const int64_t width = a.d > a.dv ? a.d : a.dv;
  if (width > 256 || (dt != DType::f32 && dt != DType::f64 && dt != DType::bf16 && dt != DType::f16)) return false;
  if (a.batch0 * a.batch1 == 0 || a.tq == 0 || a.dv == 0) return true;
  if (dt == DType::bf16 || dt == DType::f16) return launch_attention_mma(dt, a, nullptr, s);
  if (a.batch0 * a.batch1 > 0x7fffffff || exact_variant(a) < 0) return false;
  if (dt == DType::f32) {
    // Up to 64: 128 queries per block in 8-lane row groups (8 x 8 energies per thread), which
    // halves the shared-memory traffic per FMA against 16-lane groups (measured 0.71-0.77 vs
    // 0.76-0.80 ms on bench_attention's dot_attention case, H100).
    if (width <= 64) launch_vec<float, 64, 128, 64, 8, 2>(a, s);
    else if (width <= 128) launch_vec<float, 128, 64, 32, 16, 2>(a, s);
    else launch_vec<float, 256, 32, 32, 16, 1>(a, s);
  } else {
    if (width <= 64) launch_vec<double, 64, 32, 64, 16, 1>(a, s);
    else if (width <= 128) launch_vec<double, 128, 32, 32, 16, 1>(a, s);
    else launch_vec<double, 256, 32, 16, 16, 1>(a, s);
  }
  return true;
}

}  // namespace dimx::gpu

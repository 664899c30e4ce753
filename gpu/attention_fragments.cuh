#pragma once
// The mma fragments the tensor-core attention kernels share (gpu/attention_mma.cu on
// mma.sync, gpu/attention_wgmma.cu on wgmma): element types and their operand steps, f32
// weights rounded into 16-bit or TF32 operand registers, 2^x on the special function unit,
// accumulator tiles turned into A operands, the dropout decisions of a thread's weights in
// either layout, and the once-per-device shared-memory limit of a kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <type_traits>

#include "attention_tiles.cuh"
#include "common.cuh"

namespace dimx::gpu::attention_fragments {

using attention_tiles::DropMask;

// An element type's mma step: kStep elements of k per instruction (32 bytes of an operand row:
// m16n8k16 for bf16/f16, m16n8k8 for TF32), kVec per 16 bytes (a shared tile row's padding).
// Counted in 32-bit words, the two instructions' fragments are laid out alike, and ldmatrix
// (untransposed) serves both.
template <class T>
constexpr int kStep = 32 / int(sizeof(T));
template <class T>
constexpr int kVec = 16 / int(sizeof(T));

// An f32 rounded to TF32 (10 mantissa bits, to nearest), as an mma operand register.
__device__ __forceinline__ uint32_t tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// Two floats rounded to the (16-bit) element type, packed as an mma operand register (first in the low half).
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}

template <class T>
__device__ __forceinline__ void store2(T* p, float lo, float hi) {
  if constexpr (std::is_same_v<T, float>) *reinterpret_cast<float2*>(p) = make_float2(lo, hi);
  else *reinterpret_cast<uint32_t*>(p) = pack2<T>(lo, hi);
}

// 2^x on the special function unit alone (denormal results flush to 0: a weight below 2^-126
// of its row's largest); exp2f adds a range fix-up around it.
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Accumulator tiles (16 x 8 each, NT of them along the columns) as A operands of the next
// product (one per k step), rounded to T. 16-bit: two tiles make a step (the accumulator layout
// of two adjacent tiles is the operand layout). TF32: one tile makes a step, its columns 2t and
// 2t + 1 in k slots t and t + 4 (weights_times_rows reads Y's rows in that order).
template <class T, int NT>
__device__ __forceinline__ void as_operand(uint32_t (&pf)[NT * 8 / kStep<T>][4], const float (&s)[NT][4]) {
  if constexpr (std::is_same_v<T, float>) {
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      pf[n][0] = tf32(s[n][0]);
      pf[n][1] = tf32(s[n][2]);
      pf[n][2] = tf32(s[n][1]);
      pf[n][3] = tf32(s[n][3]);
    }
  } else {
#pragma unroll
    for (int kk = 0; kk < NT / 2; ++kk) {
      pf[kk][0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
      pf[kk][1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
      pf[kk][2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pf[kk][3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
  }
}

// The dropout decisions of the four weights a thread holds of an 8-key column tile in the
// forward and dQ layout: rows row0 + 8 h, keys key0 + 2 t + c, element 2 h + c (key0 a
// multiple of 8). Where the mask comes in aligned groups of four keys, lanes t and t ^ 1 hold
// halves of the same group of both rows: each draws one row's block and hands the other lane
// its half. Every lane of the warp must call it (shuffles).
__device__ __forceinline__ void keep_by_rows(const DropMask<float>& drop, int64_t row0, int64_t key0, int t,
                                             bool (&kept)[4]) {
  if (drop.quads) {
    const int par = t & 1;
    uint32_t u[4];
    philox::block(drop.offset + drop.index(row0 + 8 * par, key0 + 4 * (t >> 1)) / 4, drop.seed, u);
    const uint32_t give0 = par ? u[0] : u[2], give1 = par ? u[1] : u[3];  // the words t ^ 1 needs
    const uint32_t got0 = __shfl_xor_sync(0xffffffffu, give0, 1), got1 = __shfl_xor_sync(0xffffffffu, give1, 1);
    const bool own0 = drop.kept_word(par ? u[2] : u[0]), own1 = drop.kept_word(par ? u[3] : u[1]);
    kept[0] = par ? drop.kept_word(got0) : own0;
    kept[1] = par ? drop.kept_word(got1) : own1;
    kept[2] = par ? own0 : drop.kept_word(got0);
    kept[3] = par ? own1 : drop.kept_word(got1);
    return;
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    philox::KeepStream keep = drop.stream();  // keys 2t and 2t + 1 mostly share a counter
#pragma unroll
    for (int c = 0; c < 2; ++c) kept[2 * h + c] = keep(drop.index(row0 + 8 * h, key0 + 2 * t + c));
  }
}

// The same in the dK/dV layout (transposed): rows row0 + c, keys key0 + k + 8 h, element
// 2 h + c, where k = g % 4 and key0 a multiple of 4. The lanes of one t and four consecutive g
// hold one aligned group of four keys for each (h, c): each draws one of the four blocks and
// they exchange words in four steps (lane k takes word k of every block).
__device__ __forceinline__ void keep_by_keys(const DropMask<float>& drop, int64_t row0, int64_t key0, int k,
                                             bool (&kept)[4]) {
  if (drop.quads) {
    uint32_t u[4];
    philox::block(drop.offset + drop.index(row0 + (k & 1), key0 + 8 * (k >> 1)) / 4, drop.seed, u);
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const int w = k ^ s;  // lane k ^ s wants word k ^ s of this lane's block
      const uint32_t out = w == 0 ? u[0] : w == 1 ? u[1] : w == 2 ? u[2] : u[3];
      const uint32_t in = s == 0 ? out : __shfl_xor_sync(0xffffffffu, out, s << 2);
      const bool x = drop.kept_word(in);  // word k of block k ^ s
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if ((k ^ s) == e) kept[e] = x;
    }
    return;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) kept[e] = drop.keep(row0 + (e & 1), key0 + k + 8 * (e >> 1));
}

// Raises Kernel's dynamic shared memory limit to smem (the most any of its launches takes),
// once per device: the first launch on each device pays for the attribute call.
template <auto Kernel>
void set_smem(size_t smem, const char* what) {
  static std::atomic<uint64_t> done{0};  // a bit per device ordinal below 64
  int dev = 0;
  cudaGetDevice(&dev);
  const uint64_t bit = dev >= 0 && dev < 64 ? uint64_t(1) << dev : 0;
  if (bit && (done.load(std::memory_order_acquire) & bit)) return;
  const cudaError_t attr = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (attr != cudaSuccess) {
    cudaGetLastError();
    throw Error(std::string(what) + ": cudaFuncSetAttribute failed: " + cudaGetErrorString(attr));
  }
  done.fetch_or(bit, std::memory_order_release);
}

}  // namespace dimx::gpu::attention_fragments

#pragma once
// Warpgroup matrix products (wgmma, sm_90a) for 16-bit operands with f32 accumulation: a
// warpgroup (4 consecutive warps, 128 threads) computes D (64 x N) += A (64 x 16) B (16 x N)
// per instruction, asynchronously. B always comes from shared memory, A from shared memory
// or registers (the mma.sync m16n8k16 A fragment of each warp's 16 rows); D's registers hold
// each warp's 16 rows in the m16n8 accumulator layout, 8 columns per 4 registers.
//
// Shared operands here are laid out without swizzle, as 8 x 8 core matrices (8 rows of 16
// bytes, 128 contiguous bytes): a tile of R rows x C elements (C a multiple of 8) keeps row r,
// elements 8c .. 8c + 7 at core matrix (r / 8) * (C / 8) + c, 16 bytes (r % 8) in. A K-major
// operand (its k along a row: A = rows x k, or B with rows = n) steps 128 bytes per 8 of k and
// C / 8 * 128 per 8 rows; an MN-major one (B with rows = k, n along a row) is read transposed
// with the same tile, stepping C / 8 * 128 bytes per 8 of k and 128 per 8 of n.
//
// Everything but the host-side check compiles to nothing outside sm_90a (the library also
// builds for other targets; callers test kWgmma before they launch).
#include <cstdint>

namespace dimx::gpu::wgmma {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DIMX_WGMMA 1
#endif

// The byte offset of element (r, col) in a core-matrix tile of C elements per row (16-bit).
template <int C>
__host__ __device__ constexpr int offset(int r, int col) {
  return (((r >> 3) * (C / 8) + (col >> 3)) << 7) + ((r & 7) << 4) + ((col & 7) << 1);
}

// A shared-memory descriptor: start address, leading byte offset (between core matrices along
// k), stride byte offset (between core matrices along m or n), no swizzle.
__device__ __forceinline__ uint64_t desc(const void* smem, uint32_t lbo, uint32_t sbo) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  return uint64_t((a >> 4) & 0x3fff) | (uint64_t((lbo >> 4) & 0x3fff) << 16) | (uint64_t((sbo >> 4) & 0x3fff) << 32);
}

__device__ __forceinline__ void fence() {
#ifdef DIMX_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void commit() {
#ifdef DIMX_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wait() {
#ifdef DIMX_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Shared memory written by ordinary stores or cp.async, made visible to the tensor cores (each
// writing thread, before the barrier that precedes the products).
__device__ __forceinline__ void fence_shared() {
#ifdef DIMX_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Keeps the compiler from moving accumulator registers across the asynchronous products.
template <int N>
__device__ __forceinline__ void pin(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

#define DIMX_WGMMA_D32                                                                                             \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
  "%24, %25, %26, %27, %28, %29, %30, %31}"
#define DIMX_WGMMA_OUT32(d)                                                                                          \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),      \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),        \
      "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),       \
      "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

// D (64 x 64, f32) = A B (accumulate: D += A B) for one k step of 16, A and B from shared memory
// (A K-major; B K-major, or MN-major where TB). BF: bfloat16 operands, else half.
template <bool BF, int TB>
__device__ __forceinline__ void mma_ss(float (&d)[32], uint64_t a, uint64_t b, bool accumulate) {
#ifdef DIMX_WGMMA
  if constexpr (BF)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " DIMX_WGMMA_D32 ", %32, %33, p, 1, 1, 0, %35;\n}\n"
                 : DIMX_WGMMA_OUT32(d)
                 : "l"(a), "l"(b), "r"(int(accumulate)), "n"(TB));
  else
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " DIMX_WGMMA_D32 ", %32, %33, p, 1, 1, 0, %35;\n}\n"
                 : DIMX_WGMMA_OUT32(d)
                 : "l"(a), "l"(b), "r"(int(accumulate)), "n"(TB));
#endif
}

// The same with A from registers (each warp's m16k16 fragment of its 16 rows).
template <bool BF, int TB>
__device__ __forceinline__ void mma_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t b, bool accumulate) {
#ifdef DIMX_WGMMA
  if constexpr (BF)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " DIMX_WGMMA_D32
                 ", {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
                 : DIMX_WGMMA_OUT32(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(int(accumulate)), "n"(TB));
  else
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " DIMX_WGMMA_D32
                 ", {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
                 : DIMX_WGMMA_OUT32(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(int(accumulate)), "n"(TB));
#endif
}

#undef DIMX_WGMMA_D32
#undef DIMX_WGMMA_OUT32

}  // namespace dimx::gpu::wgmma

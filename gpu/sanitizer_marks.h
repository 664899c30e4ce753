#pragma once
// Marks for compute-sanitizer's initcheck: the bytes a library kernel wrote where the tool does
// not see the stores itself. cuBLAS's and cuBLASLt's bf16/f16 GEMMs on Hopper are such kernels:
// a bf16 GEMM followed by an elementwise read of its output is reported as a read of
// uninitialized memory at every element (an f32 GEMM is not), and marking the output as
// initialized clears every report (scripts/device-check's sanitize mode checks this on the whole
// GPU suite). The marks go through NVTX's memory extension, and only when an NVTX tool was
// injected into the process (NVTX_INJECTION64_PATH, which compute-sanitizer sets); otherwise a
// mark costs one branch.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace dimx::gpu {

// The `batch` x `rows` x `cols` elements of `es` bytes at `base`, rows `ld` elements apart and
// batch entries `stride` elements apart, as written by work queued on `s`.
void mark_initialized(cudaStream_t s, void* base, int64_t batch, int64_t rows, int64_t cols, int64_t ld,
                      int64_t stride, size_t es);

}  // namespace dimx::gpu

#pragma once
// The tensor-core attention kernels on wgmma (gpu/attention_wgmma.cu). Each sets a.on_wgmma
// (where given) when it ran.
#include <cuda_runtime.h>

#include <dimx/dtype.h>
#include "launch.h"

namespace dimx::gpu {

// Whether the library holds the sm_90a kernels (its CUDA targets include compute capability 9.0).
bool attention_wgmma_built();

// The forward on wgmma, for bf16 and f16 with head sizes up to 64, no bias and no dropout, on
// a device of compute capability 9.0; false, launching nothing, elsewhere.
bool launch_attention_forward_wgmma(DType dt, const AttentionArgs& a, cudaStream_t s);

// The dK/dV and dQ kernels of the tensor-core backward on wgmma, after its rows kernel (dr,
// row_len, tile_kmax, tile_kmin: that kernel's outputs, row tiles of 64), for bf16 and f16 with
// head sizes up to 64 and no bias, on a device of compute capability 9.0; false, launching
// nothing, elsewhere.
bool launch_attention_backward_wgmma(DType dt, const AttentionArgs& a, const AttentionGradArgs& ga, const float* dr,
                                     const int* row_len, const int* tile_kmax, const int* tile_kmin, cudaStream_t s);

// The dK/dV kernel alone with a relative bias (relative_view), as the mma.sync keys kernel with
// 128 keys per block: the bias's diagonal sums go to diag (zeroed, [problems, key blocks, tq +
// 127]; null: none wanted). The same conditions otherwise; false, launching nothing, elsewhere.
bool launch_attention_keys_wgmma(DType dt, const AttentionArgs& a, const AttentionGradArgs& ga, const float* dr,
                                 const int* row_len, const int* tile_kmax, const int* tile_kmin, float* diag,
                                 cudaStream_t s);

// The dQ kernel alone with a relative bias (relative_view), as the mma.sync queries kernel: each
// row's share of its row scale's gradient goes to dscale ([problems, tq]; null: none wanted).
// The same conditions; false, launching nothing, elsewhere.
bool launch_attention_queries_wgmma(DType dt, const AttentionArgs& a, const AttentionGradArgs& ga, const float* dr,
                                    const int* row_len, const int* tile_kmax, float* dscale, cudaStream_t s);

}  // namespace dimx::gpu

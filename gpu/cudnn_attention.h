#pragma once
// cuDNN's fused flash attention, through its graph API, for the bf16/f16 forwards it takes: no
// bias, no dropout, a positive scale, and every row of a problem seeing the same keys (no
// lengths, or per-problem query and key lengths: AttentionArgs::spans). The graph spells out what the fused primitive
// computes (S = scale Q K^T, the padding mask, softmax with its rows' statistics, O = P V); one
// execution plan per shape, kept. The output rows past the lengths, and the rows of a problem
// without keys, are zeroed after (the primitive's contract), and the statistics are kept as the
// own kernels keep them (log2-sum-exp2), for the own backward.
// The backward stays with the own kernels: cuDNN's adds dQ across key tiles with atomics (not
// the same bits twice), and its deterministic form keeps a [query, key] tile per problem in its
// workspace (docs/performance.md).
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "launch.h"

typedef struct cudnnContext* cudnnHandle_t;
typedef void* cudnnBackendDescriptor_t;

namespace dimx::gpu {

class CudnnAttention {
 public:
  explicit CudnnAttention(cudaStream_t s);
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  // Whether the problem is of the kind cuDNN takes (dtype, head sizes, alignment, spans, no bias
  // or dropout); builds nothing.
  static bool fits(DType dt, const AttentionArgs& a);
  // The forward (a.lse, when set, gets the rows' log2-sum-exp2); false where no engine takes the
  // shape, computing nothing.
  bool forward(DType dt, const AttentionArgs& a);

 private:
  struct Plan;
  // The plan of a's shape, built once (null: no engine takes it).
  std::shared_ptr<Plan> plan(DType dt, const AttentionArgs& a);

  void execute(cudnnBackendDescriptor_t plan, const std::vector<int64_t>& uids, const std::vector<void*>& ptrs,
               void* workspace, const char* what);

  cudaStream_t stream_;
  cudnnHandle_t handle_ = nullptr;
  std::map<std::string, std::shared_ptr<Plan>> plans_;  // null: no engine takes the shape
};

}  // namespace dimx::gpu

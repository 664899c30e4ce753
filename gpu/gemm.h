#pragma once
// cuBLAS and cuBLASLt behind backend::Gemm on one device: plain products through
// cublasGemmStridedBatchedEx, a bias through cuBLASLt's bias epilogue (one plan per shape,
// kept), K groups (padded frames left out) by packing the valid K indices of both operands
// densely and taking one product over them.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <tuple>

#include "backend.h"

namespace dimx::gpu {

class Gemms {
 public:
  // `be` is the device's backend (the packed operands' buffers, the fallback bias add).
  Gemms(backend::Backend& be, cudaStream_t s);
  ~Gemms();
  Gemms(const Gemms&) = delete;
  Gemms& operator=(const Gemms&) = delete;

  void run(DType dt, const backend::Gemm& g);

 private:
  struct Plan;
  using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, bool, bool, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int64_t, bool, int>;
  void plain(DType dt, const backend::Gemm& g, const void* a, const void* b, int64_t k);
  void packed(DType dt, const backend::Gemm& g);
  bool with_bias(DType dt, const backend::Gemm& g);

  backend::Backend& be_;
  cudaStream_t stream_;
  cublasHandle_t blas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  void* workspace_ = nullptr;
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

}  // namespace dimx::gpu

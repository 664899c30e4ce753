#pragma once
// The CPU backend: xsimd-vectorized elementwise math, OpenBLAS GEMM, a small thread pool.
#include "backend.h"
#include "dtype_dispatch.h"

namespace dimx::cpu {

class CpuBackend final : public backend::Backend {
 public:
  using In = backend::In;
  using Out = backend::Out;

  std::shared_ptr<Storage> allocate(size_t bytes) override;
  void copy_from_host(void* dst, const void* src, size_t bytes) override;
  void copy_to_host(void* dst, const void* src, size_t bytes) override;
  void copy(const Shape& shape, DType src_dt, const In& src, DType dst_dt, const Out& dst) override;
  void fill(DType dt, int64_t n, void* dst, double value) override;
  void iota(DType dt, int64_t n, void* dst) override;
  void unary(UnaryOp op, DType dt, const Shape& shape, const In& x, const Out& y) override;
  void binary(BinaryOp op, DType dt, const Shape& shape, const In& a, const In& b, const Out& y) override;
  void unary_backward(UnaryOp op, DType dt, const Shape& shape, const In& x, const In& g, const Out& y) override;
  void where(DType dt, const Shape& shape, const In& cond, const In& a, const In& b, const Out& y) override;
  void reduce(ReduceOp op, DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* lengths,
              void* y) override;
  void arg_reduce(bool is_max, DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* lengths,
                  int64_t* y) override;
  void softmax(bool log, DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* lengths,
               void* y) override;
  void softmax_backward(bool log, DType dt, int64_t A, int64_t N, int64_t B, const void* y, const void* g,
                        const int64_t* lengths, void* dx) override;
  bool cross_entropy(DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* target,
                     const bool* valid, void* loss, void* lse) override;
  void cross_entropy_backward(DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* target,
                              const bool* valid, const void* lse, const void* g, void* dx) override;
  void layer_norm(DType dt, const backend::LayerNorm& a, void* y, void* mean, void* rstd) override;
  void layer_norm_backward(DType dt, const backend::LayerNorm& a, const void* mean, const void* rstd, const void* g,
                           const bool* row_mask, void* dx, void* dweight, void* dbias) override;
  void xpos(DType dt, const backend::Xpos& a) override;
  void cumsum(DType dt, int64_t A, int64_t N, int64_t B, const void* x, void* y) override;
  void gemm(DType dt, const backend::Gemm& g) override;
  void gemm_half(DType dt, const backend::Gemm& g);
  bool attention(DType dt, const backend::Attention& a) override;
  bool attention_takes_bias() const override { return true; }
  // The backward walks each problem's rows in order, adding into dbias one element at a time.
  bool attention_takes_relative_bias() const override { return true; }
  bool attention_takes_bias_row_scale() const override { return true; }
  void optim_step(DType dt, const backend::OptimStep& a) override;
  bool attention_backward(DType dt, const backend::Attention& a, const backend::AttentionGrads& g) override;
  bool gather(DType dt, const Shape& shape, const In& x, int64_t axis_stride, int64_t extent, const In& idx,
              bool clip, const Out& y) override;
  void scatter_add(DType dt, const Shape& shape, const In& x, int64_t axis_stride, int64_t extent, const In& idx,
                   const Out& y) override;
  void random(backend::RandomKind kind, DType dt, int64_t n, uint64_t seed, uint64_t offset, double a, double b,
              void* y) override;
  void causal_conv(DType dt, const backend::CausalConv& a, const void* x, const void* k, void* y) override;
  void causal_conv_kernel_grad(DType dt, const backend::CausalConv& a, const void* x, const void* g, void* dk) override;
  void ema_forward(DType dt, const backend::Ema& a, void* y, void* state_out) override;
  void ema_backward(DType dt, const backend::Ema& a, const void* gy, const void* gfinal, void* gx, void* ggain,
                    void* gdecay, void* gweight, void* gstate) override;
  void wkv_forward(DType dt, const backend::Wkv& a, void* y, void* log_den, void* const state_out[3]) override;
  void wkv_backward(DType dt, const backend::Wkv& a, const void* y, const void* log_den, const void* gy, void* gk,
                    void* gv, void* gtd, void* gu) override;
};


// Index spaces below this many elements run on one thread.
constexpr int64_t kParallelGrain = 1 << 15;

}  // namespace dimx::cpu

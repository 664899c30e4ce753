#pragma once
// Launchers of the CUDA kernels, callable from host C++ (the .cu files define them). Shapes
// arrive collapsed (at most kMaxDims axes) with element strides per operand.
#include <dimx/dtype.h>
#include <dimx/op_codes.h>

#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace dimx::gpu {

constexpr int kMaxDims = 8;

template <int K>
struct Meta {
  int nd = 0;
  int64_t n = 1;  // number of elements
  int64_t shape[kMaxDims] = {};
  int64_t strides[K][kMaxDims] = {};
};

// backend::Attention flattened (see src/backend.h): strides in elements, rows contiguous.
struct AttentionArgs {
  int64_t batch0, batch1, tq, tk, d, dv;
  double scale;
  const void* q;
  int64_t q_bs0, q_bs1, q_rs;
  const void* k;
  int64_t k_bs0, k_bs1, k_rs;
  const void* v;
  int64_t v_bs0, v_bs1, v_rs;
  void* out;
  int64_t o_bs0, o_bs1, o_rs;
  const int64_t* key_lengths;
  void* lse;  // nullable: the forward writes each row's log2-sum-exp2 of the scaled energies, [batch, tq]
  // Nullable: an additive term of the energies (backend::Attention::Bias), the element type:
  // (b, i, j) reads bias[bias_off[b] + i * bias_rs + j * bias_cs] (bias_off null: 0).
  const void* bias;
  const int64_t* bias_off;
  int64_t bias_rs, bias_cs;
  // Dropout of the weights (backend::Attention::Dropout; drop_p == 0: none): weight (b0, b1, i,
  // j) is kept (and scaled by drop_scale) where philox::KeepStream keeps element
  // b0 drop_s0 + b1 drop_s1 + i drop_rs + j drop_cs.
  double drop_p, drop_scale;
  uint64_t drop_seed, drop_offset, drop_threshold;
  int64_t drop_s0, drop_s1, drop_rs, drop_cs;
  bool drop_f64;
  // Nullable, with a relative bias only: a factor of row i's term, the element type, at
  // row_scale[row_scale_off[b] (null: 0) + i * row_scale_rs] (backend::Attention::Bias).
  const void* row_scale = nullptr;
  const int64_t* row_scale_off = nullptr;
  int64_t row_scale_rs = 0;
  // backend::Attention::Spans: where valid, i32 lengths per index of batch group span_group
  // (rows i >= span_q[g] see no key, the others keys j < span_kv[g]; null: tq, tk).
  bool spans = false;
  int span_group = 0;
  const int32_t* span_q = nullptr;
  const int32_t* span_kv = nullptr;
  // Nullable: set to true where the products ran on wgmma (gpu/attention_wgmma.h), forward or backward.
  bool* on_wgmma = nullptr;
};
// The backward of launch_attention's problem (the same AttentionArgs, with the lse its forward
// wrote): g has out's strides; dq, dk, dv (each nullable: not computed) have their own strides.
struct AttentionGradArgs {
  const void* g;
  void* dq;
  int64_t dq_bs0, dq_bs1, dq_rs;
  void* dk;
  int64_t dk_bs0, dk_bs1, dk_rs;
  void* dv;
  int64_t dv_bs0, dv_bs1, dv_rs;
  // Nullable: the bias's gradient (the element type, f32 for bf16/f16), added into at the
  // bias's strides from dbias_off[b] (null: bias_off). Each problem's part is its own (the
  // frontend guarantees it), so the kernels write without ordering problems.
  void* dbias;
  const int64_t* dbias_off;
  // Nullable: the row scale's gradient (f32), added into at row_scale's strides from
  // drow_scale_off[b] (null: row_scale_off).
  void* drow_scale = nullptr;
  const int64_t* drow_scale_off = nullptr;
};

void launch_copy(DType src, DType dst, const Meta<2>& m, const void* x, void* y, cudaStream_t s);

// The valid indices of a K axis in groups (backend::Gemm's k_lengths): group o holds source
// indices [o * group, o * group + len_o) and packs to [start[o], start[o + 1]).
constexpr int kMaxKGroups = 256;
struct KGroups {
  int n;
  int64_t group;
  int64_t start[kMaxKGroups + 1];
};
// Packs the valid K indices of `batch` matrices (element size es, batch stride in elements)
// densely into y: k_major, K selects rows of `other` contiguous elements (stride ld), packed
// as [total, other]; else K runs along each of `other` rows (stride ld), packed as
// [other, total]. y holds batch * total * other elements.
void launch_compact_k(int64_t es, const void* x, int64_t ld, int64_t other, bool k_major, int64_t batch,
                      int64_t batch_stride, int64_t total, const KGroups& g, void* y, cudaStream_t s);
void launch_fill(DType dt, int64_t n, void* y, double value, cudaStream_t s);
void launch_iota(DType dt, int64_t n, void* y, cudaStream_t s);
void launch_unary(UnaryOp op, DType dt, const Meta<2>& m, const void* x, void* y, cudaStream_t s);
void launch_binary(BinaryOp op, DType dt, const Meta<3>& m, const void* a, const void* b, void* y, cudaStream_t s);
// add or sub of f32 and bf16/f16 operands (either side) into f32, the half one widened as read.
void launch_binary_widening(BinaryOp op, DType a_dt, DType b_dt, const Meta<3>& m, const void* a, const void* b,
                            void* y, cudaStream_t s);
// y = g * op'(x) for the ops of backend::has_fused_derivative (floating dtypes).
void launch_unary_backward(UnaryOp op, DType dt, const Meta<3>& m, const void* x, const void* g, void* y, cudaStream_t s);
void launch_where(DType dt, const Meta<4>& m, const void* c, const void* a, const void* b, void* y, cudaStream_t s);
void launch_reduce(ReduceOp op, DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* len,
                   void* y, cudaStream_t s);
void launch_arg_reduce(bool is_max, DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* len,
                       int64_t* y, cudaStream_t s);
void launch_softmax(bool log, DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* len, void* y,
                    cudaStream_t s);
void launch_softmax_backward(bool log, DType dt, int64_t A, int64_t N, int64_t B, const void* y, const void* g,
                             const int64_t* len, void* dx, cudaStream_t s);
// Cross-entropy along N of contiguous [A, N, B] logits (f32, f64, bf16, f16; see src/backend.h):
// loss and lse [A, B] in f64 for f64, else f32; valid (nullable) bool [A, B]. bad (device int)
// is set to 1 when a valid row's target is outside [0, N).
void launch_cross_entropy(DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* target,
                          const bool* valid, void* loss, void* lse, int* bad, cudaStream_t s);
// dx [A, N, B] in dt from the forward's lse and the per-row gradient g [A, B] (compute type).
void launch_cross_entropy_backward(DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* target,
                                   const bool* valid, const void* lse, const void* g, void* dx, cudaStream_t s);
void launch_cumsum(DType dt, int64_t A, int64_t N, int64_t B, const void* x, void* y, cudaStream_t s);
// bad (device int) is set to 1 when an index is out of range and clip is off.
void launch_gather(DType dt, const Meta<3>& m, const void* x, int64_t axis_stride, int64_t extent, const int64_t* idx,
                   bool clip, void* y, int* bad, cudaStream_t s);
void launch_scatter_add(DType dt, const Meta<3>& m, const void* x, int64_t axis_stride, int64_t extent,
                        const int64_t* idx, void* y, cudaStream_t s);
// False where no kernel fits (dtype other than f32/f64, head size above 128).
bool launch_attention(DType dt, const AttentionArgs& a, cudaStream_t s);
// False where no kernel fits (as launch_attention) or a.lse is null.
bool launch_attention_backward(DType dt, const AttentionArgs& a, const AttentionGradArgs& g, cudaStream_t s);
// The tensor-core kernels (gpu/attention_mma.cu): bf16/f16, and f32 as TF32 (the caller decides
// that TF32 is allowed); the forward where g is null, else the backward; lse in f32. False where
// none fits (head sizes over 256, over 128 for TF32; rows not 16-byte aligned).
bool launch_attention_mma(DType dt, const AttentionArgs& a, const AttentionGradArgs* g, cudaStream_t s);
// The WKV scan (float32; see src/backend.h's Wkv): contiguous [B, T, C] k, v; w, u [C];
// lengths (nullable) i64 [B]; state (each nullable as a whole) [B, C].
struct WkvLaunch {
  int64_t B, T, C;
  const float* time_decay;  // the decay is w = -exp(time_decay)
  const float* u;
  const float* k;
  const float* v;
  const int64_t* lengths;
  const float* state[3];
};
void launch_wkv_forward(const WkvLaunch& a, float* y, float* log_den, float* const state_out[3], cudaStream_t s);
void launch_wkv_backward(const WkvLaunch& a, const float* y, const float* log_den, const float* gy, float* gk,
                         float* gv, float* gtd, float* gu, cudaStream_t s);
// The multi-head damped EMA (f32 or f64; see src/backend.h's Ema): x [B, L, C] at
// b * sb + t * st + c (y, gy, gx alike); gain, decay, weight [C, H]; state (nullable) [B, C, H];
// lengths (nullable) i64 [B].
struct EmaLaunch {
  int64_t B, L, C, H, sb, st;
  const void* x;
  const void* gain;
  const void* decay;
  const void* weight;
  const void* state;
  const int64_t* lengths;
};
void launch_ema_forward(DType dt, const EmaLaunch& a, void* y, void* state_out, cudaStream_t s);
void launch_ema_backward(DType dt, const EmaLaunch& a, const void* gy, const void* gfinal, void* gx, void* ggain,
                         void* gdecay, void* gweight, void* gstate, cudaStream_t s);
// Layer normalization (see src/backend.h's LayerNorm): f32, f64, bf16 or f16; mean and rstd
// [A, B] in f64 for f64, else f32.
struct LayerNormLaunch {
  int64_t A, N, B;
  double eps;
  const void* x;
  const void* weight;
  const void* bias;
};
void launch_layer_norm(DType dt, const LayerNormLaunch& a, void* y, void* mean, void* rstd, cudaStream_t s);
// dx, dweight, dbias nullable; mask (nullable, bool [A, B]) leaves rows out of dweight and dbias.
void launch_layer_norm_backward(DType dt, const LayerNormLaunch& a, const void* mean, const void* rstd, const void* g,
                                const bool* mask, void* dx, void* dweight, void* dbias, cudaStream_t s);
// XPOS (see src/backend.h's Xpos) over the rows of m (operands x, y, r, m in that order).
struct XposLaunch {
  int64_t pairs;
  const void* x;
  void* y;
  const double* r;
  const double* m;
  const double* log_zeta;  // null: the closed form
  double scale_base;
  bool downscale, inverse;
};
void launch_xpos(DType dt, const Meta<4>& m, const XposLaunch& a, cudaStream_t s);
void launch_causal_conv(DType dt, int64_t B, int64_t L, int64_t C, int64_t Lk, bool anti, bool fft, const void* x,
                        const void* k, void* y, cudaStream_t s);
void launch_causal_conv_kernel_grad(DType dt, int64_t B, int64_t L, int64_t C, int64_t Lk, bool fft, const void* x,
                                    const void* g, void* dk, cudaStream_t s);
// The fused optimizer step (see backend::OptimStep): `count` (<= kOptimMaxTensors) tensors and
// their coefficients (optim_math::Coeffs<T>, T the element type), one launch.
constexpr int kOptimMaxTensors = 16;
struct OptimTensor {
  void* param;
  const void* grad;
  void* buf[3];
  int64_t n;
};
void launch_optim_step(DType dt, bool adam, const OptimTensor* tensors, const void* coeffs, int count, cudaStream_t s);
void launch_random(bool normal, DType dt, int64_t n, uint64_t seed, uint64_t offset, double a, double b, void* y,
                   cudaStream_t s);

}  // namespace dimx::gpu

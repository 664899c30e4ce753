#pragma once
// The positional lowering interface. The frontend resolves Dims (alignment, broadcasting,
// masking, output layout) and calls these primitives with shapes and strides only; each
// device implements them. Strides are in elements unless stated otherwise.
#include <dimx/elementwise.h>
#include <dimx/reduce.h>

#include <array>
#include <functional>
#include <vector>

#include "tensor_impl.h"

namespace dimx::backend {

// Whether Backend::unary_backward computes op's gradient.
inline bool has_fused_derivative(UnaryOp op) {
  return op == UnaryOp::gelu || op == UnaryOp::silu || op == UnaryOp::softplus || op == UnaryOp::erf;
}

struct In {
  const void* data;
  Strides strides;
};
struct Out {
  void* data;
  Strides strides;
};

// Row-major batched GEMM: C[b] = op(A[b]) @ op(B[b]), op = transpose where trans_* is set.
// Two optional parts, never both in one call:
// - bias (nullable): C[b] = op(A[b]) @ op(B[b]) + bias, a contiguous vector of n in the dtype
//   of C, broadcast over the rows and the batch (added before C is rounded);
// - k_lengths (nullable, host memory, k_groups <= 256 entries): the contracted index is
//   k_groups groups of k / k_groups consecutive indices, of which only the first k_lengths[o]
//   of group o take part (a padded Dim innermost in K, its lengths over the Dims outside it).
//   Indices past a group's length never reach the result, whatever they hold; the sum is in
//   the accumulation precision (f32 for bf16/f16) and C is rounded once.
struct Gemm {
  int64_t batch, m, n, k;
  bool trans_a, trans_b;
  const void* a;
  int64_t lda, stride_a;
  const void* b;
  int64_t ldb, stride_b;
  void* c;
  int64_t ldc, stride_c;
  const void* bias;
  const int64_t* k_lengths;
  int64_t k_groups;
};

// Fused scaled dot-product attention over `batch[0] * batch[1]` independent problems; problem
// b = b0 * batch[1] + b1 reads q at q.data + b0 * q.batch_stride[0] + b1 * q.batch_stride[1] +
// i * q.row_stride + c (two strided batch levels, so {batch, heads} slices of a packed
// projection need no copy; the same for k, v and out):
//   out[b, i, :] = sum_{j < len(b, i)} softmax_j(scale * q[b, i, :] . k[b, j, :]) v[b, j, :]
// q [tq, d], k [tk, d], v [tk, dv], out [tq, dv] per problem, each row contiguous (stride 1).
// len(b, i) = key_lengths[b * tq + i] (contiguous i64 [batch, tq]; null: every row sees tk
// keys), clamped to [0, tk]: this covers padding and causality alike. A row that sees no key
// gets 0. The energies [tq, tk] are never materialized as a whole.
// With a bias, the energy of (b, i, j) is scale * q . k + bias[batch_offset[b] + i * row_stride
// + j * col_stride] (the element type; strides may be 0: the term broadcasts over queries or
// keys; batch_offset, i64 [batch] in the device's memory, null: 0 for every problem).
struct Attention {
  struct Operand {
    const void* data;
    int64_t batch_stride[2];
    int64_t row_stride;
  };
  struct Bias {
    const void* data;
    const int64_t* batch_offset;
    int64_t row_stride, col_stride;
    // Nullable: a factor of each query row's bias term (the element type), at
    // row_scale_offset[b] (null: 0) + i * row_scale_stride; only where the backend says
    // attention_takes_bias_row_scale().
    const void* row_scale = nullptr;
    const int64_t* row_scale_offset = nullptr;
    int64_t row_scale_stride = 0;
  };
  int64_t batch[2];
  int64_t tq, tk, d, dv;
  double scale;
  Operand q, k, v;
  void* out;
  int64_t out_batch_stride[2];
  int64_t out_row_stride;
  const int64_t* key_lengths;
  // The same lengths per problem, where every row of a problem sees the same keys (valid):
  // per index of one batch group (`group`: 0 or 1; the other group shares them), i32 in the
  // device's memory, rows i >= q[g] see no key and the others see keys j < kv[g] (null: all
  // tq rows, all tk keys). Not valid where the rows differ otherwise (causal): key_lengths only.
  struct Spans {
    bool valid = false;
    int group = 0;
    const int32_t* q = nullptr;
    const int32_t* kv = nullptr;
  } spans;
  Bias bias;  // bias.data null: none
  // Dropout of the weights (p == 0: none): weight (b0, b1, i, j) is kept, and scaled by
  // `scale` (1 / (1 - p)), where philox::keep(seed, offset, f, f64, threshold) holds for
  // f = b0 * stride[0] + b1 * stride[1] + i * row_stride + j * col_stride (its index in the mask
  // that dropout() would draw over the weights' Dims). The backward regenerates it.
  struct Dropout {
    double p = 0, scale = 1;
    uint64_t seed = 0, offset = 0, threshold = 0;
    bool f64 = false;
    int64_t stride[2] = {0, 0};
    int64_t row_stride = 0, col_stride = 0;
  } dropout;
  // Nullable: the frontend passes it when a backward will follow. A device whose backward
  // reads it (CUDA) writes each row's log2-sum-exp2 of the scaled energies here (contiguous,
  // the element type, f32 for bf16/f16, [batch, tq]); one that recomputes the rows instead (the CPU) ignores it.
  void* lse = nullptr;
  // Nullable: set to true by a device that ran a vendor library's kernel (cuDNN) for the call.
  bool* on_library = nullptr;
  // Nullable: set to true by a device that ran f32 on TF32 tensor cores (set_allow_tf32), forward or backward.
  bool* on_tf32 = nullptr;
  // Nullable: set to true by a device that ran the call's products on wgmma (Hopper), forward or backward.
  bool* on_wgmma = nullptr;
};

// Where attention_backward writes the gradients of q, k and v (each nullable: not wanted), in
// the operands' indexing (two batch strides and a row stride; rows contiguous).
struct AttentionGrads {
  struct Operand {
    void* data;
    int64_t batch_stride[2];
    int64_t row_stride;
  };
  const void* out_grad;  // the output's gradient, with out's strides
  Operand dq, dk, dv;
  // Nullable: the bias's gradient, added into (+=) the element each (b, i, j) of the forward
  // read (the bias's own indexing), so that a broadcast bias gets the sum over what it spans;
  // the frontend zero-fills it. Summed in a fixed order (the same on every run). The element
  // type, f32 for bf16/f16.
  void* dbias;
  // Nullable: where problem b's part of dbias starts (i64 [batch] in the device's memory; null:
  // the bias's batch_offset), with the bias's row and column strides. The frontend gives every
  // problem its own part where problems share a bias (a bias without a batch or head Dim), and
  // sums them after, so that a device may write each problem's share without ordering them.
  const int64_t* dbias_batch_offset = nullptr;
  // Nullable: the row scale's gradient (sum over the row's keys of dS times the bias term),
  // added into the element each (b, i) read, with its own per-problem offsets (null: the row
  // scale's), zero-filled by the frontend, f32 for bf16/f16.
  void* drow_scale = nullptr;
  const int64_t* drow_scale_offset = nullptr;
};

enum class RandomKind { uniform, normal };

// The WKV scan of RWKV time mixing (see dimx/wkv.h) over contiguous [B, T, C] k and v.
// state holds the incoming (num, den, max), each contiguous [B, C], or nulls for the empty
// state (0, 0, -1e38). lengths (nullable, i64 [B]): frames at t >= lengths[b] are skipped
// (they leave the state alone, output 0 and get zero gradients).
struct Wkv {
  int64_t B = 0, T = 0, C = 0;
  const void* time_decay = nullptr;  // [C]; the decay is w = -exp(time_decay) < 0
  const void* u = nullptr;  // [C], time_first
  const void* k = nullptr;
  const void* v = nullptr;
  const int64_t* lengths = nullptr;
  const void* state[3] = {nullptr, nullptr, nullptr};
};

// Causal convolution along the time axis of contiguous x [B, L, C] with a kernel [Lk, C]:
//   y[b, t, c] = sum_{0 <= j < Lk, j <= t} k[j, c] x[b, t - j, c]
// or, anti_causal (the adjoint, for the gradient of x), sum_{j < Lk, t + j < L} k[j, c] x[b, t + j, c].
// fft asks for the FFT path where the device has one (it computes the same, to rounding).
struct CausalConv {
  int64_t B = 0, L = 0, C = 0, Lk = 0;
  bool anti_causal = false;
  bool fft = false;
};

// The multi-head damped EMA (see dimx/ema.h) over x [B, L, C] with gain, decay and weight
// [C, H] and an optional incoming state [B, C, H] (null: zeros). x[b, t, c] is at
// b * sb + t * st + c (channels contiguous); y, and gy and gx in the backward, have the same
// layout. lengths (nullable, i64 [B]): frames at t >= lengths[b] output 0, leave the state
// alone and get zero gradients.
struct Ema {
  int64_t B = 0, L = 0, C = 0, H = 0;
  int64_t sb = 0, st = 0;
  const void* x = nullptr;
  const void* gain = nullptr;
  const void* decay = nullptr;
  const void* weight = nullptr;
  const void* state = nullptr;
  const int64_t* lengths = nullptr;
};

// Layer normalization along N of contiguous x [A, N, B] (dtype dt; bf16/f16 are computed in
// f32), one row per (a, b):
//   y = (x - mean) * rstd * weight[n] + bias[n],  rstd = 1 / sqrt(var + eps)
// with the biased variance (divided by N). weight and bias are [N] in dt, each nullable (1, 0).
// mean and rstd are [A, B] in the statistics dtype: f64 for f64, f32 otherwise.
struct LayerNorm {
  int64_t A = 0, N = 0, B = 0;
  double eps = 0;
  const void* x = nullptr;
  const void* weight = nullptr;
  const void* bias = nullptr;
};

// XPOS (see dimx/nn/torchscale.h) on rows of 2 * pairs contiguous elements, read as interleaved
// pairs (2i, 2i + 1). Row k (a multi-index over `shape`) of x starts at x + sum_d k_d x_strides[d]
// (elements), y likewise; its positions r and m (f64) are at r + sum_d k_d r_strides[d] and
// m + sum_d k_d m_strides[d] (stride 0 where they broadcast). Per row and pair i, in f64:
//   theta = r * 10000^(-i / pairs),  s = exp(m * (+-1 / scale_base) * log_zeta[i])  (- when downscale)
//   c = s cos(theta), d = s sin(theta)   (-d when inverse: the rotation by -theta, same scale)
// then, with c and d rounded to the compute type (f64 for f64, f32 otherwise):
//   y[2i] = c x[2i] - d x[2i+1],  y[2i+1] = c x[2i+1] + d x[2i].
// log_zeta is f64 [pairs], or null for zeta_i = (2i + 0.4 D) / (1.4 D), D = 2 * pairs.
struct Xpos {
  Shape shape;
  Strides x_strides, y_strides, r_strides, m_strides;
  int64_t pairs = 0;
  const void* x = nullptr;
  void* y = nullptr;
  const double* r = nullptr;
  const double* m = nullptr;
  const double* log_zeta = nullptr;
  double scale_base = 512;
  bool downscale = false;
  bool inverse = false;
};

// One optimizer update of many tensors at once (multi-tensor), each i with n[i] contiguous
// elements of param, grad and its state buffers in the same layout, updated in place:
//   sgd:  d = (maximize ? -g : g) + weight_decay p; with momentum: buf0 = first[i] ? d :
//         momentum buf0 + (1 - dampening) d, d = nesterov ? d + momentum buf0 : buf0; p -= lr d
//   adam: g = maximize ? -g : g; decoupled: p *= 1 - lr weight_decay, else g += weight_decay p;
//         buf0 = beta1 buf0 + (1 - beta1) g; buf1 = beta2 buf1 + (1 - beta2) g g;
//         amsgrad: buf2 = max(buf2, buf1), used for v; p -= lr / bc1[i] buf0 / (sqrt(v) / sqrt(bc2[i]) + eps)
// (bc1, bc2 = 1 - beta^t for the tensor's own step t). Arithmetic in the element type.
struct OptimStep {
  enum class Kind { sgd, adam } kind = Kind::adam;
  double lr = 0, weight_decay = 0;
  bool maximize = false;
  double momentum = 0, dampening = 0;  // sgd
  bool nesterov = false;
  double beta1 = 0, beta2 = 0, eps = 0;  // adam
  bool decoupled = false, amsgrad = false;
  struct Item {
    void* param;
    const void* grad;
    void* buf[3];  // sgd: momentum_buffer (with momentum); adam: exp_avg, exp_avg_sq, max_exp_avg_sq
    int64_t n;
    double bc1, bc2;  // adam
    bool first;       // sgd: the momentum buffer starts as a copy of d
  };
  std::vector<Item> items;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::shared_ptr<Storage> allocate(size_t bytes) = 0;
  virtual void copy_from_host(void* dst, const void* src, size_t bytes) = 0;
  virtual void copy_to_host(void* dst, const void* src, size_t bytes) = 0;
  // Waits until every primitive issued so far has finished (a no-op where calls are synchronous).
  virtual void synchronize() {}
  // The native queue the primitives are issued on (a cudaStream_t on CUDA), null where calls
  // are synchronous.
  virtual void* native_stream() { return nullptr; }

  // dst = cast(src) elementwise over `shape`.
  virtual void copy(const Shape& shape, DType src_dt, const In& src, DType dst_dt, const Out& dst) = 0;
  virtual void fill(DType dt, int64_t n, void* dst, double value) = 0;
  virtual void iota(DType dt, int64_t n, void* dst) = 0;
  virtual void unary(UnaryOp op, DType dt, const Shape& shape, const In& x, const Out& y) = 0;
  // Inputs share dtype `dt`; the output is bool for comparisons and logical ops.
  virtual void binary(BinaryOp op, DType dt, const Shape& shape, const In& a, const In& b, const Out& y) = 0;
  // add or sub of an f32 operand and a bf16/f16 one (either side), the output f32 (autocast's
  // residual connections). The default widens the half operand into a buffer first; a
  // backend may read it as it is.
  virtual void binary_widening(BinaryOp op, DType a_dt, DType b_dt, const Shape& shape, const In& a, const In& b,
                               const Out& y);
  // y = g * op'(x) for the unary ops whose derivative is a function of x alone (gelu, silu,
  // softplus, erf; see has_fused_derivative), floating dtypes, the math in f32 for bf16/f16.
  virtual void unary_backward(UnaryOp op, DType dt, const Shape& shape, const In& x, const In& g, const Out& y) = 0;
  virtual void where(DType dt, const Shape& shape, const In& cond, const In& a, const In& b, const Out& y) = 0;

  // x is contiguous [A, N, B], y contiguous [A, B]. lengths (nullable) is contiguous i64
  // [A, B]: only the first lengths[a, b] entries along N count. op is never mean. y has the
  // dtype dt, except for bf16/f16 x (op sum only): y is f32, accumulated in f32.
  virtual void reduce(ReduceOp op, DType dt, int64_t A, int64_t N, int64_t B, const void* x,
                      const int64_t* lengths, void* y) = 0;
  virtual void arg_reduce(bool is_max, DType dt, int64_t A, int64_t N, int64_t B, const void* x,
                          const int64_t* lengths, int64_t* y) = 0;
  // Softmax along N of contiguous [A, N, B]; masked frames get 0 (or -inf for log).
  virtual void softmax(bool log, DType dt, int64_t A, int64_t N, int64_t B, const void* x,
                       const int64_t* lengths, void* y) = 0;
  // The gradient of softmax (log: log_softmax) along N from its output y and the output's
  // gradient g, both contiguous [A, N, B]: dx = y (g - sum_N g y), or for log
  // dx = g - exp(y) sum_N g; with lengths as in softmax, the sums cover the valid frames and
  // the masked frames get 0.
  virtual void softmax_backward(bool log, DType dt, int64_t A, int64_t N, int64_t B, const void* y, const void* g,
                                const int64_t* lengths, void* dx) = 0;
  // Cross-entropy along N of contiguous logits x [A, N, B] (dt f32, f64, bf16 or f16; computed
  // in the compute type: f64 for f64, f32 otherwise), one row per (a, b) with its class index
  // target[a, b] (contiguous i64 [A, B]):
  //   lse[a, b] = log sum_n exp(x[a, n, b]),  loss[a, b] = lse[a, b] - x[a, target[a, b], b]
  // with the row maximum subtracted before exp. loss and lse are contiguous [A, B] in the compute
  // type. valid (nullable: every row) is bool [A, B]: rows where it is false are padding (nothing of
  // their x or target reaches any output) and get loss = lse = 0. Returns false if a valid row's target is
  // outside [0, N) (that row's loss is then unspecified); devices report it after the whole call.
  virtual bool cross_entropy(DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* target,
                             const bool* valid, void* loss, void* lse) = 0;
  // The gradient of cross_entropy with the same x, target and valid, from its lse and the
  // per-row output gradient g (contiguous [A, B], compute type): dx [A, N, B] in dt,
  //   dx[a, n, b] = g[a, b] * (exp(x[a, n, b] - lse[a, b]) - (n == target[a, b]))
  // on valid rows, and 0 on the others (selected, so NaN there never reaches dx).
  virtual void cross_entropy_backward(DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* target,
                                      const bool* valid, const void* lse, const void* g, void* dx) = 0;
  // y [A, N, B] = layer_norm(x) as LayerNorm says; mean and rstd (each nullable) [A, B] get
  // the statistics of each row for the backward.
  virtual void layer_norm(DType dt, const LayerNorm& a, void* y, void* mean, void* rstd) = 0;
  // Gradients of sum(g * y) for the forward with the same arguments, from its mean and rstd and
  // the output's gradient g [A, N, B]: dx [A, N, B] (nullable), and dweight and dbias [N] in dt
  // (each nullable) summed over the rows in a fixed order (the same on every run). row_mask
  // (nullable, bool [A, B]): rows where it is false are left out of dweight and dbias.
  virtual void layer_norm_backward(DType dt, const LayerNorm& a, const void* mean, const void* rstd, const void* g,
                                   const bool* row_mask, void* dx, void* dweight, void* dbias) = 0;
  // XPOS as Xpos says (the inverse rotation is the gradient's). dt may be bf16 or f16.
  virtual void xpos(DType dt, const Xpos& a) = 0;
  virtual void cumsum(DType dt, int64_t A, int64_t N, int64_t B, const void* x, void* y) = 0;
  virtual void gemm(DType dt, const Gemm& g) = 0;
  // Returns false (computing nothing) where this device has no fused kernel for the dtype or
  // head size; the frontend then takes the unfused path.
  virtual bool attention(DType dt, const Attention& a) = 0;
  // Whether attention and attention_backward read Attention::bias (false: they decline any
  // call with one, and the frontend does not lay one out).
  virtual bool attention_takes_bias() const { return false; }
  // Whether attention and attention_backward take a bias whose elements several (i, j) share:
  // a table by relative position, read through a view with row stride = -column stride
  // (element j - i of a row of positions). The backward must then add every (i, j)'s share
  // into dbias in a fixed order. False: the frontend gathers such a bias over [tq, tk] first.
  virtual bool attention_takes_relative_bias() const { return false; }
  // Whether attention and attention_backward take Attention::Bias::row_scale (false: the
  // frontend multiplies the bias out first).
  virtual bool attention_takes_bias_row_scale() const { return false; }
  // Whether attention reads Attention::Spans (false: the frontend does not lay them out).
  virtual bool attention_reads_spans() const { return false; }
  // The gradients of `attention` with the same arguments, whose forward wrote a.lse: returns
  // false (computing nothing) where this device has no fused backward; the frontend then
  // recomputes the weights. Nothing of size [tq, tk] is materialized; the result is
  // deterministic.
  virtual bool attention_backward(DType, const Attention&, const AttentionGrads&) { return false; }

  // y[i] = x[i + idx[i] * axis_stride] over `shape` (x's strides exclude the gathered axis),
  // idx is i64. Returns false if an index is outside [0, extent) and clip is off.
  virtual bool gather(DType dt, const Shape& shape, const In& x, int64_t axis_stride,
                      int64_t extent, const In& idx, bool clip, const Out& y) = 0;
  // The adjoint of gather: y[i + idx[i] * axis_stride] += x[i] over `shape` (y's strides
  // exclude the axis; idx is i64, clamped into [0, extent)). y must be initialized.
  virtual void scatter_add(DType dt, const Shape& shape, const In& x, int64_t axis_stride, int64_t extent,
                           const In& idx, const Out& y) = 0;
  // Philox-4x32-10 numbers for counters offset.. (4 f32 or 2 f64 values per counter).
  virtual void random(RandomKind kind, DType dt, int64_t n, uint64_t seed, uint64_t offset,
                      double a, double b, void* y) = 0;
  // y [B, L, C] = causal_conv(x, k) as CausalConv says.
  virtual void causal_conv(DType dt, const CausalConv& a, const void* x, const void* k, void* y) = 0;
  // The kernel's gradient for the causal (not anti-causal) conv: dk [Lk, C],
  // dk[j, c] = sum_b sum_{t >= j} g[b, t, c] x[b, t - j, c].
  virtual void causal_conv_kernel_grad(DType dt, const CausalConv& a, const void* x, const void* g, void* dk) = 0;
  // One update of every item of `a` (see OptimStep).
  virtual void optim_step(DType dt, const OptimStep& a) = 0;
  // y (x's layout); state_out (nullable) [B, C, H], the state after each sequence's last valid frame.
  virtual void ema_forward(DType dt, const Ema& a, void* y, void* state_out) = 0;
  // Gradients of sum(gy * y) + sum(gfinal * state_out) for the forward with the same
  // arguments (gy in x's layout and gfinal [B, C, H], each nullable: zeros): gx (x's layout); ggain,
  // gdecay, gweight [B, C, H] (to be summed over B by the caller); gstate (nullable) [B, C, H].
  virtual void ema_backward(DType dt, const Ema& a, const void* gy, const void* gfinal, void* gx, void* ggain,
                            void* gdecay, void* gweight, void* gstate) = 0;
  // y [B, T, C]; log_den (nullable) [B, T, C] gets log of each frame's denominator for the
  // backward; state_out (all three or none) [B, C] each, the state after the last valid frame.
  virtual void wkv_forward(DType dt, const Wkv& a, void* y, void* log_den, void* const state_out[3]) = 0;
  // Gradients of sum(gy * y) for the forward with the same arguments: gk, gv [B, T, C]; gtd
  // (d/d time_decay) and gu [B, C], to be summed over B by the caller.
  virtual void wkv_backward(DType dt, const Wkv& a, const void* y, const void* log_den, const void* gy, void* gk,
                            void* gv, void* gtd, void* gu) = 0;
};

// What a device library tells dimx besides its backends (the CUDA layer registers one when it
// loads).
struct DeviceLayer {
  std::function<int()> device_count;
  std::function<std::string(int)> device_name;
  std::function<std::string()> versions;  // runtime, driver and library versions, one line
  // Bytes of the device's stream-ordered pool: in use, reserved, peak in use; and a peak reset.
  std::function<std::array<size_t, 3>(int)> pool_bytes;
  std::function<void(int)> reset_pool_peak;
};
void register_device_layer(Device::Type type, DeviceLayer layer);
// The layer of `type`, its library loaded on first use where the program was not linked with
// it; null if there is none (`why` then says why).
const DeviceLayer* device_layer(Device::Type type, std::string* why = nullptr);

// The backend of one device (created on first use).
Backend& backend_for(Device device);
// Makes the backend of device `index`; throws dimx::Error if there is no such device.
using BackendFactory = std::function<Backend*(int index)>;
// Installed by a device library (the CUDA layer) when it loads.
void register_backend(Device::Type type, BackendFactory factory);

}  // namespace dimx::backend

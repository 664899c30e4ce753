// The CUDA backend: stream-ordered pooled allocation, GEMM (gemm.h) and the kernels of gpu/*.cu
// behind the positional interface of src/backend.h. Registered for Device::cuda when this
// library loads. Every CUDA and cuBLAS call is checked and turned into a dimx::Error.
#include <cuda_runtime.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

#include <dimx/matmul.h>

#include "backend.h"
#ifdef DIMX_WITH_CUDNN
#include "cudnn_attention.h"
#endif
#include "strided_space.h"
#include "gemm.h"
#include "launch.h"
#include "optim_coeffs.h"
#include "runtime.h"

namespace dimx::gpu {

namespace {

void check(cudaError_t e, const char* call) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state so later calls can go on
    throw Error(std::string(call) + " failed: " + cudaGetErrorString(e));
  }
}

template <int K>
Meta<K> make_meta(const Shape& shape, const std::array<Strides, K>& strides) {
  StridedSpace<K> c = collapse<K>(shape, strides);
  if (c.shape.size() > size_t(kMaxDims)) throw Error("cuda: more than 8 non-mergeable axes are not supported");
  Meta<K> m;
  m.nd = int(c.shape.size());
  m.n = numel_of(shape);
  for (int d = 0; d < m.nd; ++d) {
    m.shape[d] = c.shape[size_t(d)];
    for (int k = 0; k < K; ++k) m.strides[k][d] = c.strides[size_t(k)][size_t(d)];
  }
  return m;
}

void check_wkv_dtype(DType dt) {
  if (dt != DType::f32) throw Error(std::string("wkv: dtype ") + dtype_name(dt) + " not supported on cuda (f32)");
}

WkvLaunch wkv_launch(const backend::Wkv& a) {
  auto f = [](const void* p) { return static_cast<const float*>(p); };
  return WkvLaunch{a.B, a.T, a.C, f(a.time_decay), f(a.u), f(a.k), f(a.v), a.lengths, {f(a.state[0]), f(a.state[1]), f(a.state[2])}};
}

EmaLaunch ema_launch(const backend::Ema& a) {
  return EmaLaunch{a.B, a.L, a.C, a.H, a.sb, a.st, a.x, a.gain, a.decay, a.weight, a.state, a.lengths};
}

// One instance per device; every entry point first makes its device current.
class CudaBackend final : public backend::Backend {
 public:
  using In = backend::In;
  using Out = backend::Out;

  explicit CudaBackend(int index) : index_(index) {}

  cudaStream_t stream() {
    check(cudaSetDevice(index_), "cudaSetDevice");
    std::call_once(init_, [this] {
      check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
      cudaMemPool_t pool;
      check(cudaDeviceGetDefaultMemPool(&pool, index_), "cudaDeviceGetDefaultMemPool");
      // Keep freed blocks in the pool instead of returning them to the driver at each sync.
      uint64_t keep = ~uint64_t(0);
      check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "cudaMemPoolSetAttribute");
      gemms_ = std::make_unique<Gemms>(*this, stream_);
      register_release(this);
    });
    return stream_;
  }

  std::shared_ptr<Storage> allocate(size_t bytes) override {
    cudaStream_t s = stream();
    auto st = make_pooled<Storage>();
    st->bytes = bytes;
    st->device = Device::cuda(index_);
    void* p = nullptr;
    cudaError_t e = cudaMallocAsync(&p, bytes ? bytes : 1, s);
    if (e != cudaSuccess) {
      cudaGetLastError();
      throw Error("cudaMallocAsync(" + std::to_string(bytes) + " bytes) failed: " + cudaGetErrorString(e));
    }
    st->data = p;
    st->release = [s, index = index_](void* q) {
      cudaSetDevice(index);
      cudaFreeAsync(q, s);
    };
    return st;
  }

  // From pageable memory (what dimx allocates on the host) the copy has been staged when the
  // call returns, so the source may go at once and the host need not wait for the stream: the
  // work queued before keeps running while the host goes on. Only a source in page-locked
  // memory (a caller's buffer) is read later by the copy, so for it the stream is waited for.
  void copy_from_host(void* dst, const void* src, size_t bytes) override {
    if (!bytes) return;
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()), "cudaMemcpyAsync(host to device)");
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, src) != cudaSuccess) {
      cudaGetLastError();  // not a pointer CUDA knows: pageable
      return;
    }
    if (attr.type == cudaMemoryTypeHost) check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
  }

  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    if (!bytes) return;
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()), "cudaMemcpyAsync(device to host)");
    check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
  }

  void synchronize() override { check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize"); }
  void* native_stream() override { return stream(); }

  void copy(const Shape& shape, DType src_dt, const In& src, DType dst_dt, const Out& dst) override {
    launch_copy(src_dt, dst_dt, make_meta<2>(shape, {src.strides, dst.strides}), src.data, dst.data, stream());
  }
  void fill(DType dt, int64_t n, void* dst, double value) override { launch_fill(dt, n, dst, value, stream()); }
  void iota(DType dt, int64_t n, void* dst) override { launch_iota(dt, n, dst, stream()); }
  void unary(UnaryOp op, DType dt, const Shape& shape, const In& x, const Out& y) override {
    launch_unary(op, dt, make_meta<2>(shape, {x.strides, y.strides}), x.data, y.data, stream());
  }
  void unary_backward(UnaryOp op, DType dt, const Shape& shape, const In& x, const In& g, const Out& y) override {
    launch_unary_backward(op, dt, make_meta<3>(shape, {x.strides, g.strides, y.strides}), x.data, g.data, y.data,
                          stream());
  }
  void binary(BinaryOp op, DType dt, const Shape& shape, const In& a, const In& b, const Out& y) override {
    launch_binary(op, dt, make_meta<3>(shape, {a.strides, b.strides, y.strides}), a.data, b.data, y.data, stream());
  }
  void binary_widening(BinaryOp op, DType a_dt, DType b_dt, const Shape& shape, const In& a, const In& b,
                       const Out& y) override {
    launch_binary_widening(op, a_dt, b_dt, make_meta<3>(shape, {a.strides, b.strides, y.strides}), a.data, b.data,
                           y.data, stream());
  }
  void where(DType dt, const Shape& shape, const In& c, const In& a, const In& b, const Out& y) override {
    launch_where(dt, make_meta<4>(shape, {c.strides, a.strides, b.strides, y.strides}), c.data, a.data, b.data, y.data,
                 stream());
  }
  void reduce(ReduceOp op, DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* len,
              void* y) override {
    launch_reduce(op, dt, A, N, B, x, len, y, stream());
  }
  void arg_reduce(bool is_max, DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* len,
                  int64_t* y) override {
    launch_arg_reduce(is_max, dt, A, N, B, x, len, y, stream());
  }
  void softmax(bool log, DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* len,
               void* y) override {
    launch_softmax(log, dt, A, N, B, x, len, y, stream());
  }
  void softmax_backward(bool log, DType dt, int64_t A, int64_t N, int64_t B, const void* y, const void* g,
                        const int64_t* len, void* dx) override {
    launch_softmax_backward(log, dt, A, N, B, y, g, len, dx, stream());
  }
  bool cross_entropy(DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* target,
                     const bool* valid, void* loss, void* lse) override {
    // A valid row's target out of range is reported through a device flag read back here, as
    // gather does with clip off.
    cudaStream_t s = stream();
    int* bad = nullptr;
    check(cudaMallocAsync(reinterpret_cast<void**>(&bad), sizeof(int), s), "cudaMallocAsync");
    check(cudaMemsetAsync(bad, 0, sizeof(int), s), "cudaMemsetAsync");
    launch_cross_entropy(dt, A, N, B, x, target, valid, loss, lse, bad, s);
    int host = 0;
    check(cudaMemcpyAsync(&host, bad, sizeof(int), cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync");
    check(cudaFreeAsync(bad, s), "cudaFreeAsync");
    check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    return host == 0;
  }
  void cross_entropy_backward(DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* target,
                              const bool* valid, const void* lse, const void* g, void* dx) override {
    launch_cross_entropy_backward(dt, A, N, B, x, target, valid, lse, g, dx, stream());
  }
  void layer_norm(DType dt, const backend::LayerNorm& a, void* y, void* mean, void* rstd) override {
    launch_layer_norm(dt, LayerNormLaunch{a.A, a.N, a.B, a.eps, a.x, a.weight, a.bias}, y, mean, rstd, stream());
  }
  void layer_norm_backward(DType dt, const backend::LayerNorm& a, const void* mean, const void* rstd, const void* g,
                           const bool* row_mask, void* dx, void* dweight, void* dbias) override {
    launch_layer_norm_backward(dt, LayerNormLaunch{a.A, a.N, a.B, a.eps, a.x, a.weight, a.bias}, mean, rstd, g,
                               row_mask, dx, dweight, dbias, stream());
  }
  void xpos(DType dt, const backend::Xpos& a) override {
    const Meta<4> m = make_meta<4>(a.shape, {a.x_strides, a.y_strides, a.r_strides, a.m_strides});
    launch_xpos(dt, m, XposLaunch{a.pairs, a.x, a.y, a.r, a.m, a.log_zeta, a.scale_base, a.downscale, a.inverse},
                stream());
  }
  void cumsum(DType dt, int64_t A, int64_t N, int64_t B, const void* x, void* y) override {
    launch_cumsum(dt, A, N, B, x, y, stream());
  }

  void gemm(DType dt, const backend::Gemm& g) override {
    stream();  // makes this device current
    if (!gemms_) throw Error("matmul: the CUDA backend of cuda:" + std::to_string(index_) + " was released at exit");
    gemms_->run(dt, g);
  }

  // At exit, before the CUDA runtime goes: finishes the queued work and frees what the
  // backend holds for the process's lifetime (cuBLAS handles and workspaces, cached device
  // constants), so that nothing is left allocated. The stream and its pool stay usable for
  // tensors that statics free later.
  void release() {
    if (cudaSetDevice(index_) != cudaSuccess || cudaStreamSynchronize(stream_) != cudaSuccess) {
      cudaGetLastError();
      return;
    }
    release_device_constants(Device::cuda(index_));
    cudaStreamSynchronize(stream_);
    gemms_.reset();
#ifdef DIMX_WITH_CUDNN
    cudnn_.reset();
#endif
    cudaGetLastError();
  }

  static void register_release(CudaBackend* b) {
    static std::mutex mu;
    static std::vector<CudaBackend*>* all = new std::vector<CudaBackend*>;
    std::lock_guard<std::mutex> lk(mu);
    // Registered after the runtime's own exit handler (the stream exists), so it runs first.
    if (all->empty()) std::atexit([] {
        std::lock_guard<std::mutex> lk2(mu);
        for (CudaBackend* x : *all) x->release();
      });
    all->push_back(b);
  }

  static AttentionArgs attention_args(const backend::Attention& a) {
    AttentionArgs r{a.batch[0], a.batch[1], a.tq, a.tk, a.d, a.dv, a.scale,
                         a.q.data, a.q.batch_stride[0], a.q.batch_stride[1], a.q.row_stride,
                         a.k.data, a.k.batch_stride[0], a.k.batch_stride[1], a.k.row_stride,
                         a.v.data, a.v.batch_stride[0], a.v.batch_stride[1], a.v.row_stride,
                         a.out, a.out_batch_stride[0], a.out_batch_stride[1], a.out_row_stride,
                         a.key_lengths, a.lse,
                         a.bias.data, a.bias.batch_offset, a.bias.row_stride, a.bias.col_stride,
                         a.dropout.p, a.dropout.scale, a.dropout.seed, a.dropout.offset, a.dropout.threshold,
                         a.dropout.stride[0], a.dropout.stride[1], a.dropout.row_stride, a.dropout.col_stride,
                         a.dropout.f64};
    r.row_scale = a.bias.row_scale;
    r.row_scale_off = a.bias.row_scale_offset;
    r.row_scale_rs = a.bias.row_scale_stride;
    r.spans = a.spans.valid;
    r.span_group = a.spans.group;
    r.span_q = a.spans.q;
    r.span_kv = a.spans.kv;
    r.on_wgmma = a.on_wgmma;
    return r;
  }
  bool attention_takes_bias() const override { return true; }
  // A relative bias is read in place by every kernel (tensor-core and exact), forward and
  // backward; the backward sums the table's gradient along diagonals, per key tile, in a fixed
  // order.
  bool attention_takes_relative_bias() const override { return true; }
  // Its row scale (the gru_rel_pos gate) too: the forward multiplies each row's band terms, the
  // backward weights each dS row before the diagonal sums and forms the scale's gradient per row
  // (sum over the row's keys of dS times the table term), in key-tile order.
  bool attention_takes_bias_row_scale() const override { return true; }
#ifdef DIMX_WITH_CUDNN
  // cuDNN's forward reads the per-problem lengths (cudnn()).
  bool attention_reads_spans() const override { return true; }
#endif
  // f32 with set_allow_tf32(true) on the tensor-core kernels (TF32 operands, f32 accumulation and
  // statistics), which take every bias and dropout; where they decline (head size over 128,
  // rows not 16-byte aligned) the exact kernels below. The forward's row statistics (log2 units)
  // mean the same in both, so either backward follows either forward.
  static bool tf32(DType dt, const backend::Attention& a) {
    return dt == DType::f32 && allow_tf32() && a.batch[0] * a.batch[1] > 0 && a.tq > 0 && a.dv > 0;
  }
  // Measured on the H200 (BEATs layer, B=8 T=1024 H=12, f32): the exact f32/f64 kernels reading
  // a bias that varies over both queries and keys from device memory are slower than the
  // unfused path (forward 3.87 vs 3.37 ms, forward + backward 12.6 vs 10.5 ms), so they decline
  // it (counted as an unfused call); a bias over the keys or the queries alone, and every bias
  // in bf16/f16, stays fused. A relative bias (row stride = -column stride) and its row scale
  // stay fused in f32/f64 too: the kernels stage a tile pair's band of terms from the small
  // table in shared memory instead of reading [tq, tk] terms, and the backward sums the
  // table's gradient along diagonals in a fixed order.
  // Dropout in the exact kernels, which draw a Philox block per weight in the forward and again
  // in the backward, measured slower than the unfused path too (dot_attention fwd+bwd, B=8 H=12
  // T=1024 d=64 f32: 6.63 vs 4.45 ms), so they decline it as well; the tensor-core kernels share
  // each block between lanes and keep it (bf16: 2.1 ms fused against 3.85 unfused).
  bool attention(DType dt, const backend::Attention& a) override {
    const AttentionArgs args = attention_args(a);
    if (CudnnAttention* c = cudnn(dt, args); c && c->forward(dt, args)) {
      if (a.on_library) *a.on_library = true;
      return true;
    }
    const bool relative = a.bias.data && a.bias.col_stride != 0 && a.bias.row_stride == -a.bias.col_stride;
    if (a.bias.row_scale && !relative) return false;  // a row scale comes with a relative bias
    if (tf32(dt, a) && launch_attention_mma(dt, args, nullptr, stream())) {
      if (a.on_tf32) *a.on_tf32 = true;
      return true;
    }
    const bool exact = dt == DType::f32 || dt == DType::f64;
    if (exact && a.bias.data && !relative && a.bias.row_stride != 0 && a.bias.col_stride != 0) return false;
    if (exact && a.dropout.p > 0) return false;
    return launch_attention(dt, args, stream());
  }
  // cuDNN's flash attention for a forward it takes, where it was measured faster than the own
  // kernels (null: the own kernels). On the H200 (docs/performance.md, bf16, head size 64): without
  // lengths 0.087 vs 0.142 ms (B8 H12 T1024) and 0.555 vs 1.231 ms (B4 H16 T4096); with
  // per-sequence key lengths, whose padded keys and values it needs zeroed in a copy first,
  // 0.200 vs 0.171 ms at T = 1024 but 0.589 vs 0.871 ms at T = 4096: so padded keys go to cuDNN
  // from 2048 keys on. DIMX_CUDNN_ATTENTION=1 sends every call it takes to cuDNN, 0 none.
  CudnnAttention* cudnn(DType dt, const AttentionArgs& a) {
#ifdef DIMX_WITH_CUDNN
    const char* env = std::getenv("DIMX_CUDNN_ATTENTION");
    const std::string mode = env ? env : "";
    if (cudnn_failed_ || mode == "0" || !CudnnAttention::fits(dt, a)) return nullptr;
    if (mode != "1" && a.span_kv && a.tk < 2048) return nullptr;
    if (!cudnn_) {
      try {
        cudnn_ = std::make_unique<CudnnAttention>(stream());
      } catch (const Error&) {
        cudnn_failed_ = true;  // no usable cuDNN here (library or device): the own kernels
        return nullptr;
      }
    }
    return cudnn_.get();
#else
    (void)dt, (void)a;
    return nullptr;
#endif
  }
  void optim_step(DType dt, const backend::OptimStep& a) override {
    if (dt != DType::f32 && dt != DType::f64)
      throw Error(std::string("optimizer step: the fused update needs f32 or f64 on cuda, got ") + dtype_name(dt));
    const bool adam = a.kind == backend::OptimStep::Kind::adam;
    for (size_t i0 = 0; i0 < a.items.size(); i0 += kOptimMaxTensors) {
      const int count = int(std::min<size_t>(kOptimMaxTensors, a.items.size() - i0));
      OptimTensor t[kOptimMaxTensors];
      optim_math::Coeffs<float> cf[kOptimMaxTensors];
      optim_math::Coeffs<double> cd[kOptimMaxTensors];
      for (int i = 0; i < count; ++i) {
        const backend::OptimStep::Item& it = a.items[i0 + size_t(i)];
        t[i] = OptimTensor{it.param, it.grad, {it.buf[0], it.buf[1], it.buf[2]}, it.n};
        if (dt == DType::f32) cf[i] = optim_coeffs<float>(a, it);
        else cd[i] = optim_coeffs<double>(a, it);
      }
      launch_optim_step(dt, adam, t, dt == DType::f32 ? static_cast<const void*>(cf) : cd, count, stream());
    }
  }
  bool attention_backward(DType dt, const backend::Attention& a, const backend::AttentionGrads& g) override {
    AttentionGradArgs ga{g.out_grad,
                               g.dq.data, g.dq.batch_stride[0], g.dq.batch_stride[1], g.dq.row_stride,
                               g.dk.data, g.dk.batch_stride[0], g.dk.batch_stride[1], g.dk.row_stride,
                               g.dv.data, g.dv.batch_stride[0], g.dv.batch_stride[1], g.dv.row_stride,
                               g.dbias, g.dbias_batch_offset};
    ga.drow_scale = g.drow_scale;
    ga.drow_scale_off = g.drow_scale_offset;
    const AttentionArgs args = attention_args(a);
    if (tf32(dt, a) && a.lse && a.tk > 0 && a.d > 0 && launch_attention_mma(dt, args, &ga, stream())) {
      if (a.on_tf32) *a.on_tf32 = true;
      return true;
    }
    return launch_attention_backward(dt, args, ga, stream());
  }

  bool gather(DType dt, const Shape& shape, const In& x, int64_t axis_stride, int64_t extent, const In& idx, bool clip,
              const Out& y) override {
    cudaStream_t s = stream();
    if (clip) {  // indices are clamped: nothing to report, so no read-back and no synchronization
      launch_gather(dt, make_meta<3>(shape, {x.strides, idx.strides, y.strides}), x.data, axis_stride, extent,
                    static_cast<const int64_t*>(idx.data), clip, y.data, nullptr, s);
      return true;
    }
    int* bad = nullptr;
    check(cudaMallocAsync(reinterpret_cast<void**>(&bad), sizeof(int), s), "cudaMallocAsync");
    check(cudaMemsetAsync(bad, 0, sizeof(int), s), "cudaMemsetAsync");
    launch_gather(dt, make_meta<3>(shape, {x.strides, idx.strides, y.strides}), x.data, axis_stride, extent,
                  static_cast<const int64_t*>(idx.data), clip, y.data, bad, s);
    int host = 0;
    check(cudaMemcpyAsync(&host, bad, sizeof(int), cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync");
    check(cudaFreeAsync(bad, s), "cudaFreeAsync");
    check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    return host == 0;
  }

  void scatter_add(DType dt, const Shape& shape, const In& x, int64_t axis_stride, int64_t extent, const In& idx,
                   const Out& y) override {
    launch_scatter_add(dt, make_meta<3>(shape, {x.strides, idx.strides, y.strides}), x.data, axis_stride, extent,
                       static_cast<const int64_t*>(idx.data), y.data, stream());
  }

  void random(backend::RandomKind kind, DType dt, int64_t n, uint64_t seed, uint64_t offset, double a, double b,
              void* y) override {
    launch_random(kind == backend::RandomKind::normal, dt, n, seed, offset, a, b, y, stream());
  }

  void wkv_forward(DType dt, const backend::Wkv& a, void* y, void* log_den, void* const state_out[3]) override {
    check_wkv_dtype(dt);
    float* so[3] = {};
    if (state_out)
      for (int i = 0; i < 3; ++i) so[i] = static_cast<float*>(state_out[i]);
    launch_wkv_forward(wkv_launch(a), static_cast<float*>(y), static_cast<float*>(log_den), state_out ? so : nullptr,
                       stream());
  }
  void ema_forward(DType dt, const backend::Ema& a, void* y, void* state_out) override {
    launch_ema_forward(dt, ema_launch(a), y, state_out, stream());
  }
  void ema_backward(DType dt, const backend::Ema& a, const void* gy, const void* gfinal, void* gx, void* ggain,
                    void* gdecay, void* gweight, void* gstate) override {
    launch_ema_backward(dt, ema_launch(a), gy, gfinal, gx, ggain, gdecay, gweight, gstate, stream());
  }
  void causal_conv(DType dt, const backend::CausalConv& a, const void* x, const void* k, void* y) override {
    launch_causal_conv(dt, a.B, a.L, a.C, a.Lk, a.anti_causal, a.fft, x, k, y, stream());
  }
  void causal_conv_kernel_grad(DType dt, const backend::CausalConv& a, const void* x, const void* g,
                               void* dk) override {
    launch_causal_conv_kernel_grad(dt, a.B, a.L, a.C, a.Lk, a.fft, x, g, dk, stream());
  }
  void wkv_backward(DType dt, const backend::Wkv& a, const void* y, const void* log_den, const void* gy, void* gk,
                    void* gv, void* gtd, void* gu) override {
    check_wkv_dtype(dt);
    launch_wkv_backward(wkv_launch(a), static_cast<const float*>(y), static_cast<const float*>(log_den),
                        static_cast<const float*>(gy), static_cast<float*>(gk), static_cast<float*>(gv),
                        static_cast<float*>(gtd), static_cast<float*>(gu), stream());
  }

 private:
  int index_;
  std::once_flag init_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Gemms> gemms_;
#ifdef DIMX_WITH_CUDNN
  std::unique_ptr<CudnnAttention> cudnn_;
  bool cudnn_failed_ = false;
#endif
};

// Registered when the library loads (linked in, or loaded by libdimx on first use of a CUDA
// device). Backends are never destroyed, since tensors held in statics may be freed after
// other statics are gone.
const bool g_registered = [] {
  backend::register_device_layer(Device::Type::cuda, backend::DeviceLayer{cuda_device_count, cuda_device_name, cuda_versions, cuda_pool_bytes, cuda_reset_pool_peak});
  backend::register_backend(Device::Type::cuda, [](int index) -> backend::Backend* {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      n = 0;
    }
    if (index < 0 || index >= n)
      throw Error("no device cuda:" + std::to_string(index) + " (" + std::to_string(n) + " CUDA device" +
                  (n == 1 ? "" : "s") + " here)");
    return new CudaBackend(index);
  });
  return true;
}();

}  // namespace

}  // namespace dimx::gpu

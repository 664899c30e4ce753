// cuDNN's fused flash attention through the graph API (see cudnn_attention.h). The graphs are
// the ones cuDNN's runtime-fusion engines recognise as attention: every tensor 4-D
// [batch, heads, rows, columns] with the head size innermost, the virtual intermediates f32, the
// weights handed to the second product in the element type. Here "batch" is the batch group the
// lengths vary over (spans.group) and "heads" the other one.
#include <cudnn.h>

#include <array>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "common.cuh"
#include "cudnn_attention.h"

namespace dimx::gpu {

namespace {

void check(cudnnStatus_t st, const char* what) {
  if (st == CUDNN_STATUS_SUCCESS) return;
  char msg[512] = "";
  cudnnGetLastErrorString(msg, sizeof msg);
  throw Error(std::string("dot_attention: cuDNN ") + what + " failed: " + cudnnGetErrorString(st) +
              (msg[0] ? std::string(" (") + msg + ")" : std::string()));
}

// One backend descriptor, destroyed with its owner.
class Desc {
 public:
  explicit Desc(cudnnBackendDescriptorType_t t) { check(cudnnBackendCreateDescriptor(t, &d_), "creating a descriptor"); }
  ~Desc() {
    if (d_) cudnnBackendDestroyDescriptor(d_);
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  cudnnBackendDescriptor_t get() const { return d_; }
  template <class T>
  Desc& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, const T& value) {
    check(cudnnBackendSetAttribute(d_, name, type, 1, &value), "setting an attribute");
    return *this;
  }
  template <class T>
  Desc& set_array(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, const T* values, int64_t n) {
    check(cudnnBackendSetAttribute(d_, name, type, n, values), "setting an attribute");
    return *this;
  }
  Desc& finalize() {
    check(cudnnBackendFinalize(d_), "finalizing a descriptor");
    return *this;
  }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

using Dims4 = std::array<int64_t, 4>;
constexpr auto kDesc = CUDNN_TYPE_BACKEND_DESCRIPTOR;

// The graph's tensors (by unique id; the intermediates numbered from kVirtual) and operations.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kScale, kSeqQ, kSeqKv, kFill };
constexpr int64_t kVirtual = 100;

class Graph {
 public:
  cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t dt, Dims4 dims, Dims4 strides, bool by_value = false) {
    Desc& t = keep(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const int64_t align = 16;
    t.set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, dt)
        .set_array(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, dims.data(), 4)
        .set_array(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, strides.data(), 4)
        .set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, uid)
        .set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, align);
    if (uid >= kVirtual) t.set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, true);
    if (by_value) t.set(CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, true);
    return t.finalize().get();
  }
  // A by-value f32 scalar.
  cudnnBackendDescriptor_t scalar(int64_t uid) { return tensor(uid, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, true); }
  // An intermediate, row-major.
  cudnnBackendDescriptor_t temp(cudnnDataType_t dt, Dims4 dims) {
    return tensor(next_++, dt, dims, {dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1});
  }

  // y = mode(x, b, t); gen_index: the axis (x only).
  void pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t prec, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                 cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y, int64_t axis = -1) {
    Desc& pw = keep(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    pw.set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, mode).set(CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, prec);
    if (axis >= 0) pw.set(CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, axis);
    pw.finalize();
    Desc& op = keep(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    op.set(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, kDesc, pw.get()).set(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, kDesc, x);
    if (b) op.set(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, kDesc, b);
    if (t) op.set(CUDNN_ATTR_OPERATION_POINTWISE_TDESC, kDesc, t);
    op.set(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, kDesc, y);
    op.set(CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1.f).set(CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1.f);
    add(op.finalize());
  }
  // A new f32 intermediate of x's dims: mode(x, b).
  cudnnBackendDescriptor_t pw(cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b, Dims4 dims) {
    cudnnBackendDescriptor_t y = temp(CUDNN_DATA_FLOAT, dims);
    pointwise(mode, CUDNN_DATA_FLOAT, x, b, nullptr, y);
    return y;
  }
  // c = a b over the last two dims; m, n, k: the lengths that bound them (nullable).
  void matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c,
              cudnnBackendDescriptor_t m = nullptr, cudnnBackendDescriptor_t n = nullptr, cudnnBackendDescriptor_t k = nullptr) {
    Desc& mm = keep(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    mm.set(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, CUDNN_DATA_FLOAT).finalize();
    Desc& op = keep(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    op.set(CUDNN_ATTR_OPERATION_MATMUL_ADESC, kDesc, a)
        .set(CUDNN_ATTR_OPERATION_MATMUL_BDESC, kDesc, b)
        .set(CUDNN_ATTR_OPERATION_MATMUL_CDESC, kDesc, c)
        .set(CUDNN_ATTR_OPERATION_MATMUL_DESC, kDesc, mm.get());
    if (m) op.set(CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, kDesc, m);
    if (n) op.set(CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, kDesc, n);
    if (k) op.set(CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, kDesc, k);
    add(op.finalize());
  }
  // y = the max or sum of x over the Dims where y has extent 1.
  void reduce(cudnnReduceTensorOp_t how, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    Desc& r = keep(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    r.set(CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, CUDNN_DATA_FLOAT)
        .set(CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, how)
        .finalize();
    Desc& op = keep(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    op.set(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, kDesc, x)
        .set(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, kDesc, y)
        .set(CUDNN_ATTR_OPERATION_REDUCTION_DESC, kDesc, r.get());
    add(op.finalize());
  }
  // s with the scores outside the lengths replaced by the fill value.
  cudnnBackendDescriptor_t padding_mask(cudnnBackendDescriptor_t s, Dims4 dims, cudnnBackendDescriptor_t seq_q,
                                        cudnnBackendDescriptor_t seq_kv, cudnnBackendDescriptor_t fill) {
    cudnnBackendDescriptor_t row = temp(CUDNN_DATA_INT32, dims), col = temp(CUDNN_DATA_INT32, dims);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, s, nullptr, nullptr, row, 2);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, s, nullptr, nullptr, col, 3);
    cudnnBackendDescriptor_t in_q = temp(CUDNN_DATA_BOOLEAN, dims), in_kv = temp(CUDNN_DATA_BOOLEAN, dims),
                             keep = temp(CUDNN_DATA_BOOLEAN, dims);
    pointwise(CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, row, seq_q, nullptr, in_q);
    pointwise(CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, col, seq_kv, nullptr, in_kv);
    pointwise(CUDNN_POINTWISE_LOGICAL_AND, CUDNN_DATA_BOOLEAN, in_q, in_kv, nullptr, keep);
    cudnnBackendDescriptor_t y = temp(CUDNN_DATA_FLOAT, dims);
    pointwise(CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, fill, keep, y);
    return y;
  }

  // The first engine configuration (heuristics mode A) whose plan builds; null where none.
  std::unique_ptr<Desc> build(cudnnHandle_t handle, int64_t& workspace) {
    Desc graph(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    graph.set_array(CUDNN_ATTR_OPERATIONGRAPH_OPS, kDesc, ops_.data(), int64_t(ops_.size()))
        .set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, handle);
    if (cudnnBackendFinalize(graph.get()) != CUDNN_STATUS_SUCCESS) return nullptr;
    Desc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    heur.set(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, kDesc, graph.get())
        .set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, CUDNN_HEUR_MODE_A);
    if (cudnnBackendFinalize(heur.get()) != CUDNN_STATUS_SUCCESS) return nullptr;
    int64_t count = 0;
    check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, kDesc, 0, &count, nullptr), "heuristics");
    std::vector<std::unique_ptr<Desc>> cfgs;
    std::vector<cudnnBackendDescriptor_t> raw;
    for (int64_t i = 0; i < count; ++i) {
      cfgs.push_back(std::make_unique<Desc>(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
      raw.push_back(cfgs.back()->get());
    }
    int64_t got = 0;
    if (count > 0)
      check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, kDesc, count, &got, raw.data()),
            "heuristics");
    for (int64_t i = 0; i < got; ++i) {
      auto plan = std::make_unique<Desc>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      plan->set(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, kDesc, raw[size_t(i)])
          .set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, handle);
      if (cudnnBackendFinalize(plan->get()) != CUDNN_STATUS_SUCCESS) continue;
      int64_t n = 0;
      check(cudnnBackendGetAttribute(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n,
                                     &workspace),
            "workspace size");
      return plan;
    }
    return nullptr;
  }

 private:
  Desc& keep(cudnnBackendDescriptorType_t t) {
    descs_.push_back(std::make_unique<Desc>(t));
    return *descs_.back();
  }
  void add(Desc& op) { ops_.push_back(op.get()); }

  int64_t next_ = kVirtual;
  std::vector<std::unique_ptr<Desc>> descs_;
  std::vector<cudnnBackendDescriptor_t> ops_;
};

// The problem in cuDNN's terms: group g of the batch is its batch, the other its heads.
struct Shape {
  int64_t b, h, sq, skv, d, dv;
  Dims4 q, kt, v, o, stats;  // strides; kt: K seen transposed
  bool padded;
};

Shape shape_of(const AttentionArgs& a) {
  const bool g1 = a.spans && a.span_group == 1;
  auto pick = [g1](int64_t s0, int64_t s1) { return g1 ? std::pair{s1, s0} : std::pair{s0, s1}; };
  Shape s{};
  s.b = g1 ? a.batch1 : a.batch0;
  s.h = g1 ? a.batch0 : a.batch1;
  s.sq = a.tq, s.skv = a.tk, s.d = a.d, s.dv = a.dv;
  auto [qb, qh] = pick(a.q_bs0, a.q_bs1);
  auto [kb, kh] = pick(a.k_bs0, a.k_bs1);
  auto [vb, vh] = pick(a.v_bs0, a.v_bs1);
  auto [ob, oh] = pick(a.o_bs0, a.o_bs1);
  // The statistics: [problem b0 * batch1 + b1, tq] contiguous.
  auto [sb, sh] = pick(a.batch1 * a.tq, a.tq);
  s.q = {qb, qh, a.q_rs, 1};
  s.kt = {kb, kh, 1, a.k_rs};
  s.v = {vb, vh, a.v_rs, 1};
  s.o = {ob, oh, a.o_rs, 1};
  s.stats = {sb, sh, 1, 1};
  s.padded = a.spans && (a.span_q || a.span_kv);
  return s;
}

std::string key_of(DType dt, const AttentionArgs& a) {
  const Shape s = shape_of(a);
  std::string k = std::to_string(int(dt)) + ":" + std::to_string(int(s.padded)) + ":" + std::to_string(int(a.lse != nullptr));
  for (int64_t x : {s.b, s.h, s.sq, s.skv, s.d, s.dv}) k += ":" + std::to_string(x);
  for (const Dims4* st : {&s.q, &s.kt, &s.v, &s.o})
    for (int64_t x : *st) k += ":" + std::to_string(x);
  return k;
}

__global__ void spans_kernel(int32_t* out, const int32_t* q, const int32_t* kv, int64_t n, int32_t tq, int32_t tk) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[i] = q ? q[i] : tq;
  out[n + i] = kv ? kv[i] : tk;
}

__global__ void scale_kernel(float* x, int64_t n, float f) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= f;
}

// Zeros the output rows of problem (b0, b1) past its query length (all of them where it has no
// key). seq: [q per index of the group, kv per index], as spans_kernel lays them out. bf16 and
// f16 zeros are the same bits.
__global__ void zero_rows_kernel(uint16_t* x, int64_t bs0, int64_t bs1, int64_t rs, int64_t rows, int64_t cols, int64_t batch1,
                                 int group, const int32_t* seq, int64_t nseq) {
  const int64_t b = blockIdx.y, b0 = b / batch1, b1 = b % batch1, g = group == 0 ? b0 : b1;
  const int64_t limit = seq[nseq + g] > 0 ? seq[g] : 0;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y + limit; r < rows; r += int64_t(gridDim.x) * blockDim.y)
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) x[b0 * bs0 + b1 * bs1 + r * rs + c] = 0;
}

void zero_padded_rows(const AttentionArgs& a, const int32_t* seq, int64_t nseq, cudaStream_t s) {
  const int64_t blocks = (a.tq + 7) / 8 < 64 ? (a.tq + 7) / 8 : 64;
  const dim3 block(32, 8), grid(unsigned(blocks), unsigned(a.batch0 * a.batch1));
  zero_rows_kernel<<<grid, block, 0, s>>>(static_cast<uint16_t*>(a.out), a.o_bs0, a.o_bs1, a.o_rs, a.tq, a.dv, a.batch1,
                                          a.span_group, seq, nseq);
  check_launch("dot_attention: zeroing padded rows");
}

// Row r of problem (b0, b1) of x into y (both [.., rows, cols] at their strides, 16-byte
// aligned rows), zeros where r >= the problem's key length.
__global__ void copy_rows_kernel(const uint16_t* x, int64_t xs0, int64_t xs1, int64_t xr, uint16_t* y, int64_t ys0,
                                 int64_t ys1, int64_t yr, int64_t rows, int64_t cols, int64_t batch1, int group,
                                 const int32_t* seq, int64_t nseq) {
  const int64_t b = blockIdx.y, b0 = b / batch1, b1 = b % batch1, len = seq[nseq + (group == 0 ? b0 : b1)];
  const int64_t vecs = cols / 8;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < rows * vecs; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / vecs, c = e % vecs * 8;
    const uint4 v = r < len ? *reinterpret_cast<const uint4*>(x + b0 * xs0 + b1 * xs1 + r * xr + c) : make_uint4(0, 0, 0, 0);
    *reinterpret_cast<uint4*>(y + b0 * ys0 + b1 * ys1 + r * yr + c) = v;
  }
}

// k and v of `from` into the scratch that `to` points at, their padded frames zeroed.
void copy_keys(const AttentionArgs& from, const AttentionArgs& to, const int32_t* seq, int64_t nseq, cudaStream_t s) {
  const int64_t blocks = (from.tk * std::max(from.d, from.dv) / 8 + 255) / 256;
  const dim3 grid(unsigned(blocks < 128 ? blocks : 128), unsigned(from.batch0 * from.batch1));
  copy_rows_kernel<<<grid, 256, 0, s>>>(static_cast<const uint16_t*>(from.k), from.k_bs0, from.k_bs1, from.k_rs,
                                        static_cast<uint16_t*>(const_cast<void*>(to.k)), to.k_bs0, to.k_bs1, to.k_rs,
                                        from.tk, from.d, from.batch1, from.span_group, seq, nseq);
  copy_rows_kernel<<<grid, 256, 0, s>>>(static_cast<const uint16_t*>(from.v), from.v_bs0, from.v_bs1, from.v_rs,
                                        static_cast<uint16_t*>(const_cast<void*>(to.v)), to.v_bs0, to.v_bs1, to.v_rs,
                                        from.tk, from.dv, from.batch1, from.span_group, seq, nseq);
  check_launch("dot_attention: copying the keys");
}


constexpr float kLog2e = 1.4426950408889634f;

size_t round_up(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

struct CudnnAttention::Plan {
  std::unique_ptr<Graph> graph;  // the descriptors the plan refers to
  std::unique_ptr<Desc> plan;
  int64_t workspace = 0;
};

CudnnAttention::CudnnAttention(cudaStream_t s) : stream_(s) {
  check(cudnnCreate(&handle_), "cudnnCreate");
  check(cudnnSetStream(handle_, s), "cudnnSetStream");
}

CudnnAttention::~CudnnAttention() {
  plans_.clear();
  if (handle_) cudnnDestroy(handle_);
}

bool CudnnAttention::fits(DType dt, const AttentionArgs& a) {
  if (dt != DType::bf16 && dt != DType::f16) return false;
  // 9.10.0 and 9.10.1 reject fp16/bf16 attention (known faults); the graphs are those of 9.x.
  const size_t v = cudnnGetVersion();
  if (v < 90000 || (v >= 91000 && v < 91100)) return false;
  if (!a.spans || a.bias || a.row_scale || a.drop_p > 0) return false;
  // Its engines take the rows' maxima before the scale (right for a positive one only: with
  // scale -0.3 the statistics came out wrong and the backward's dQ NaN, cuDNN 9.14 on an H200).
  if (!(a.scale > 0)) return false;
  if (a.d % 8 || a.dv % 8 || a.d > 128 || a.dv > 128 || a.tq < 1 || a.tk < 1) return false;
  // 16-byte aligned rows; every problem its own q, k, v and output (no broadcast operand).
  for (int64_t x : {a.q_rs, a.k_rs, a.v_rs, a.o_rs, a.q_bs0, a.q_bs1, a.k_bs0, a.k_bs1, a.v_bs0, a.v_bs1, a.o_bs0, a.o_bs1})
    if (x % 8) return false;
  for (const void* p : {a.q, a.k, a.v, static_cast<const void*>(a.out)})
    if (reinterpret_cast<uintptr_t>(p) % 16) return false;
  auto own = [](int64_t n, int64_t stride) { return n == 1 || stride != 0; };
  return own(a.batch0, a.q_bs0) && own(a.batch0, a.k_bs0) && own(a.batch0, a.v_bs0) && own(a.batch1, a.q_bs1) &&
         own(a.batch1, a.k_bs1) && own(a.batch1, a.v_bs1) && own(a.tk, a.k_rs) && own(a.tk, a.v_rs);
}

std::shared_ptr<CudnnAttention::Plan> CudnnAttention::plan(DType dt, const AttentionArgs& a) {
  const std::string key = key_of(dt, a);
  if (auto it = plans_.find(key); it != plans_.end()) return it->second;
  const cudnnDataType_t io = dt == DType::bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
  const Shape s = shape_of(a);
  auto p = std::make_shared<Plan>();
  p->graph = std::make_unique<Graph>();
  Graph& gr = *p->graph;
  const Dims4 scores{s.b, s.h, s.sq, s.skv}, rows{s.b, s.h, s.sq, 1};
  cudnnBackendDescriptor_t q = gr.tensor(kQ, io, {s.b, s.h, s.sq, s.d}, s.q);
  cudnnBackendDescriptor_t kt = gr.tensor(kK, io, {s.b, s.h, s.d, s.skv}, s.kt);
  cudnnBackendDescriptor_t o = gr.tensor(kO, io, {s.b, s.h, s.sq, s.dv}, s.o);
  cudnnBackendDescriptor_t scale = gr.scalar(kScale);
  cudnnBackendDescriptor_t seq_q = nullptr, seq_kv = nullptr, fill = nullptr;
  if (s.padded) {
    seq_q = gr.tensor(kSeqQ, CUDNN_DATA_INT32, {s.b, 1, 1, 1}, {1, 1, 1, 1});
    seq_kv = gr.tensor(kSeqKv, CUDNN_DATA_INT32, {s.b, 1, 1, 1}, {1, 1, 1, 1});
    fill = gr.scalar(kFill);
  }
  try {
    // S = scale Q K^T, masked; P = softmax(S) with the rows' statistics ln sum exp S; O = P V.
    cudnnBackendDescriptor_t v = gr.tensor(kV, io, {s.b, s.h, s.skv, s.dv}, s.v);
    cudnnBackendDescriptor_t e = gr.temp(CUDNN_DATA_FLOAT, scores);
    gr.matmul(q, kt, e, seq_q, seq_kv);
    cudnnBackendDescriptor_t sc = gr.pw(CUDNN_POINTWISE_MUL, e, scale, scores);
    if (s.padded) sc = gr.padding_mask(sc, scores, seq_q, seq_kv, fill);
    cudnnBackendDescriptor_t mx = gr.temp(CUDNN_DATA_FLOAT, rows), sum = gr.temp(CUDNN_DATA_FLOAT, rows);
    gr.reduce(CUDNN_REDUCE_TENSOR_MAX, sc, mx);
    cudnnBackendDescriptor_t ex = gr.pw(CUDNN_POINTWISE_EXP, gr.pw(CUDNN_POINTWISE_SUB, sc, mx, scores), nullptr, scores);
    gr.reduce(CUDNN_REDUCE_TENSOR_ADD, ex, sum);
    cudnnBackendDescriptor_t lg = gr.pw(CUDNN_POINTWISE_LOG, sum, nullptr, rows);
    // Without a backward to follow the statistics stay virtual (the engine wants them formed).
    cudnnBackendDescriptor_t stats =
        a.lse ? gr.tensor(kStats, CUDNN_DATA_FLOAT, rows, s.stats) : gr.temp(CUDNN_DATA_FLOAT, rows);
    gr.pointwise(CUDNN_POINTWISE_ADD, CUDNN_DATA_FLOAT, mx, lg, nullptr, stats);
    cudnnBackendDescriptor_t w = gr.temp(io, scores);  // the second product takes P in the element type
    gr.pointwise(CUDNN_POINTWISE_DIV, CUDNN_DATA_FLOAT, ex, sum, nullptr, w);
    gr.matmul(w, v, o, seq_q, nullptr, seq_kv);
    p->plan = gr.build(handle_, p->workspace);
  } catch (const Error&) {
    p->plan.reset();  // a descriptor this cuDNN does not know: no engine
  }
  if (!p->plan) p.reset();
  plans_[key] = p;
  return p;
}

bool CudnnAttention::forward(DType dt, const AttentionArgs& a0) {
  if (!fits(dt, a0)) return false;
  // cuDNN's kernels read the keys and values past a sequence's length up to the end of their
  // tile and let weights of 0 multiply them: padding that holds NaN would reach valid rows. With
  // key lengths, k and v go to scratch [batch, heads, tk, d] with their padded frames zeroed.
  AttentionArgs a = a0;
  const bool clean = a.spans && a.span_kv;
  const int64_t problems = a.batch0 * a.batch1;
  const size_t k_bytes = clean ? round_up(size_t(problems * a.tk * a.d) * 2) : 0,
               v_bytes = clean ? round_up(size_t(problems * a.tk * a.dv) * 2) : 0;
  if (clean) {
    // In cuDNN's order [batch, heads, tk, d]: the lengths' group outermost.
    const int64_t hk = a.tk * a.d, hv = a.tk * a.dv;
    a.k_rs = a.d, a.v_rs = a.dv;
    if (a.span_group == 0) a.k_bs0 = a.batch1 * hk, a.k_bs1 = hk, a.v_bs0 = a.batch1 * hv, a.v_bs1 = hv;
    else a.k_bs0 = hk, a.k_bs1 = a.batch0 * hk, a.v_bs0 = hv, a.v_bs1 = a.batch0 * hv;
  }
  std::shared_ptr<Plan> p = plan(dt, a);
  if (!p) return false;
  const Shape s = shape_of(a);
  const int64_t nseq = s.b;
  const size_t seq_bytes = round_up(size_t(2 * nseq) * 4);
  Scratch<char> scratch(int64_t(seq_bytes + k_bytes + v_bytes + size_t(p->workspace)), stream_, "dot_attention");
  int32_t* seq = reinterpret_cast<int32_t*>(scratch.p);
  if (s.padded) {
    spans_kernel<<<unsigned((nseq + 255) / 256), 256, 0, stream_>>>(seq, a.span_q, a.span_kv, nseq, int32_t(a.tq),
                                                                     int32_t(a.tk));
    check_launch("dot_attention: spans");
  }
  if (clean) {
    a.k = scratch.p + seq_bytes;
    a.v = scratch.p + seq_bytes + k_bytes;
    copy_keys(a0, a, seq, nseq, stream_);
  }
  float scale = float(a.scale);
  float fill = cudnnGetVersion() >= 91000 ? -INFINITY : std::numeric_limits<float>::lowest();
  std::vector<int64_t> uids{kQ, kK, kV, kO, kScale};
  std::vector<void*> ptrs{const_cast<void*>(a.q), const_cast<void*>(a.k), const_cast<void*>(a.v), a.out, &scale};
  if (a.lse) uids.push_back(kStats), ptrs.push_back(a.lse);
  if (s.padded) {
    uids.insert(uids.end(), {kSeqQ, kSeqKv, kFill});
    ptrs.insert(ptrs.end(), {seq, seq + nseq, &fill});
  }
  execute(p->plan->get(), uids, ptrs, p->workspace ? scratch.p + seq_bytes + k_bytes + v_bytes : nullptr,
          "executing the attention forward");
  if (s.padded) zero_padded_rows(a, seq, nseq, stream_);
  if (a.lse) {
    const int64_t n = problems * a.tq;
    scale_kernel<<<unsigned((n + 255) / 256), 256, 0, stream_>>>(static_cast<float*>(a.lse), n, kLog2e);
    check_launch("dot_attention: the rows' statistics");
  }
  return true;
}

void CudnnAttention::execute(cudnnBackendDescriptor_t plan, const std::vector<int64_t>& uids,
                             const std::vector<void*>& ptrs, void* workspace, const char* what) {
  Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  pack.set_array(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, uids.data(), int64_t(uids.size()))
      .set_array(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, ptrs.data(), int64_t(ptrs.size()))
      .set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, workspace)
      .finalize();
  check(cudnnBackendExecute(handle_, plan, pack.get()), what);
}

}  // namespace dimx::gpu

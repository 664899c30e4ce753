// backend::Gemm on a CUDA device (see gemm.h).
#include "gemm.h"

#include <dimx/matmul.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "launch.h"
#include "sanitizer_marks.h"

namespace dimx::gpu {

namespace {

void check(cudaError_t e, const char* call) {
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw Error(std::string(call) + " failed: " + cudaGetErrorString(e));
  }
}

void check(cublasStatus_t s, const char* call) {
  if (s != CUBLAS_STATUS_SUCCESS) throw Error(std::string(call) + " failed: cuBLAS status " + std::to_string(int(s)));
}

cudaDataType cuda_type(DType dt) {
  switch (dt) {
    case DType::f32: return CUDA_R_32F;
    case DType::f64: return CUDA_R_64F;
    case DType::bf16: return CUDA_R_16BF;
    default: return CUDA_R_16F;
  }
}

// bf16/f16 accumulate in f32; f32 in TF32 only where allowed.
cublasComputeType_t compute_type(DType dt) {
  return dt == DType::f64                      ? CUBLAS_COMPUTE_64F
         : dt == DType::f32 && allow_tf32()    ? CUBLAS_COMPUTE_32F_FAST_TF32
                                               : CUBLAS_COMPUTE_32F;
}

// The largest power of two up to 256 that divides the address.
int alignment(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 1 && v % uintptr_t(a) != 0) a /= 2;
  return a;
}

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

}  // namespace

// A cuBLASLt product with the bias epilogue for one shape, layout and alignment.
struct Gemms::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool ok = false;
  ~Plan() {
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

Gemms::Gemms(backend::Backend& be, cudaStream_t s) : be_(be), stream_(s) {
  check(cublasCreate(&blas_), "cublasCreate");
  check(cublasSetStream(blas_, stream_), "cublasSetStream");
  check(cublasLtCreate(&lt_), "cublasLtCreate");
}

Gemms::~Gemms() {
  plans_.clear();
  if (workspace_) cudaFree(workspace_);
  if (lt_) cublasLtDestroy(lt_);
  if (blas_) cublasDestroy(blas_);
}

void Gemms::run(DType dt, const backend::Gemm& g) {
  if (dt != DType::f32 && dt != DType::f64 && !is_half(dt))
    throw Error(std::string("matmul: dtype ") + dtype_name(dt) + " not supported on cuda (f32, f64, bf16, f16)");
  if (g.bias && g.k_lengths) throw Error("matmul: internal error: a GEMM with both a bias and K lengths");
  if (g.k_lengths) {
    if (g.k_groups <= 0 || g.k % g.k_groups != 0)
      throw Error("matmul: internal error: " + std::to_string(g.k_groups) + " K groups do not divide k = " +
                  std::to_string(g.k));
    if (g.k_groups > kMaxKGroups)
      throw Error("matmul: internal error: " + std::to_string(g.k_groups) + " K groups, at most " +
                  std::to_string(kMaxKGroups) + " on cuda");
    return packed(dt, g);
  }
  if (g.bias && g.k > 0 && with_bias(dt, g)) return;
  plain(dt, g, g.a, g.b, g.k);
  if (g.bias) {  // no cuBLASLt plan for this shape: the bias in a pass of its own
    const Shape shape{g.batch, g.m, g.n};
    const Strides cs{g.stride_c, g.ldc, 1};
    be_.binary(BinaryOp::add, dt, shape, {g.c, cs}, {g.bias, Strides{0, 0, 1}}, {g.c, cs});
  }
}

// C = op(A) op(B) with g's shapes and C, over k contracted indices of a and b.
void Gemms::plain(DType dt, const backend::Gemm& g, const void* a, const void* b, int64_t k) {
  const int64_t es = int64_t(dtype_size(dt));
  if (k == 0) {
    for (int64_t i = 0; i < g.batch; ++i)
      check(cudaMemset2DAsync(static_cast<char*>(g.c) + i * g.stride_c * es, size_t(g.ldc * es), 0, size_t(g.n * es),
                              size_t(g.m), stream_),
            "cudaMemset2DAsync");
    return;
  }
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  const float one_f = 1, zero_f = 0;
  const double one_d = 1, zero_d = 0;
  const bool f64 = dt == DType::f64;
  const void* one = f64 ? static_cast<const void*>(&one_d) : &one_f;
  const void* zero = f64 ? static_cast<const void*>(&zero_d) : &zero_f;
  const cudaDataType t = cuda_type(dt);
  check(cublasGemmStridedBatchedEx(blas_, g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   int(g.n), int(g.m), int(k), one, b, t, int(g.ldb), g.stride_b, a, t, int(g.lda),
                                   g.stride_a, zero, g.c, t, int(g.ldc), g.stride_c, int(g.batch), compute_type(dt),
                                   CUBLAS_GEMM_DEFAULT),
        "cublasGemmStridedBatchedEx");
  if (is_half(dt)) mark_initialized(stream_, g.c, g.batch, g.m, g.n, g.ldc, g.stride_c, size_t(es));
}

// The valid K indices of both operands packed densely, then one product over them: a product
// per group would leave most of the GPU idle where the groups are short or C is small (the
// groups' products depend on each other through C).
void Gemms::packed(DType dt, const backend::Gemm& g) {
  KGroups kg{};
  kg.n = int(g.k_groups);
  kg.group = g.k / g.k_groups;
  int64_t total = 0;
  for (int64_t o = 0; o < g.k_groups; ++o) {
    kg.start[o] = total;
    total += std::clamp<int64_t>(g.k_lengths[o], 0, kg.group);
  }
  kg.start[g.k_groups] = total;
  if (total >= int64_t(1) << 31 || g.m >= int64_t(1) << 31 || g.n >= int64_t(1) << 31)
    throw Error("matmul: a product over " + std::to_string(total) + " valid frames of " + std::to_string(g.m) + " x " +
                std::to_string(g.n) + " is too large for one launch on cuda");
  backend::Gemm h = g;
  h.k = total;
  h.k_lengths = nullptr;
  h.k_groups = 0;
  if (total == 0) {
    plain(dt, h, g.a, g.b, 0);
    return;
  }
  const int64_t es = int64_t(dtype_size(dt));
  // op(A) is [m, k]: stored [k, m] (trans_a: K selects rows) or [m, k]; op(B) is [k, n]:
  // stored [k, n] (K selects rows) or [n, k] (trans_b). Packed, each keeps its transposition.
  std::shared_ptr<Storage> pa = be_.allocate(size_t(g.batch * total * g.m * es));
  std::shared_ptr<Storage> pb = be_.allocate(size_t(g.batch * total * g.n * es));
  launch_compact_k(es, g.a, g.lda, g.m, g.trans_a, g.batch, g.stride_a, total, kg, pa->data, stream_);
  launch_compact_k(es, g.b, g.ldb, g.n, !g.trans_b, g.batch, g.stride_b, total, kg, pb->data, stream_);
  h.lda = g.trans_a ? g.m : total;
  h.stride_a = total * g.m;
  h.ldb = g.trans_b ? total : g.n;
  h.stride_b = total * g.n;
  plain(dt, h, pa->data, pb->data, total);
}

// C = op(A) op(B) + bias through cuBLASLt's bias epilogue; false where it has no algorithm
// for this shape (the caller then adds the bias itself), or where DIMX_GEMM_EPILOGUE=0 asks
// for the plain GEMM and a separate bias addition (a switch for checking tools).
bool Gemms::with_bias(DType dt, const backend::Gemm& g) {
  static const bool epilogue = [] {
    const char* e = std::getenv("DIMX_GEMM_EPILOGUE");
    return !(e && std::string(e) == "0");
  }();
  if (!epilogue) return false;
  const int align = std::min({alignment(g.a), alignment(g.b), alignment(g.c), alignment(g.bias)});
  const Key key{int(dt), g.batch,    g.m,        g.n,        g.k,        g.trans_a,   g.trans_b, g.lda,
                g.ldb,   g.ldc,      g.stride_a, g.stride_b, g.stride_c, allow_tf32(), align};
  std::unique_ptr<Plan>& p = plans_[key];
  if (!p) {
    p = std::make_unique<Plan>();
    if (!workspace_) check(cudaMalloc(&workspace_, kWorkspaceBytes), "cudaMalloc(cuBLASLt workspace)");
    const cudaDataType t = cuda_type(dt), scale = dt == DType::f64 ? CUDA_R_64F : CUDA_R_32F;
    check(cublasLtMatmulDescCreate(&p->desc, compute_type(dt), scale), "cublasLtMatmulDescCreate");
    // Column-major, as in plain(): cuBLASLt's A is our B and its B our A.
    const cublasOperation_t op_a = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    check(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a), "cublasLtMatmulDescSetAttribute");
    check(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b), "cublasLtMatmulDescSetAttribute");
    check(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue),
          "cublasLtMatmulDescSetAttribute");
    auto layout = [&](cublasLtMatrixLayout_t& l, int64_t rows, int64_t cols, int64_t ld, int64_t stride) {
      check(cublasLtMatrixLayoutCreate(&l, t, uint64_t(rows), uint64_t(cols), ld), "cublasLtMatrixLayoutCreate");
      if (g.batch > 1) {
        const int32_t count = int32_t(g.batch);
        check(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count),
              "cublasLtMatrixLayoutSetAttribute");
        check(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride),
              "cublasLtMatrixLayoutSetAttribute");
      }
    };
    layout(p->a, op_a == CUBLAS_OP_N ? g.n : g.k, op_a == CUBLAS_OP_N ? g.k : g.n, g.ldb, g.stride_b);
    layout(p->b, op_b == CUBLAS_OP_N ? g.k : g.m, op_b == CUBLAS_OP_N ? g.m : g.k, g.lda, g.stride_a);
    layout(p->c, g.n, g.m, g.ldc, g.stride_c);
    cublasLtMatmulPreference_t pref = nullptr;
    check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    const uint64_t ws = kWorkspaceBytes;
    const uint32_t al = uint32_t(align);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
      cublasLtMatmulPreferenceSetAttribute(pref, attr, &al, sizeof al);
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t s =
        cublasLtMatmulAlgoGetHeuristic(lt_, p->desc, p->a, p->b, p->c, p->c, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    p->ok = s == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS;
    if (p->ok) p->algo = result.algo;
  }
  if (!p->ok) return false;
  check(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof g.bias),
        "cublasLtMatmulDescSetAttribute");
  const float one_f = 1, zero_f = 0;
  const double one_d = 1, zero_d = 0;
  const bool f64 = dt == DType::f64;
  check(cublasLtMatmul(lt_, p->desc, f64 ? static_cast<const void*>(&one_d) : &one_f, g.b, p->a, g.a, p->b,
                       f64 ? static_cast<const void*>(&zero_d) : &zero_f, g.c, p->c, g.c, p->c, &p->algo, workspace_,
                       kWorkspaceBytes, stream_),
        "cublasLtMatmul");
  if (is_half(dt)) mark_initialized(stream_, g.c, g.batch, g.m, g.n, g.ldc, g.stride_c, dtype_size(dt));
  return true;
}

}  // namespace dimx::gpu

// Batched GEMM through OpenBLAS: one cblas call per batch entry on strided operands.
#include <cblas.h>

#include <cstring>

#include <vector>

#include "cpu/cpu_backend.h"
#include "half.h"

namespace dimx::cpu {

namespace {

// Widens a bf16/f16 matrix (rows x cols of op(M), with leading dimension ld) to row-major f32.
void widen(DType dt, const uint16_t* m, int64_t rows, int64_t cols, bool trans, int64_t ld, float* out) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      uint16_t h = trans ? m[c * ld + r] : m[r * ld + c];
      out[r * cols + c] = dt == DType::bf16 ? half::bf16_to_f32(h) : half::f16_to_f32(h);
    }
}

}  // namespace

// bf16/f16: operands widened to f32, one f32 GEMM (f32 accumulation), the result rounded once.
void CpuBackend::gemm_half(DType dt, const backend::Gemm& g) {
  std::vector<float> a(size_t(g.m * g.k)), b(size_t(g.k * g.n)), c(size_t(g.m * g.n));
  for (int64_t i = 0; i < g.batch; ++i) {
    widen(dt, static_cast<const uint16_t*>(g.a) + i * g.stride_a, g.m, g.k, g.trans_a, g.lda, a.data());
    widen(dt, static_cast<const uint16_t*>(g.b) + i * g.stride_b, g.k, g.n, g.trans_b, g.ldb, b.data());
    if (g.k > 0)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(g.m), blasint(g.n), blasint(g.k), 1.0f, a.data(),
                  blasint(g.k), b.data(), blasint(g.n), 0.0f, c.data(), blasint(g.n));
    else
      std::fill(c.begin(), c.end(), 0.0f);
    uint16_t* out = static_cast<uint16_t*>(g.c) + i * g.stride_c;
    for (int64_t r = 0; r < g.m; ++r)
      for (int64_t col = 0; col < g.n; ++col) {
        float v = c[size_t(r * g.n + col)];
        out[r * g.ldc + col] = dt == DType::bf16 ? half::f32_to_bf16(v) : half::f32_to_f16(v);
      }
  }
}

void check_blas_kernels();  // src/runtime_info.cpp

void CpuBackend::gemm(DType dt, const backend::Gemm& g) {
  check_blas_kernels();
  const auto ta = g.trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = g.trans_b ? CblasTrans : CblasNoTrans;
  if (is_half(dt)) return gemm_half(dt, g);
  if (dt != DType::f32 && dt != DType::f64)
    throw Error(std::string("matmul: dtype ") + dtype_name(dt) + " not supported (f32, f64, bf16, f16)");
  const size_t es = dtype_size(dt);
  for (int64_t i = 0; i < g.batch; ++i) {
    char* c = static_cast<char*>(g.c) + i * g.stride_c * int64_t(es);
    if (g.k == 0) {
      for (int64_t r = 0; r < g.m; ++r) std::memset(c + r * g.ldc * int64_t(es), 0, size_t(g.n) * es);
      continue;
    }
    const char* a = static_cast<const char*>(g.a) + i * g.stride_a * int64_t(es);
    const char* b = static_cast<const char*>(g.b) + i * g.stride_b * int64_t(es);
    if (dt == DType::f32)
      cblas_sgemm(CblasRowMajor, ta, tb, blasint(g.m), blasint(g.n), blasint(g.k), 1.0f,
                  reinterpret_cast<const float*>(a), blasint(g.lda), reinterpret_cast<const float*>(b),
                  blasint(g.ldb), 0.0f, reinterpret_cast<float*>(c), blasint(g.ldc));
    else
      cblas_dgemm(CblasRowMajor, ta, tb, blasint(g.m), blasint(g.n), blasint(g.k), 1.0,
                  reinterpret_cast<const double*>(a), blasint(g.lda), reinterpret_cast<const double*>(b),
                  blasint(g.ldb), 0.0, reinterpret_cast<double*>(c), blasint(g.ldc));
  }
}

}  // namespace dimx::cpu

// Batched GEMM through OpenBLAS: one cblas call per batch entry on strided operands.
#include <cblas.h>

#include <cstring>

#include "cpu/cpu_backend.h"

namespace dimx::cpu {

void CpuBackend::gemm(DType dt, const backend::Gemm& g) {
  const auto ta = g.trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = g.trans_b ? CblasTrans : CblasNoTrans;
  if (dt != DType::f32 && dt != DType::f64)
    throw Error(std::string("matmul: dtype ") + dtype_name(dt) + " not supported (f32, f64)");
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

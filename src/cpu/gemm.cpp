// Batched GEMM through OpenBLAS: one cblas call per batch entry on strided operands.
#include <cblas.h>
#include <xsimd/xsimd.hpp>

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

// C = op(A) op(B) for one small matrix product (m * n * k <= kSmallGemm): each vector of a row
// of C stays in a register over the k products (fused multiply-adds); the rest, and transposed
// B, element by element. OpenBLAS's call and buffer setup cost more than the whole product at
// these sizes.
constexpr int64_t kSmallGemm = 4096;

template <class T>
void small_gemm(const backend::Gemm& g, const T* __restrict a, const T* __restrict b, T* __restrict c) {
  using V = xsimd::batch<T>;
  constexpr int64_t W = int64_t(V::size);
  auto A = [&](int64_t r, int64_t p) { return g.trans_a ? a[p * g.lda + r] : a[r * g.lda + p]; };
  for (int64_t r = 0; r < g.m; ++r) {
    T* __restrict cr = c + r * g.ldc;
    int64_t j0 = 0;
    if (!g.trans_b)  // whole vectors of C's row kept in a register over the k products
      for (; j0 + W <= g.n; j0 += W) {
        V s(T(0));
        for (int64_t p = 0; p < g.k; ++p) s = xsimd::fma(V(A(r, p)), V::load_unaligned(b + p * g.ldb + j0), s);
        s.store_unaligned(cr + j0);
      }
    for (int64_t j = j0; j < g.n; ++j) {
      T s = 0;
      for (int64_t p = 0; p < g.k; ++p) s += A(r, p) * (g.trans_b ? b[j * g.ldb + p] : b[p * g.ldb + j]);
      cr[j] = s;
    }
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
  const auto ta = g.trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = g.trans_b ? CblasTrans : CblasNoTrans;
  if (is_half(dt)) return gemm_half(dt, g);
  if (dt != DType::f32 && dt != DType::f64)
    throw Error(std::string("matmul: dtype ") + dtype_name(dt) + " not supported (f32, f64, bf16, f16)");
  const bool small = g.m * g.n * g.k <= kSmallGemm;
  if (!small) check_blas_kernels();
  const size_t es = dtype_size(dt);
  for (int64_t i = 0; i < g.batch; ++i) {
    char* c = static_cast<char*>(g.c) + i * g.stride_c * int64_t(es);
    if (g.k == 0) {
      for (int64_t r = 0; r < g.m; ++r) std::memset(c + r * g.ldc * int64_t(es), 0, size_t(g.n) * es);
      continue;
    }
    const char* a = static_cast<const char*>(g.a) + i * g.stride_a * int64_t(es);
    const char* b = static_cast<const char*>(g.b) + i * g.stride_b * int64_t(es);
    if (small) {
      if (dt == DType::f32)
        small_gemm(g, reinterpret_cast<const float*>(a), reinterpret_cast<const float*>(b), reinterpret_cast<float*>(c));
      else
        small_gemm(g, reinterpret_cast<const double*>(a), reinterpret_cast<const double*>(b), reinterpret_cast<double*>(c));
      continue;
    }
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

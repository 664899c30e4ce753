// Batched GEMM through OpenBLAS: one cblas call per batch entry on strided operands.
#include <cblas.h>
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cstring>
#include <type_traits>

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

// C (+)= op(A) op(B) for one small matrix product (m * n * k <= kSmallGemm): each vector of
// four rows of C stays in a register over the k products (fused multiply-adds); the rest, and
// transposed B, element by element. OpenBLAS's call and buffer setup cost more than the whole
// product at these sizes.
constexpr int64_t kSmallGemm = 4096;

// Columns [j0, ...) of rows r.. r + R of C in whole vectors of V, each kept in a register over
// the k products (fused multiply-adds; R rows at once give R independent chains); returns the
// first column not covered.
template <class V, int R, class T>
int64_t rows_vectors(const backend::Gemm& g, int64_t k, const T* __restrict a, const T* __restrict b,
                     T* __restrict c, int64_t r, int64_t j0, bool accumulate) {
  constexpr int64_t W = int64_t(V::size);
  auto A = [&](int64_t row, int64_t p) { return g.trans_a ? a[p * g.lda + row] : a[row * g.lda + p]; };
  for (; j0 + W <= g.n; j0 += W) {
    V s[R];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) s[i] = accumulate ? V::load_unaligned(c + (r + i) * g.ldc + j0) : V(T(0));
    for (int64_t p = 0; p < k; ++p) {
      const V bv = V::load_unaligned(b + p * g.ldb + j0);
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) s[i] = xsimd::fma(V(A(r + i, p)), bv, s[i]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) s[i].store_unaligned(c + (r + i) * g.ldc + j0);
  }
  return j0;
}

// Rows r.. r + R of C: the widest vectors first, then half-width ones (an 8-wide row under
// AVX-512), then scalars.
template <int R, class T>
void rows(const backend::Gemm& g, int64_t k, const T* __restrict a, const T* __restrict b, T* __restrict c, int64_t r,
          bool accumulate) {
  using Wide = xsimd::batch<T>;
  using Half = xsimd::make_sized_batch_t<T, Wide::size / 2>;
  int64_t j0 = 0;
  if (!g.trans_b) {
    j0 = rows_vectors<Wide, R>(g, k, a, b, c, r, j0, accumulate);
    if constexpr (!std::is_void_v<Half>) j0 = rows_vectors<Half, R>(g, k, a, b, c, r, j0, accumulate);
  }
  auto A = [&](int64_t row, int64_t p) { return g.trans_a ? a[p * g.lda + row] : a[row * g.lda + p]; };
  for (int i = 0; i < R; ++i)
    for (int64_t j = j0; j < g.n; ++j) {
      T* cr = c + (r + i) * g.ldc;
      T sum = accumulate ? cr[j] : T(0);
      for (int64_t p = 0; p < k; ++p) sum += A(r + i, p) * (g.trans_b ? b[j * g.ldb + p] : b[p * g.ldb + j]);
      cr[j] = sum;
    }
}

template <class T>
void small_gemm(const backend::Gemm& g, int64_t k, const T* __restrict a, const T* __restrict b, T* __restrict c,
                bool accumulate) {
  int64_t r = 0;
  for (; r + 4 <= g.m; r += 4) rows<4>(g, k, a, b, c, r, accumulate);
  for (; r < g.m; ++r) rows<1>(g, k, a, b, c, r, accumulate);
}

// C (+)= op(A) op(B) over k contracted indices, one matrix.
template <class T>
void product(const backend::Gemm& g, int64_t k, const T* a, const T* b, T* c, bool accumulate) {
  if (g.m * g.n * k <= kSmallGemm) return small_gemm(g, k, a, b, c, accumulate);
  const auto ta = g.trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = g.trans_b ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, ta, tb, blasint(g.m), blasint(g.n), blasint(k), 1.0f, a, blasint(g.lda), b,
                blasint(g.ldb), accumulate ? 1.0f : 0.0f, c, blasint(g.ldc));
  else
    cblas_dgemm(CblasRowMajor, ta, tb, blasint(g.m), blasint(g.n), blasint(k), 1.0, a, blasint(g.lda), b,
                blasint(g.ldb), accumulate ? 1.0 : 0.0, c, blasint(g.ldc));
}

// One batch entry: C = op(A) op(B) (+ bias), over the valid part of each K group where
// k_lengths is set (the groups in order, each added into C).
template <class T>
void one_matrix(const backend::Gemm& g, const T* a, const T* b, T* c) {
  bool written = false;
  if (g.bias) {
    const T* bias = static_cast<const T*>(g.bias);
    for (int64_t r = 0; r < g.m; ++r) std::copy(bias, bias + g.n, c + r * g.ldc);
    written = true;
  }
  if (g.k_lengths) {
    const int64_t kg = g.k / g.k_groups;
    for (int64_t o = 0; o < g.k_groups; ++o) {
      const int64_t len = std::clamp<int64_t>(g.k_lengths[o], 0, kg), k0 = o * kg;
      if (len == 0) continue;
      product(g, len, a + (g.trans_a ? k0 * g.lda : k0), b + (g.trans_b ? k0 : k0 * g.ldb), c, written);
      written = true;
    }
  } else if (g.k > 0) {
    product(g, g.k, a, b, c, written);
    written = true;
  }
  if (!written)
    for (int64_t r = 0; r < g.m; ++r) std::fill(c + r * g.ldc, c + r * g.ldc + g.n, T(0));
}

}  // namespace

// bf16/f16: operands (and the bias) widened to f32, one f32 product (f32 accumulation, the K
// groups summed in f32), the result rounded once.
void CpuBackend::gemm_half(DType dt, const backend::Gemm& g) {
  std::vector<float> a(size_t(g.m * g.k)), b(size_t(g.k * g.n)), c(size_t(g.m * g.n)), bias;
  if (g.bias) {
    bias.resize(size_t(g.n));
    widen(dt, static_cast<const uint16_t*>(g.bias), 1, g.n, false, g.n, bias.data());
  }
  backend::Gemm f = g;
  f.batch = 1;
  f.trans_a = f.trans_b = false;
  f.lda = g.k;
  f.ldb = g.n;
  f.ldc = g.n;
  f.bias = g.bias ? bias.data() : nullptr;
  for (int64_t i = 0; i < g.batch; ++i) {
    widen(dt, static_cast<const uint16_t*>(g.a) + i * g.stride_a, g.m, g.k, g.trans_a, g.lda, a.data());
    widen(dt, static_cast<const uint16_t*>(g.b) + i * g.stride_b, g.k, g.n, g.trans_b, g.ldb, b.data());
    one_matrix<float>(f, a.data(), b.data(), c.data());
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
  if (g.bias && g.k_lengths) throw Error("matmul: internal error: a GEMM with both a bias and K lengths");
  if (g.k_lengths && (g.k_groups <= 0 || g.k % g.k_groups != 0))
    throw Error("matmul: internal error: " + std::to_string(g.k_groups) + " K groups do not divide k = " +
                std::to_string(g.k));
  if (is_half(dt)) return gemm_half(dt, g);
  if (dt != DType::f32 && dt != DType::f64)
    throw Error(std::string("matmul: dtype ") + dtype_name(dt) + " not supported (f32, f64, bf16, f16)");
  if (g.m * g.n * g.k > kSmallGemm) check_blas_kernels();
  for (int64_t i = 0; i < g.batch; ++i) {
    if (dt == DType::f32)
      one_matrix(g, static_cast<const float*>(g.a) + i * g.stride_a, static_cast<const float*>(g.b) + i * g.stride_b,
                 static_cast<float*>(g.c) + i * g.stride_c);
    else
      one_matrix(g, static_cast<const double*>(g.a) + i * g.stride_a, static_cast<const double*>(g.b) + i * g.stride_b,
                 static_cast<double*>(g.c) + i * g.stride_c);
  }
}

}  // namespace dimx::cpu

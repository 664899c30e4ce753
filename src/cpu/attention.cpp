// Fused attention on the CPU: per problem and block of queries, the energies of that block
// only (scale * q k^T through cblas, over the keys the block can see at all), a masked softmax
// in place, then weights @ v straight into the output rows. The block's energies stay in
// cache instead of a [batch, tq, tk] tensor going through memory three times; causal blocks
// skip the keys after their last query.
#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/cpu_backend.h"

namespace dimx::cpu {

namespace {

void gemm_nt(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t m, int64_t n,
             int64_t k, double alpha) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(m), blasint(n), blasint(k), float(alpha), a,
              blasint(lda), b, blasint(ldb), 0.0f, c, blasint(ldc));
}
void gemm_nt(const double* a, int64_t lda, const double* b, int64_t ldb, double* c, int64_t ldc, int64_t m,
             int64_t n, int64_t k, double alpha) {
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b,
              blasint(ldb), 0.0, c, blasint(ldc));
}
void gemm_nn(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t m, int64_t n,
             int64_t k) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(m), blasint(n), blasint(k), 1.0f, a, blasint(lda), b,
              blasint(ldb), 0.0f, c, blasint(ldc));
}
void gemm_nn(const double* a, int64_t lda, const double* b, int64_t ldb, double* c, int64_t ldc, int64_t m,
             int64_t n, int64_t k) {
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(m), blasint(n), blasint(k), 1.0, a, blasint(lda), b,
              blasint(ldb), 0.0, c, blasint(ldc));
}

template <class T>
void attention_impl(CpuBackend& be, DType dt, const backend::Attention& a) {
  const int64_t batch = a.batch[0] * a.batch[1];
  if (batch == 0 || a.tq == 0 || a.dv == 0) return;
  // Blocks of queries: all of them at once without key lengths (one large GEMM each side),
  // else 64 rows so that causal blocks skip most of the keys they cannot see.
  constexpr int64_t kMaxScratch = int64_t(1) << 20;  // elements of energies per block
  int64_t qb = a.key_lengths ? std::min<int64_t>(a.tq, 64) : a.tq;
  qb = std::max<int64_t>(1, std::min(qb, kMaxScratch / std::max<int64_t>(1, a.tk)));
  std::vector<T> s(size_t(qb * std::max<int64_t>(1, a.tk)));
  // BLAS wants leading dimensions >= the row width even where one row makes them irrelevant.
  auto ld = [](int64_t stride, int64_t rows, int64_t cols) { return rows <= 1 ? std::max<int64_t>(1, cols) : stride; };
  const int64_t ldq = ld(a.q.row_stride, a.tq, a.d), ldk = ld(a.k.row_stride, a.tk, a.d);
  const int64_t ldv = ld(a.v.row_stride, a.tk, a.dv), ldo = ld(a.out_row_stride, a.tq, a.dv);
  std::vector<int64_t> lens(static_cast<size_t>(qb));
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t b0 = b / a.batch[1], b1 = b % a.batch[1];
    const T* q = static_cast<const T*>(a.q.data) + b0 * a.q.batch_stride[0] + b1 * a.q.batch_stride[1];
    const T* k = static_cast<const T*>(a.k.data) + b0 * a.k.batch_stride[0] + b1 * a.k.batch_stride[1];
    const T* v = static_cast<const T*>(a.v.data) + b0 * a.v.batch_stride[0] + b1 * a.v.batch_stride[1];
    T* out = static_cast<T*>(a.out) + b0 * a.out_batch_stride[0] + b1 * a.out_batch_stride[1];
    for (int64_t i0 = 0; i0 < a.tq; i0 += qb) {
      const int64_t n = std::min(qb, a.tq - i0);
      int64_t kmax = a.key_lengths ? 0 : a.tk;
      if (a.key_lengths)
        for (int64_t r = 0; r < n; ++r) {
          int64_t l = std::clamp<int64_t>(a.key_lengths[b * a.tq + i0 + r], 0, a.tk);
          lens[size_t(r)] = l;
          kmax = std::max(kmax, l);
        }
      T* o = out + i0 * a.out_row_stride;
      if (kmax == 0) {
        for (int64_t r = 0; r < n; ++r) std::fill(o + r * a.out_row_stride, o + r * a.out_row_stride + a.dv, T(0));
        continue;
      }
      if (a.d > 0)
        gemm_nt(q + i0 * a.q.row_stride, ldq, k, ldk, s.data(), kmax, n, kmax, a.d, a.scale);
      else
        std::fill(s.begin(), s.begin() + n * kmax, T(0));
      // Keys j >= lens[r] get weight 0; a row that sees no key is all 0.
      be.softmax(false, dt, n, kmax, 1, s.data(), a.key_lengths ? lens.data() : nullptr, s.data());
      gemm_nn(s.data(), kmax, v, ldv, o, ldo, n, a.dv, kmax);
    }
  }
}

}  // namespace

bool CpuBackend::attention(DType dt, const backend::Attention& a) {
  if (dt == DType::f32) return attention_impl<float>(*this, dt, a), true;
  if (dt == DType::f64) return attention_impl<double>(*this, dt, a), true;
  return false;
}

}  // namespace dimx::cpu

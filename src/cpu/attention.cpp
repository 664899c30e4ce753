// Fused attention on the CPU: per problem and block of queries, the energies of that block
// only (scale * q k^T through cblas, over the keys the block can see at all), a masked softmax
// in place, then weights @ v straight into the output rows. The block's energies stay in
// cache instead of a [batch, tq, tk] tensor going through memory three times; causal blocks
// skip the keys after their last query. The backward walks the same blocks: it recomputes
// the block's weights P the same way, then dP = dO v^T, dS = the softmax's backward of dP,
// dq = scale dS k, and accumulates dk += scale dS^T q and dv += P^T dO over the blocks in
// order (so two runs agree bit for bit). Dropout regenerates its mask per block (Philox by
// element index): the output takes the dropped weights, dP goes through the same mask.
#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/cpu_backend.h"
#include "philox.h"

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
             int64_t k, double alpha = 1) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(m), blasint(n), blasint(k), float(alpha), a, blasint(lda), b,
              blasint(ldb), 0.0f, c, blasint(ldc));
}
void gemm_nn(const double* a, int64_t lda, const double* b, int64_t ldb, double* c, int64_t ldc, int64_t m,
             int64_t n, int64_t k, double alpha = 1) {
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b,
              blasint(ldb), 0.0, c, blasint(ldc));
}

void gemm_tn_acc(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t m, int64_t n,
                 int64_t k, double alpha) {
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, blasint(m), blasint(n), blasint(k), float(alpha), a,
              blasint(lda), b, blasint(ldb), 1.0f, c, blasint(ldc));
}
void gemm_tn_acc(const double* a, int64_t lda, const double* b, int64_t ldb, double* c, int64_t ldc, int64_t m,
                 int64_t n, int64_t k, double alpha) {
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b,
              blasint(ldb), 1.0, c, blasint(ldc));
}

// BLAS wants leading dimensions >= the row width even where one row makes them irrelevant.
int64_t ld(int64_t stride, int64_t rows, int64_t cols) { return rows <= 1 ? std::max<int64_t>(1, cols) : stride; }

// The query blocks: all queries at once without key lengths (one large GEMM each side), else
// 64 rows so that causal blocks skip most of the keys they cannot see; at most 2^20 energies.
int64_t query_block(const backend::Attention& a) {
  constexpr int64_t kMaxScratch = int64_t(1) << 20;
  const int64_t qb = a.key_lengths ? std::min<int64_t>(a.tq, 64) : a.tq;
  return std::max<int64_t>(1, std::min(qb, kMaxScratch / std::max<int64_t>(1, a.tk)));
}

// The lengths of rows i0.. i0 + n of problem b into lens; returns the longest (tk without lengths).
int64_t block_lengths(const backend::Attention& a, int64_t b, int64_t i0, int64_t n, std::vector<int64_t>& lens) {
  if (!a.key_lengths) return a.tk;
  int64_t kmax = 0;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t l = std::clamp<int64_t>(a.key_lengths[b * a.tq + i0 + r], 0, a.tk);
    lens[size_t(r)] = l;
    kmax = std::max(kmax, l);
  }
  return kmax;
}

// The bias of problem b, query rows i0.. i0 + n (times each row's scale, where given), added
// to the block's energies e [n, kmax]; or, backward (ga non-null), the block's energy gradients
// e added into the bias's gradient and the row scale's.
template <class T>
void bias_block(const backend::Attention& a, int64_t b, int64_t i0, int64_t n, int64_t kmax, T* e,
                const backend::AttentionGrads* ga = nullptr) {
  const backend::Attention::Bias& bi = a.bias;
  const int64_t off = bi.batch_offset ? bi.batch_offset[b] : 0;
  const T* rs = static_cast<const T*>(bi.row_scale);
  const int64_t soff = rs && bi.row_scale_offset ? bi.row_scale_offset[b] : 0;
  T* dbias = ga ? static_cast<T*>(ga->dbias) : nullptr;
  const int64_t* doffs = ga && ga->dbias_batch_offset ? ga->dbias_batch_offset : bi.batch_offset;
  const int64_t doff = doffs ? doffs[b] : 0;
  T* drs = ga && rs ? static_cast<T*>(ga->drow_scale) : nullptr;
  const int64_t* dsoffs = ga && ga->drow_scale_offset ? ga->drow_scale_offset : bi.row_scale_offset;
  const int64_t dsoff = dsoffs ? dsoffs[b] : 0;
  for (int64_t r = 0; r < n; ++r) {
    const T* x = static_cast<const T*>(bi.data) + off + (i0 + r) * bi.row_stride;
    const T s = rs ? rs[soff + (i0 + r) * bi.row_scale_stride] : T(1);
    T* er = e + r * kmax;
    if (!ga) {
      for (int64_t j = 0; j < kmax; ++j) er[j] += s * x[j * bi.col_stride];
      continue;
    }
    // A row without keys (padding) adds nothing: its dS is 0, and its scale may be NaN.
    if (a.key_lengths && a.key_lengths[b * a.tq + i0 + r] <= 0) continue;
    if (dbias) {
      T* d = dbias + doff + (i0 + r) * bi.row_stride;
      for (int64_t j = 0; j < kmax; ++j) d[j * bi.col_stride] += s * er[j];
    }
    if (drs) {
      T acc = 0;
      for (int64_t j = 0; j < kmax; ++j) acc += er[j] * x[j * bi.col_stride];
      drs[dsoff + (i0 + r) * bi.row_scale_stride] += acc;
    }
  }
}

// y = the weights x [n, kmax] of problem (b0, b1), rows i0.., after dropout: kept ones times
// the scale, the others 0 (the mask of backend::Attention::Dropout).
template <class T>
void dropout_block(const backend::Attention& a, int64_t b0, int64_t b1, int64_t i0, int64_t n, int64_t kmax,
                   const T* x, T* y) {
  const backend::Attention::Dropout& dr = a.dropout;
  philox::KeepStream keep{dr.seed, dr.offset, dr.threshold, dr.f64};
  const T scale = T(dr.scale);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t base = b0 * dr.stride[0] + b1 * dr.stride[1] + (i0 + r) * dr.row_stride;
    for (int64_t j = 0; j < kmax; ++j) {
      const int64_t e = r * kmax + j;
      y[e] = keep(uint64_t(base + j * dr.col_stride)) ? x[e] * scale : T(0);
    }
  }
}

template <class T>
void zero_rows(T* p, int64_t row_stride, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) std::fill(p + r * row_stride, p + r * row_stride + cols, T(0));
}

template <class T>
void attention_backward_impl(CpuBackend& be, DType dt, const backend::Attention& a, const backend::AttentionGrads& ga) {
  const int64_t batch = a.batch[0] * a.batch[1];
  const int64_t qb = query_block(a);
  const bool drop = a.dropout.p > 0;
  std::vector<T> p(size_t(qb * std::max<int64_t>(1, a.tk))), dp(p.size()), pd(drop ? p.size() : 0), qs;
  std::vector<int64_t> lens(static_cast<size_t>(qb));
  const int64_t ldq = ld(a.q.row_stride, a.tq, a.d), ldk = ld(a.k.row_stride, a.tk, a.d);
  const int64_t ldv = ld(a.v.row_stride, a.tk, a.dv), ldo = ld(a.out_row_stride, a.tq, a.dv);
  const int64_t ldgq = ld(ga.dq.row_stride, a.tq, a.d), ldgk = ld(ga.dk.row_stride, a.tk, a.d);
  const int64_t ldgv = ld(ga.dv.row_stride, a.tk, a.dv);
  auto at = [](auto* base, const auto& op, int64_t b0, int64_t b1) {
    return base + b0 * op.batch_stride[0] + b1 * op.batch_stride[1];
  };
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t b0 = b / a.batch[1], b1 = b % a.batch[1];
    const T* q = at(static_cast<const T*>(a.q.data), a.q, b0, b1);
    const T* k = at(static_cast<const T*>(a.k.data), a.k, b0, b1);
    const T* v = at(static_cast<const T*>(a.v.data), a.v, b0, b1);
    const T* go = static_cast<const T*>(ga.out_grad) + b0 * a.out_batch_stride[0] + b1 * a.out_batch_stride[1];
    T* dq = ga.dq.data ? at(static_cast<T*>(ga.dq.data), ga.dq, b0, b1) : nullptr;
    T* dk = ga.dk.data ? at(static_cast<T*>(ga.dk.data), ga.dk, b0, b1) : nullptr;
    T* dv = ga.dv.data ? at(static_cast<T*>(ga.dv.data), ga.dv, b0, b1) : nullptr;
    if (dk) zero_rows(dk, ga.dk.row_stride, a.tk, a.d);
    if (dv) zero_rows(dv, ga.dv.row_stride, a.tk, a.dv);
    for (int64_t i0 = 0; i0 < a.tq; i0 += qb) {
      const int64_t n = std::min(qb, a.tq - i0);
      const T* gob = go + i0 * a.out_row_stride;
      // A row whose output gradient is all zero (a padded query frame) sees no key here: its
      // weights and q, which may hold anything, stay out of every sum (its share is exactly 0).
      int64_t kmax = block_lengths(a, b, i0, n, lens);
      bool idle = false;
      for (int64_t r = 0; r < n; ++r) {
        const T* row = gob + r * a.out_row_stride;
        if (std::all_of(row, row + a.dv, [](T x) { return x == T(0); })) {
          lens[size_t(r)] = 0;
          idle = true;
        } else if (!a.key_lengths) {
          lens[size_t(r)] = a.tk;
        }
      }
      if (idle) kmax = n > 0 ? *std::max_element(lens.begin(), lens.begin() + n) : 0;
      T* dqb = dq ? dq + i0 * ga.dq.row_stride : nullptr;
      if (kmax == 0 || a.d == 0) {
        if (dqb) zero_rows(dqb, ga.dq.row_stride, n, a.d);
        if (kmax == 0) continue;
      }
      const int64_t* len = a.key_lengths || idle ? lens.data() : nullptr;
      const T* qb_rows = q + i0 * a.q.row_stride;
      int64_t ldqb = ldq;
      if (idle) {  // q's rows with the idle ones as zeros
        qs.assign(size_t(n * std::max<int64_t>(1, a.d)), T(0));
        for (int64_t r = 0; r < n; ++r)
          if (lens[size_t(r)] > 0) std::copy(qb_rows + r * a.q.row_stride, qb_rows + r * a.q.row_stride + a.d, &qs[size_t(r * a.d)]);
        qb_rows = qs.data();
        ldqb = std::max<int64_t>(1, a.d);
      }
      if (a.d > 0) gemm_nt(qb_rows, ldqb, k, ldk, p.data(), kmax, n, kmax, a.d, a.scale);
      else std::fill(p.begin(), p.begin() + n * kmax, T(0));
      if (a.bias.data) bias_block<T>(a, b, i0, n, kmax, p.data());
      be.softmax(false, dt, n, kmax, 1, p.data(), len, p.data());
      // With dropout, the output took the dropped weights: dv from them, and dP through the mask.
      if (drop) dropout_block<T>(a, b0, b1, i0, n, kmax, p.data(), pd.data());
      if (dv) gemm_tn_acc(drop ? pd.data() : p.data(), kmax, gob, ldo, dv, ldgv, kmax, a.dv, n, 1.0);
      if (!dqb && !dk && !ga.dbias && !ga.drow_scale) continue;
      gemm_nt(gob, ldo, v, ldv, dp.data(), kmax, n, kmax, a.dv, 1.0);
      if (drop) dropout_block<T>(a, b0, b1, i0, n, kmax, dp.data(), dp.data());
      // dS in place of dP: p (dp - sum_j p dp) on the visible keys, 0 on the others.
      be.softmax_backward(false, dt, n, kmax, 1, p.data(), dp.data(), len, dp.data());
      if (ga.dbias || ga.drow_scale) bias_block<T>(a, b, i0, n, kmax, dp.data(), &ga);
      if (a.d == 0) continue;
      if (dqb) gemm_nn(dp.data(), kmax, k, ldk, dqb, ldgq, n, a.d, kmax, a.scale);
      if (dk) gemm_tn_acc(dp.data(), kmax, qb_rows, ldqb, dk, ldgk, kmax, a.d, n, a.scale);
    }
  }
}

template <class T>
void attention_impl(CpuBackend& be, DType dt, const backend::Attention& a) {
  const int64_t batch = a.batch[0] * a.batch[1];
  if (batch == 0 || a.tq == 0 || a.dv == 0) return;
  const int64_t qb = query_block(a);
  std::vector<T> s(size_t(qb * std::max<int64_t>(1, a.tk)));
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
      const int64_t kmax = block_lengths(a, b, i0, n, lens);
      T* o = out + i0 * a.out_row_stride;
      if (kmax == 0) {
        zero_rows(o, a.out_row_stride, n, a.dv);
        continue;
      }
      if (a.d > 0)
        gemm_nt(q + i0 * a.q.row_stride, ldq, k, ldk, s.data(), kmax, n, kmax, a.d, a.scale);
      else
        std::fill(s.begin(), s.begin() + n * kmax, T(0));
      if (a.bias.data) bias_block<T>(a, b, i0, n, kmax, s.data());
      // Keys j >= lens[r] get weight 0; a row that sees no key is all 0.
      be.softmax(false, dt, n, kmax, 1, s.data(), a.key_lengths ? lens.data() : nullptr, s.data());
      if (a.dropout.p > 0) dropout_block<T>(a, b0, b1, i0, n, kmax, s.data(), s.data());
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

bool CpuBackend::attention_backward(DType dt, const backend::Attention& a, const backend::AttentionGrads& g) {
  if (a.batch[0] * a.batch[1] == 0) return true;
  if (dt == DType::f32) return attention_backward_impl<float>(*this, dt, a, g), true;
  if (dt == DType::f64) return attention_backward_impl<double>(*this, dt, a, g), true;
  return false;
}

}  // namespace dimx::cpu

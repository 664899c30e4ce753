// CPU cross-entropy along the middle axis of a contiguous [A, N, B] block (see
// Backend::cross_entropy). Rows (B = 1) run in parallel, each in two vector passes (max, then
// the sum of exp); columns (B > 1) go in chunks of b with the N loop outside. bf16/f16 rows are
// widened to f32 scratch first. The backward writes g * (softmax - onehot) row by row from the
// saved log-sum-exp.
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/float_types.h"
#include "cpu/parallel.h"
#include "cpu/rows.h"

namespace dimx::cpu {

namespace {

constexpr const char* kOp = "cross_entropy";

template <class T>
using Vec = xsimd::batch<T>;

// The maximum of a row (-inf for an empty one). A NaN may or may not survive here; the sum of
// exp below carries it either way.
template <class T>
T row_max(const T* x, int64_t n) {
  constexpr int64_t W = int64_t(Vec<T>::size);
  const T ninf = -std::numeric_limits<T>::infinity();
  Vec<T> acc[2] = {Vec<T>(ninf), Vec<T>(ninf)};
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    acc[0] = xsimd::max(acc[0], Vec<T>::load_unaligned(x + i));
    acc[1] = xsimd::max(acc[1], Vec<T>::load_unaligned(x + i + W));
  }
  for (; i + W <= n; i += W) acc[0] = xsimd::max(acc[0], Vec<T>::load_unaligned(x + i));
  if (i < n) acc[1] = xsimd::max(acc[1], load_partial(x + i, n - i, ninf));
  alignas(64) T lanes[W];
  xsimd::max(acc[0], acc[1]).store_aligned(lanes);
  T m = lanes[0];
  for (int64_t j = 1; j < W; ++j) m = lanes[j] > m ? lanes[j] : m;
  return m;
}

// sum_i exp(x[i] - shift).
template <class T>
T row_sum_exp(const T* x, int64_t n, T shift) {
  constexpr int64_t W = int64_t(Vec<T>::size);
  const Vec<T> vs(shift);
  Vec<T> acc[2] = {Vec<T>(T(0)), Vec<T>(T(0))};
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    acc[0] += xsimd::exp(Vec<T>::load_unaligned(x + i) - vs);
    acc[1] += xsimd::exp(Vec<T>::load_unaligned(x + i + W) - vs);
  }
  for (; i + W <= n; i += W) acc[0] += xsimd::exp(Vec<T>::load_unaligned(x + i) - vs);
  if (i < n) acc[1] += xsimd::exp(load_partial(x + i, n - i, -std::numeric_limits<T>::infinity()) - vs);
  return xsimd::hadd(acc[0] + acc[1]);
}

// log sum exp of a row, stable: the maximum is subtracted when it is finite. All -inf gives
// -inf (log 0), a +inf entry +inf, a NaN NaN.
template <class T>
T row_lse(const T* x, int64_t n) {
  const T m = row_max(x, n);
  const T shift = std::isfinite(m) ? m : T(0);
  return shift + std::log(row_sum_exp(x, n, shift));
}

// y[i] = g * exp(x[i] - lse) for i < n (y may be x).
template <class T>
void row_scaled_softmax(const T* x, T lse, T g, int64_t n, T* y) {
  constexpr int64_t W = int64_t(Vec<T>::size);
  const Vec<T> vl(lse), vg(g);
  int64_t i = 0;
  for (; i + W <= n; i += W) (vg * xsimd::exp(Vec<T>::load_unaligned(x + i) - vl)).store_unaligned(y + i);
  if (i < n) {
    alignas(64) T buf[W];
    (vg * xsimd::exp(load_partial(x + i, n - i, lse) - vl)).store_aligned(buf);
    for (int64_t j = 0; j < n - i; ++j) y[i + j] = buf[j];
  }
}

// exp in place over n values.
template <class T>
void exp_inplace(T* x, int64_t n) {
  constexpr int64_t W = int64_t(Vec<T>::size);
  int64_t i = 0;
  for (; i + W <= n; i += W) xsimd::exp(Vec<T>::load_unaligned(x + i)).store_unaligned(x + i);
  if (i < n) {
    alignas(64) T buf[W];
    xsimd::exp(load_partial(x + i, n - i, T(0))).store_aligned(buf);
    for (int64_t j = 0; j < n - i; ++j) x[i + j] = buf[j];
  }
}

template <class S>
bool forward(int64_t A, int64_t N, int64_t B, const S* x, const int64_t* target, const bool* valid,
             ComputeOf<S>* loss, ComputeOf<S>* lse) {
  using T = ComputeOf<S>;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::atomic<bool> bad{false};
  for_row_blocks(A, N, B, [&](int64_t a, int64_t b0, int64_t b1) {
    const S* xa = x + a * N * B;
    if (B == 1) {
      if (valid && !valid[a]) {
        loss[a] = lse[a] = T(0);
        return;
      }
      thread_local std::vector<T> scratch;
      const T* xr = widened(xa, N, scratch);
      const T l = row_lse(xr, N);
      const int64_t t = target[a];
      const bool in_range = t >= 0 && t < N;
      if (!in_range) bad.store(true, std::memory_order_relaxed);
      lse[a] = l;
      loss[a] = in_range ? l - xr[t] : nan;
      return;
    }
    const int64_t w = b1 - b0, r0 = a * B + b0;
    const bool* va = valid ? valid + r0 : nullptr;
    thread_local std::vector<T> m, s, e;
    m.assign(size_t(w), -std::numeric_limits<T>::infinity());
    s.assign(size_t(w), T(0));
    e.resize(size_t(w));
    for (int64_t n = 0; n < N; ++n) {
      const S* row = xa + n * B + b0;
      for (int64_t b = 0; b < w; ++b) {
        const T v = widen(row[b]);
        m[size_t(b)] = v > m[size_t(b)] ? v : m[size_t(b)];
      }
    }
    for (int64_t b = 0; b < w; ++b) m[size_t(b)] = std::isfinite(m[size_t(b)]) ? m[size_t(b)] : T(0);  // the shift
    for (int64_t n = 0; n < N; ++n) {
      const S* row = xa + n * B + b0;
      // Padded columns are read here but selected away below: nothing of them reaches the output.
      for (int64_t b = 0; b < w; ++b) e[size_t(b)] = widen(row[b]) - m[size_t(b)];
      exp_inplace(e.data(), w);
      for (int64_t b = 0; b < w; ++b) s[size_t(b)] += e[size_t(b)];
    }
    for (int64_t b = 0; b < w; ++b) {
      if (va && !va[b]) {
        loss[r0 + b] = lse[r0 + b] = T(0);
        continue;
      }
      const T l = m[size_t(b)] + std::log(s[size_t(b)]);
      const int64_t t = target[r0 + b];
      const bool in_range = t >= 0 && t < N;
      if (!in_range) bad.store(true, std::memory_order_relaxed);
      lse[r0 + b] = l;
      loss[r0 + b] = in_range ? l - widen(xa[t * B + b0 + b]) : nan;
    }
  });
  return !bad.load();
}

template <class S>
void backward(int64_t A, int64_t N, int64_t B, const S* x, const int64_t* target, const bool* valid,
              const ComputeOf<S>* lse, const ComputeOf<S>* g, S* dx) {
  using T = ComputeOf<S>;
  const S zero = narrow<S>(T(0));
  for_row_blocks(A, N, B, [&](int64_t a, int64_t b0, int64_t b1) {
    const S* xa = x + a * N * B;
    S* da = dx + a * N * B;
    if (B == 1) {
      if (valid && !valid[a]) {
        std::fill(da, da + N, zero);
        return;
      }
      const int64_t t = target[a];
      if constexpr (std::is_same_v<S, T>) {
        row_scaled_softmax(xa, lse[a], g[a], N, da);
        if (t >= 0 && t < N) da[t] = g[a] * (std::exp(xa[t] - lse[a]) - T(1));
      } else {
        thread_local std::vector<T> scratch;
        scratch.resize(size_t(N));
        for (int64_t i = 0; i < N; ++i) scratch[size_t(i)] = widen(xa[i]);
        T* r = scratch.data();
        const T xt = t >= 0 && t < N ? r[t] : T(0);
        row_scaled_softmax(r, lse[a], g[a], N, r);
        if (t >= 0 && t < N) r[t] = g[a] * (std::exp(xt - lse[a]) - T(1));
        for (int64_t i = 0; i < N; ++i) da[i] = narrow<S>(r[i]);
      }
      return;
    }
    const int64_t w = b1 - b0, r0 = a * B + b0;
    thread_local std::vector<T> e;
    e.resize(size_t(w));
    for (int64_t n = 0; n < N; ++n) {
      const S* row = xa + n * B + b0;
      S* out = da + n * B + b0;
      for (int64_t b = 0; b < w; ++b) e[size_t(b)] = widen(row[b]) - lse[r0 + b];
      exp_inplace(e.data(), w);
      for (int64_t b = 0; b < w; ++b) {
        const bool ok = !valid || valid[r0 + b];
        const T v = g[r0 + b] * (e[size_t(b)] - (target[r0 + b] == n ? T(1) : T(0)));
        out[b] = ok ? narrow<S>(v) : zero;
      }
    }
  });
}

}  // namespace

bool CpuBackend::cross_entropy(DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* target,
                               const bool* valid, void* loss, void* lse) {
  bool ok = true;
  dispatch_floating(dt, kOp, [&](auto tag) {
    using S = decltype(tag);
    using T = ComputeOf<S>;
    ok = forward<S>(A, N, B, static_cast<const S*>(x), target, valid, static_cast<T*>(loss), static_cast<T*>(lse));
  });
  return ok;
}

void CpuBackend::cross_entropy_backward(DType dt, int64_t A, int64_t N, int64_t B, const void* x,
                                        const int64_t* target, const bool* valid, const void* lse, const void* g,
                                        void* dx) {
  dispatch_floating(dt, kOp, [&](auto tag) {
    using S = decltype(tag);
    using T = ComputeOf<S>;
    backward<S>(A, N, B, static_cast<const S*>(x), target, valid, static_cast<const T*>(lse),
                static_cast<const T*>(g), static_cast<S*>(dx));
  });
}

}  // namespace dimx::cpu

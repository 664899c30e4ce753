// CPU reductions and softmax over the middle axis of a contiguous [A, N, B] block, with
// optional per-(a, b) valid lengths along N.
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/parallel.h"
#include "cpu/rows.h"
#include "reduce_math.h"

namespace dimx::cpu {

namespace {

using reduce_math::combine;
using reduce_math::highest;
using reduce_math::identity;
using reduce_math::lowest;

template <class T>
using Vec = xsimd::batch<T>;

// Half-width vectors for the tail of a row (void where the machine has none): an 8-float
// row under AVX-512 takes one of these instead of a padded partial vector.
template <class T>
using HalfVec = xsimd::make_sized_batch_t<T, Vec<T>::size / 2>;

template <class V>
V vcombine(ReduceOp op, const V& a, const V& b) {
  return op == ReduceOp::sum ? a + b : (op == ReduceOp::max ? xsimd::max(a, b) : xsimd::min(a, b));
}

// Reduces a contiguous row; sum/max/min of floats use vector accumulators throughout,
// with the partial last vector padded by the identity.
template <class T>
T reduce_row(ReduceOp op, const T* x, int64_t n) {
  if constexpr (std::is_floating_point_v<T>) {
    if (op == ReduceOp::sum || op == ReduceOp::max || op == ReduceOp::min) {
      constexpr int64_t W = int64_t(Vec<T>::size);
      const T id = identity<T>(op);
      Vec<T> acc[4] = {Vec<T>(id), Vec<T>(id), Vec<T>(id), Vec<T>(id)};
      // The SIMD max/min drop NaN; a separate flag keeps it sticky (a sum propagates it anyway).
      const bool track_nan = op != ReduceOp::sum;
      xsimd::batch_bool<T> nan(false);
      int64_t i = 0;
      for (; i + 4 * W <= n; i += 4 * W)
        for (int j = 0; j < 4; ++j) {
          const Vec<T> v = Vec<T>::load_unaligned(x + i + j * W);
          acc[j] = vcombine(op, acc[j], v);
          if (track_nan) nan = nan | xsimd::isnan(v);
        }
      for (; i + W <= n; i += W) {
        const Vec<T> v = Vec<T>::load_unaligned(x + i);
        acc[0] = vcombine(op, acc[0], v);
        if (track_nan) nan = nan | xsimd::isnan(v);
      }
      T half_out = id;
      if constexpr (!std::is_void_v<HalfVec<T>>) {
        using H = HalfVec<T>;
        constexpr int64_t HW = int64_t(H::size);
        if (i + HW <= n) {
          const H v = H::load_unaligned(x + i);
          if (track_nan && xsimd::any(xsimd::isnan(v))) return std::numeric_limits<T>::quiet_NaN();
          alignas(64) T lanes[HW];
          v.store_aligned(lanes);
          for (int64_t j = 0; j < HW; ++j) half_out = combine(op, half_out, lanes[j]);
          i += HW;
        }
      }
      if (i < n) {
        const Vec<T> v = load_partial(x + i, n - i, id);
        acc[1] = vcombine(op, acc[1], v);
        if (track_nan) nan = nan | xsimd::isnan(v);
      }
      if (track_nan && xsimd::any(nan)) return std::numeric_limits<T>::quiet_NaN();
      if (n < W && i == n) return half_out;  // a short row the half vector covered
      Vec<T> r = vcombine(op, vcombine(op, acc[0], acc[1]), vcombine(op, acc[2], acc[3]));
      alignas(64) T lanes[W];
      r.store_aligned(lanes);
      T out = lanes[0];
      for (int64_t j = 1; j < W; ++j) out = combine(op, out, lanes[j]);
      return combine(op, out, half_out);
    }
  }
  T acc = identity<T>(op);
  for (int64_t i = 0; i < n; ++i) acc = combine(op, acc, x[i]);
  return acc;
}

// y[i] = exp(x[i] - m) for i < n; returns the sum of y.
template <class T>
T exp_shifted(const T* x, T m, T* y, int64_t n) {
  constexpr int64_t W = int64_t(Vec<T>::size);
  const Vec<T> vm(m);
  Vec<T> sum(T(0));
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    Vec<T> e = xsimd::exp(Vec<T>::load_unaligned(x + i) - vm);
    e.store_unaligned(y + i);
    sum += e;
  }
  T half_sum = 0;
  if constexpr (!std::is_void_v<HalfVec<T>>) {
    using H = HalfVec<T>;
    if (i + int64_t(H::size) <= n) {
      H e = xsimd::exp(H::load_unaligned(x + i) - H(m));
      e.store_unaligned(y + i);
      half_sum = xsimd::hadd(e);
      i += int64_t(H::size);
    }
  }
  if (i == n) return xsimd::hadd(sum) + half_sum;
  {
    // Pad with m so the padded lanes give exp(0) = 1, then keep them out of the sum.
    alignas(64) T buf[W];
    xsimd::exp(load_partial(x + i, n - i, m) - vm).store_aligned(buf);
    for (int64_t j = 0; j < n - i; ++j) y[i + j] = buf[j];
    for (int64_t j = n - i; j < W; ++j) buf[j] = 0;
    sum += Vec<T>::load_aligned(buf);
  }
  return xsimd::hadd(sum) + half_sum;
}

template <class T>
void exp_inplace(T* x, int64_t n) {
  exp_shifted(x, T(0), x, n);
}

template <class T>
void reduce_impl(ReduceOp op, int64_t A, int64_t N, int64_t B, const T* x, const int64_t* len, T* y) {
  for_row_blocks(A, N, B, [&](int64_t a, int64_t b0, int64_t b1) {
    const T* xa = x + a * N * B;
    if (B == 1) {
      int64_t L = reduce_math::valid_len(len, a, N);
      if (op == ReduceOp::logsumexp) {
        if constexpr (std::is_floating_point_v<T>) {
          T m = reduce_row(ReduceOp::max, xa, L);
          if (L == 0 || reduce_math::lse_trivial(m)) {
            y[a] = L == 0 ? lowest<T>() : m;
          } else {
            std::vector<T> scratch(static_cast<size_t>(L));
            y[a] = m + std::log(exp_shifted(xa, m, scratch.data(), L));
          }
        }
        return;
      }
      y[a] = reduce_row(op, xa, L);
      return;
    }
    const int64_t w = b1 - b0;
    // A plain array: std::vector<bool> has no addressable elements.
    std::unique_ptr<T[]> acc(new T[size_t(w)]);
    std::fill(acc.get(), acc.get() + w, identity<T>(op == ReduceOp::logsumexp ? ReduceOp::max : op));
    const int64_t* la = len ? len + a * B + b0 : nullptr;
    ReduceOp first = op == ReduceOp::logsumexp ? ReduceOp::max : op;
    // Lengths that are the same for the whole column block (a sequence's length broadcast over
    // its features) bound the row loop instead, so the inner loop vectorizes.
    int64_t rows = N;
    if (la && std::all_of(la, la + w, [&](int64_t l) { return l == la[0]; })) {
      rows = std::clamp<int64_t>(la[0], 0, N);
      la = nullptr;
    }
    for (int64_t n = 0; n < rows; ++n) {
      const T* row = xa + n * B + b0;
      if (!la && first == ReduceOp::sum && std::is_floating_point_v<T>)
        for (int64_t b = 0; b < w; ++b) acc[b] += row[b];
      else if (!la)
        for (int64_t b = 0; b < w; ++b) acc[b] = combine(first, acc[b], row[b]);
      else
        for (int64_t b = 0; b < w; ++b)
          if (n < la[b]) acc[b] = combine(first, acc[b], row[b]);
    }
    if constexpr (std::is_floating_point_v<T>) if (op == ReduceOp::logsumexp) {
      std::vector<T> s(size_t(w), T(0));
      for (int64_t n = 0; n < rows; ++n) {
        const T* row = xa + n * B + b0;
        for (int64_t b = 0; b < w; ++b)
          if ((!la || n < la[b]) && !reduce_math::lse_trivial(acc[b])) s[b] += std::exp(row[b] - acc[b]);
      }
      for (int64_t b = 0; b < w; ++b) acc[b] = reduce_math::lse_trivial(acc[b]) ? acc[b] : acc[b] + std::log(s[b]);
    }
    std::copy(acc.get(), acc.get() + w, y + a * B + b0);
  });
}

// Max and sum of a short row in four independent chains (a single chain of dependent
// compares or adds would take most of the time of a short row).
template <class T>
T short_max(const T* x, int64_t n) {
  const T ninf = -std::numeric_limits<T>::infinity();
  T m[4] = {ninf, ninf, ninf, ninf};
  int64_t j = 0;
  for (; j + 4 <= n; j += 4)
    for (int c = 0; c < 4; ++c) m[c] = x[j + c] > m[c] ? x[j + c] : m[c];
  for (; j < n; ++j) m[0] = x[j] > m[0] ? x[j] : m[0];
  const T a = m[0] > m[1] ? m[0] : m[1], b = m[2] > m[3] ? m[2] : m[3];
  return a > b ? a : b;
}

template <class T>
T short_sum(const T* x, int64_t n) {
  T s[4] = {0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 4 <= n; j += 4)
    for (int c = 0; c < 4; ++c) s[c] += x[j + c];
  for (; j < n; ++j) s[0] += x[j];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

// Softmax of one row of n <= V::size values held in one vector V; lanes past the valid length
// l read as -inf, so they come out as 0 (softmax) or -inf (log_softmax), the padding values.
template <class T, class V>
void softmax_row_in_vector(bool log, const T* x, int64_t l, int64_t n, T* y) {
  constexpr int64_t S = int64_t(V::size);
  const T ninf = -std::numeric_limits<T>::infinity();
  alignas(64) T buf[S];
  V v;
  if (l == S) {
    v = V::load_unaligned(x);
    v.store_aligned(buf);
  } else {
    for (int64_t j = 0; j < S; ++j) buf[j] = j < l ? x[j] : ninf;
    v = V::load_aligned(buf);
  }
  const T m = short_max(buf, l);
  if (l == 0 || m == ninf) {
    std::fill(y, y + n, log ? ninf : T(0));
    return;
  }
  const V e = xsimd::exp(v - V(m));
  const T sum = xsimd::hadd(e);
  const V r = log ? (v - V(m)) - V(std::log(sum)) : e * V(T(1) / sum);
  if (n == S) return r.store_unaligned(y);
  r.store_aligned(buf);
  std::copy(buf, buf + n, y);
}

// Softmax of short contiguous rows (B == 1, N up to two vectors): a row that fits one vector
// is computed in it; longer ones in passes over up to 64 rows, the shifted values of all of
// them exponentiated as one run of full vectors instead of a partial vector per row.
template <class T>
void softmax_short_rows(bool log, int64_t A, int64_t N, const T* x, const int64_t* len, T* y) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const T pad = log ? ninf : T(0);
  parallel_for(A, std::max<int64_t>(1, kParallelGrain / N), [&](int64_t a0, int64_t a1) {
    // Rows that fit one vector (a half one where the machine has them): one vector each.
    constexpr int64_t W = int64_t(Vec<T>::size);
    if (N <= W) {
      for (int64_t a = a0; a < a1; ++a) {
        const int64_t l = reduce_math::valid_len(len, a, N);
        if constexpr (!std::is_void_v<HalfVec<T>>)
          if (N <= int64_t(HalfVec<T>::size)) {
            softmax_row_in_vector<T, HalfVec<T>>(log, x + a * N, l, N, y + a * N);
            continue;
          }
        softmax_row_in_vector<T, Vec<T>>(log, x + a * N, l, N, y + a * N);
      }
      return;
    }
    constexpr int64_t R = 64;
    T m[R];
    int64_t L[R];
    for (int64_t r0 = a0; r0 < a1; r0 += R) {
      const int64_t rows = std::min(R, a1 - r0);
      const T* xr = x + r0 * N;
      T* yr = y + r0 * N;
      for (int64_t i = 0; i < rows; ++i) {
        const T* xi = xr + i * N;
        L[i] = reduce_math::valid_len(len, r0 + i, N);
        const T mi = short_max(xi, L[i]);
        m[i] = mi;
        const T shift = mi == ninf ? T(0) : mi;
        for (int64_t j = 0; j < N; ++j) yr[i * N + j] = xi[j] - shift;
      }
      exp_inplace(yr, rows * N);  // padded frames too; overwritten below
      for (int64_t i = 0; i < rows; ++i) {
        const T* xi = xr + i * N;
        T* yi = yr + i * N;
        if (L[i] == 0 || m[i] == ninf) {
          std::fill(yi, yi + N, pad);
          continue;
        }
        const T sum = short_sum(yi, L[i]);
        if (log) {
          const T ls = std::log(sum);
          for (int64_t j = 0; j < L[i]; ++j) yi[j] = xi[j] - m[i] - ls;
        } else {
          const T inv = T(1) / sum;
          for (int64_t j = 0; j < L[i]; ++j) yi[j] *= inv;
        }
        std::fill(yi + L[i], yi + N, pad);
      }
    }
  });
}

template <class T>
void softmax_impl(bool log, int64_t A, int64_t N, int64_t B, const T* x, const int64_t* len, T* y) {
  if (B == 1 && N <= 2 * int64_t(Vec<T>::size)) return softmax_short_rows(log, A, N, x, len, y);
  const T ninf = -std::numeric_limits<T>::infinity();
  const T pad = log ? ninf : T(0);
  for_row_blocks(A, N, B, [&](int64_t a, int64_t b0, int64_t b1) {
    const T* xa = x + a * N * B;
    T* ya = y + a * N * B;
    if (B == 1) {
      int64_t L = reduce_math::valid_len(len, a, N);
      T m = reduce_row(ReduceOp::max, xa, L);
      if (L == 0 || m == ninf) {
        std::fill(ya, ya + N, pad);
        return;
      }
      if (log) {
        // exp into y as scratch, then overwrite with the log-probabilities.
        T ls = std::log(exp_shifted(xa, m, ya, L));
        for (int64_t i = 0; i < L; ++i) ya[i] = xa[i] - m - ls;
      } else {
        T inv = T(1) / exp_shifted(xa, m, ya, L);
        for (int64_t i = 0; i < L; ++i) ya[i] *= inv;
      }
      std::fill(ya + L, ya + N, pad);
      return;
    }
    const int64_t w = b1 - b0;
    const int64_t* la = len ? len + a * B + b0 : nullptr;
    std::vector<T> m(static_cast<size_t>(w), ninf), s(static_cast<size_t>(w), T(0)), e(static_cast<size_t>(w));
    for (int64_t n = 0; n < N; ++n) {
      const T* row = xa + n * B + b0;
      for (int64_t b = 0; b < w; ++b)
        if (!la || n < la[b]) m[b] = row[b] > m[b] ? row[b] : m[b];
    }
    for (int64_t n = 0; n < N; ++n) {
      const T* row = xa + n * B + b0;
      T* out = ya + n * B + b0;
      for (int64_t b = 0; b < w; ++b) e[b] = row[b] - m[b];
      exp_inplace(e.data(), w);
      for (int64_t b = 0; b < w; ++b) {
        bool valid = (!la || n < la[b]) && m[b] != ninf;
        if (valid) s[b] += e[b];
        out[b] = valid ? (log ? row[b] - m[b] : e[b]) : pad;
      }
    }
    for (int64_t b = 0; b < w; ++b) s[b] = log ? std::log(s[b]) : T(1) / s[b];
    for (int64_t n = 0; n < N; ++n) {
      T* out = ya + n * B + b0;
      for (int64_t b = 0; b < w; ++b)
        if ((!la || n < la[b]) && m[b] != ninf) out[b] = log ? out[b] - s[b] : out[b] * s[b];
    }
  });
}

template <class T>
void softmax_backward_impl(bool log, int64_t A, int64_t N, int64_t B, const T* y, const T* g, const int64_t* len,
                           T* dx) {
  for_row_blocks(A, N, B, [&](int64_t a, int64_t b0, int64_t b1) {
    const int64_t off = a * N * B;
    const int64_t w = b1 - b0;
    const int64_t* la = len ? len + a * B + b0 : nullptr;
    std::vector<T> s(static_cast<size_t>(w), T(0));
    for (int64_t n = 0; n < N; ++n) {
      const T* yr = y + off + n * B + b0;
      const T* gr = g + off + n * B + b0;
      for (int64_t b = 0; b < w; ++b)
        if (!la || n < la[b]) s[size_t(b)] += log ? gr[b] : gr[b] * yr[b];
    }
    for (int64_t n = 0; n < N; ++n) {
      const T* yr = y + off + n * B + b0;
      const T* gr = g + off + n * B + b0;
      T* out = dx + off + n * B + b0;
      for (int64_t b = 0; b < w; ++b)
        out[b] = la && n >= la[b] ? T(0) : log ? gr[b] - std::exp(yr[b]) * s[size_t(b)] : yr[b] * (gr[b] - s[size_t(b)]);
    }
  });
}

}  // namespace

void CpuBackend::reduce(ReduceOp op, DType dt, int64_t A, int64_t N, int64_t B, const void* x,
                        const int64_t* lengths, void* y) {
  if (is_half(dt)) {  // widened block by block of the copy kernel, then summed in f32
    std::unique_ptr<float[]> wide(new float[size_t(A * N * B)]);
    const Shape shape{A, N, B};
    const Strides st{N * B, B, 1};
    copy(shape, dt, {x, st}, DType::f32, {wide.get(), st});
    return reduce_impl<float>(op, A, N, B, wide.get(), lengths, static_cast<float*>(y));
  }
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    reduce_impl<T>(op, A, N, B, static_cast<const T*>(x), lengths, static_cast<T*>(y));
  });
}

void CpuBackend::arg_reduce(bool is_max, DType dt, int64_t A, int64_t N, int64_t B, const void* xv,
                            const int64_t* len, int64_t* y) {
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(xv);
    for_row_blocks(A, N, B, [&](int64_t a, int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        int64_t L = reduce_math::valid_len(len, a * B + b, N), best = 0;
        for (int64_t n = 1; n < L; ++n) {
          if (reduce_math::arg_better(is_max, x[(a * N + n) * B + b], x[(a * N + best) * B + b])) best = n;
        }
        y[a * B + b] = best;
      }
    });
  });
}

void CpuBackend::softmax(bool log, DType dt, int64_t A, int64_t N, int64_t B, const void* x,
                         const int64_t* lengths, void* y) {
  if (dt == DType::f32) return softmax_impl<float>(log, A, N, B, static_cast<const float*>(x), lengths, static_cast<float*>(y));
  if (dt == DType::f64) return softmax_impl<double>(log, A, N, B, static_cast<const double*>(x), lengths, static_cast<double*>(y));
  throw Error(std::string(log ? "log_softmax" : "softmax") + ": needs a floating dtype, got " + dtype_name(dt));
}

void CpuBackend::softmax_backward(bool log, DType dt, int64_t A, int64_t N, int64_t B, const void* y, const void* g,
                                  const int64_t* lengths, void* dx) {
  if (dt == DType::f32)
    return softmax_backward_impl<float>(log, A, N, B, static_cast<const float*>(y), static_cast<const float*>(g),
                                        lengths, static_cast<float*>(dx));
  if (dt == DType::f64)
    return softmax_backward_impl<double>(log, A, N, B, static_cast<const double*>(y), static_cast<const double*>(g),
                                         lengths, static_cast<double*>(dx));
  throw Error(std::string(log ? "log_softmax" : "softmax") + " backward: needs f32 or f64, got " + dtype_name(dt));
}

void CpuBackend::cumsum(DType dt, int64_t A, int64_t N, int64_t B, const void* xv, void* yv) {
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, bool>) {
      throw Error("cumsum: bool dtype not supported");
    } else {
      const T* x = static_cast<const T*>(xv);
      T* y = static_cast<T*>(yv);
      for_row_blocks(A, N, B, [&](int64_t a, int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          T acc = 0;
          for (int64_t n = 0; n < N; ++n) {
            acc = reduce_math::combine(ReduceOp::sum, acc, x[(a * N + n) * B + b]);
            y[(a * N + n) * B + b] = acc;
          }
        }
      });
    }
  });
}

}  // namespace dimx::cpu

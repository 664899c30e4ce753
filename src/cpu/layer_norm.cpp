// CPU layer normalization along the middle axis of a contiguous [A, N, B] block (see
// backend::LayerNorm). Rows (B = 1) run in parallel, their statistics from vector sums over the
// row; columns (B > 1) go in chunks of b with the N loop outside. bf16/f16 rows are widened to
// f32 scratch first. The weight and bias gradients are summed per fixed group of rows, then over
// the groups in order, so they never depend on the thread count.
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/float_types.h"
#include "cpu/parallel.h"
#include "cpu/rows.h"

namespace dimx::cpu {

namespace {

constexpr const char* kOp = "layer_norm";

template <class T>
using Vec = xsimd::batch<T>;

// sum_i f(a_i, b_i) over n entries with four vector accumulators; the tail is added last.
template <class T, class F>
T vsum(const T* a, const T* b, int64_t n, F&& f) {
  constexpr int64_t W = int64_t(Vec<T>::size);
  Vec<T> acc[4] = {Vec<T>(T(0)), Vec<T>(T(0)), Vec<T>(T(0)), Vec<T>(T(0))};
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W)
    for (int j = 0; j < 4; ++j)
      acc[j] += f(Vec<T>::load_unaligned(a + i + j * W), Vec<T>::load_unaligned(b + i + j * W));
  for (; i + W <= n; i += W) acc[0] += f(Vec<T>::load_unaligned(a + i), Vec<T>::load_unaligned(b + i));
  T s = xsimd::hadd((acc[0] + acc[1]) + (acc[2] + acc[3]));
  for (; i < n; ++i) s += f(a[i], b[i]);
  return s;
}

template <class T>
T row_sum(const T* x, int64_t n) {
  return vsum(x, x, n, [](const auto& a, const auto&) { return a; });
}

template <class T>
T row_sq_dev(const T* x, T mean, int64_t n) {
  return vsum(x, x, n, [mean](const auto& a, const auto&) {
    const auto d = a - mean;
    return d * d;
  });
}

template <class T>
T row_dot(const T* a, const T* b, int64_t n) {
  return vsum(a, b, n, [](const auto& u, const auto& v) { return u * v; });
}

// A parameter row [N] in the compute type: the data itself, or a widened copy for bf16/f16.
template <class S>
struct Param {
  using T = ComputeOf<S>;
  std::vector<T> copy;
  const T* p = nullptr;
  Param(const void* data, int64_t N) {
    if (!data) return;
    if constexpr (std::is_same_v<S, T>) {
      p = static_cast<const T*>(data);
    } else {
      const S* s = static_cast<const S*>(data);
      copy.resize(size_t(N));
      for (int64_t i = 0; i < N; ++i) copy[size_t(i)] = widen(s[i]);
      p = copy.data();
    }
  }
};

template <class S>
void forward(const backend::LayerNorm& a, S* y, ComputeOf<S>* mean_out, ComputeOf<S>* rstd_out) {
  using T = ComputeOf<S>;
  const int64_t N = a.N, B = a.B;
  const S* x = static_cast<const S*>(a.x);
  const Param<S> w(a.weight, N), bias(a.bias, N);
  const T eps = T(a.eps), inv_n = T(1) / T(N);
  auto out = [&](T v, const T* wp, const T* bp, int64_t n) {
    if (wp) v = v * wp[n];
    if (bp) v = v + bp[n];
    return v;
  };
  for_row_blocks(a.A, N, B, [&](int64_t r, int64_t b0, int64_t b1) {
    const S* xa = x + r * N * B;
    S* ya = y + r * N * B;
    if (B == 1) {
      thread_local std::vector<T> xs, ys;
      const T* xr = widened(xa, N, xs);
      const T m = row_sum(xr, N) * inv_n;
      const T rstd = T(1) / std::sqrt(row_sq_dev(xr, m, N) * inv_n + eps);
      T* yr;
      if constexpr (std::is_same_v<S, T>) {
        yr = ya;
      } else {
        ys.resize(size_t(N));
        yr = ys.data();
      }
      const T *wp = w.p, *bp = bias.p;
      if (wp && bp)
        for (int64_t n = 0; n < N; ++n) yr[n] = (xr[n] - m) * rstd * wp[n] + bp[n];
      else
        for (int64_t n = 0; n < N; ++n) yr[n] = out((xr[n] - m) * rstd, wp, bp, n);
      if constexpr (!std::is_same_v<S, T>)
        for (int64_t n = 0; n < N; ++n) ya[n] = narrow<S>(yr[n]);
      if (mean_out) mean_out[r] = m;
      if (rstd_out) rstd_out[r] = rstd;
      return;
    }
    const int64_t cw = b1 - b0;
    std::vector<T> m(size_t(cw), T(0)), v(size_t(cw), T(0));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t b = 0; b < cw; ++b) m[size_t(b)] += widen(xa[n * B + b0 + b]);
    for (int64_t b = 0; b < cw; ++b) m[size_t(b)] *= inv_n;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t b = 0; b < cw; ++b) {
        const T d = widen(xa[n * B + b0 + b]) - m[size_t(b)];
        v[size_t(b)] += d * d;
      }
    for (int64_t b = 0; b < cw; ++b) v[size_t(b)] = T(1) / std::sqrt(v[size_t(b)] * inv_n + eps);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t b = 0; b < cw; ++b) {
        const int64_t i = n * B + b0 + b;
        ya[i] = narrow<S>(out((widen(xa[i]) - m[size_t(b)]) * v[size_t(b)], w.p, bias.p, n));
      }
    for (int64_t b = 0; b < cw; ++b) {
      if (mean_out) mean_out[r * B + b0 + b] = m[size_t(b)];
      if (rstd_out) rstd_out[r * B + b0 + b] = v[size_t(b)];
    }
  });
}

// Row groups of the parameter gradients: a fixed number for a given [A, N, B], so the order of
// the sums does not depend on the threads.
int64_t param_groups(int64_t A, int64_t N, int64_t B) {
  const int64_t per_group = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, N * B));
  return std::max<int64_t>(1, std::min<int64_t>({A, 256, (A + per_group - 1) / per_group}));
}

template <class S>
void backward(const backend::LayerNorm& a, const ComputeOf<S>* mean, const ComputeOf<S>* rstd, const S* g,
              const bool* row_mask, S* dx, S* dweight, S* dbias) {
  using T = ComputeOf<S>;
  const int64_t A = a.A, N = a.N, B = a.B;
  const S* x = static_cast<const S*>(a.x);
  const Param<S> w(a.weight, N);
  const T inv_n = T(1) / T(N);
  const bool params = dweight || dbias;
  // Partial sums [groups, 2, N]: g * xhat, then g.
  const int64_t groups = params ? param_groups(A, N, B) : 0;
  std::vector<T> part(size_t(groups * 2 * N), T(0));

  // Rows a of group-relative chunk [a0, a1) (and columns [b0, b1) when B > 1); acc: the group's
  // partial sums (null without parameter gradients).
  auto rows = [&](int64_t a0, int64_t a1, int64_t b0, int64_t b1, T* acc) {
    thread_local std::vector<T> xs, gs, xh, gw;
    for (int64_t r = a0; r < a1; ++r) {
      const S* xa = x + r * N * B;
      const S* ga = g + r * N * B;
      if (B == 1) {
        const T* xr = widened(xa, N, xs);
        const T* gr = widened(ga, N, gs);
        xh.resize(size_t(N));
        gw.resize(size_t(N));
        const T m = mean[r], s = rstd[r];
        for (int64_t n = 0; n < N; ++n) xh[size_t(n)] = (xr[n] - m) * s;
        if (w.p)
          for (int64_t n = 0; n < N; ++n) gw[size_t(n)] = gr[n] * w.p[n];
        else
          std::copy(gr, gr + N, gw.begin());
        if (dx) {
          const T c1 = row_sum(gw.data(), N) * inv_n, c2 = row_dot(gw.data(), xh.data(), N) * inv_n;
          S* dr = dx + r * N;
          for (int64_t n = 0; n < N; ++n) dr[n] = narrow<S>((gw[size_t(n)] - c1 - xh[size_t(n)] * c2) * s);
        }
        if (acc && (!row_mask || row_mask[r])) {
          T* aw = acc;
          T* ab = acc + N;
          for (int64_t n = 0; n < N; ++n) {
            aw[n] += gr[n] * xh[size_t(n)];
            ab[n] += gr[n];
          }
        }
        continue;
      }
      const int64_t cw = b1 - b0;
      std::vector<T> c1(size_t(cw), T(0)), c2(size_t(cw), T(0));
      auto xhat = [&](int64_t n, int64_t b) {
        const int64_t t = r * B + b0 + b;
        return (widen(xa[n * B + b0 + b]) - mean[t]) * rstd[t];
      };
      auto gwt = [&](int64_t n, int64_t b) {
        const T gv = widen(ga[n * B + b0 + b]);
        return w.p ? gv * w.p[n] : gv;
      };
      if (dx) {
        for (int64_t n = 0; n < N; ++n)
          for (int64_t b = 0; b < cw; ++b) {
            const T gv = gwt(n, b);
            c1[size_t(b)] += gv;
            c2[size_t(b)] += gv * xhat(n, b);
          }
        S* da = dx + r * N * B;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t b = 0; b < cw; ++b)
            da[n * B + b0 + b] = narrow<S>((gwt(n, b) - c1[size_t(b)] * inv_n - xhat(n, b) * c2[size_t(b)] * inv_n) *
                                           rstd[r * B + b0 + b]);
      }
      if (acc) {
        const bool* mr = row_mask ? row_mask + r * B + b0 : nullptr;
        for (int64_t n = 0; n < N; ++n) {
          T sw = 0, sb = 0;
          for (int64_t b = 0; b < cw; ++b) {
            if (mr && !mr[b]) continue;
            const T gv = widen(ga[n * B + b0 + b]);
            sw += gv * xhat(n, b);
            sb += gv;
          }
          acc[n] += sw;
          acc[N + n] += sb;
        }
      }
    }
  };

  if (!params) {
    for_row_blocks(A, N, B, [&](int64_t r, int64_t b0, int64_t b1) { rows(r, r + 1, b0, b1, nullptr); });
    return;
  }
  // Groups of consecutive rows a, all columns b of each.
  const int64_t per = (A + groups - 1) / groups;
  parallel_for(groups, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      rows(std::min(A, p * per), std::min(A, (p + 1) * per), 0, B, part.data() + p * 2 * N);
  });
  for (int64_t n = 0; n < N; ++n) {
    T sw = 0, sb = 0;
    for (int64_t p = 0; p < groups; ++p) {
      sw += part[size_t((p * 2) * N + n)];
      sb += part[size_t((p * 2 + 1) * N + n)];
    }
    if (dweight) dweight[n] = narrow<S>(sw);
    if (dbias) dbias[n] = narrow<S>(sb);
  }
}

}  // namespace

void CpuBackend::layer_norm(DType dt, const backend::LayerNorm& a, void* y, void* mean, void* rstd) {
  if (a.A * a.N * a.B == 0) return;
  dispatch_floating(dt, kOp, [&](auto tag) {
    using S = decltype(tag);
    using T = ComputeOf<S>;
    forward<S>(a, static_cast<S*>(y), static_cast<T*>(mean), static_cast<T*>(rstd));
  });
}

void CpuBackend::layer_norm_backward(DType dt, const backend::LayerNorm& a, const void* mean, const void* rstd,
                                     const void* g, const bool* row_mask, void* dx, void* dweight, void* dbias) {
  dispatch_floating(dt, kOp, [&](auto tag) {
    using S = decltype(tag);
    using T = ComputeOf<S>;
    if (a.A * a.B == 0 || a.N == 0) {
      for (void* p : {dweight, dbias})
        if (p)
          for (int64_t n = 0; n < a.N; ++n) static_cast<S*>(p)[n] = narrow<S>(T(0));
      return;
    }
    backward<S>(a, static_cast<const T*>(mean), static_cast<const T*>(rstd), static_cast<const S*>(g), row_mask,
                static_cast<S*>(dx), static_cast<S*>(dweight), static_cast<S*>(dbias));
  });
}

}  // namespace dimx::cpu

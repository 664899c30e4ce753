// The WKV scan on the CPU: the stable recurrence of dimx/wkv.h, sequential over time and
// vectorized across channels (xsimd), one task per (sequence, block of channels) on the pool.
// Every channel goes through full vector lanes (tails are staged through a lane buffer), so
// a value never depends on where its channel sits.
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cstring>

#include "cpu/cpu_backend.h"
#include "cpu/parallel.h"

namespace dimx::cpu {

namespace {

template <class T>
using Vec = xsimd::batch<T>;

constexpr double kMinLog = -1e38;  // the empty state's max (log of 0, kept finite)
constexpr int64_t kMaxWidth = 512;  // channels per task (state lives on the stack)

// Channels per task: enough tasks to keep the pool busy, rows as long as possible.
int64_t task_width(int64_t B, int64_t C, int64_t W) {
  int64_t want = std::max<int64_t>(1, (4 * num_threads() + B - 1) / B);
  int64_t width = (C + want - 1) / want;
  width = std::max<int64_t>(width, 4 * W);
  width = (width + W - 1) / W * W;
  return std::min(width, kMaxWidth);
}

int64_t valid_len(const int64_t* lengths, int64_t b, int64_t T) {
  return lengths ? std::clamp<int64_t>(lengths[b], 0, T) : T;
}

// Loads `cnt` (<= lane count) values; missing lanes get `fill`.
template <class T>
Vec<T> load(const T* p, int64_t cnt, T fill = T(0)) {
  constexpr int64_t W = int64_t(Vec<T>::size);
  if (cnt == W) return Vec<T>::load_unaligned(p);
  alignas(64) T buf[W];
  for (int64_t j = 0; j < W; ++j) buf[j] = j < cnt ? p[j] : fill;
  return Vec<T>::load_aligned(buf);
}

template <class T>
void store(const Vec<T>& v, T* p, int64_t cnt) {
  constexpr int64_t W = int64_t(Vec<T>::size);
  if (cnt == W) return v.store_unaligned(p);
  alignas(64) T buf[W];
  v.store_aligned(buf);
  std::memcpy(p, buf, size_t(cnt) * sizeof(T));
}

// exp(-|d|) and which side of max(a, b) won (d = a - b >= 0: a). One exp per log-sum.
template <class T>
struct Weights {
  Vec<T> wa, wb, max;
};
template <class T>
Weights<T> log_weights(const Vec<T>& a, const Vec<T>& b) {
  const Vec<T> one(T(1));
  Vec<T> d = a - b;
  auto a_wins = d >= Vec<T>(T(0));
  Vec<T> e = xsimd::exp(-xsimd::abs(d));
  return {xsimd::select(a_wins, one, e), xsimd::select(a_wins, e, one), xsimd::select(a_wins, a, b)};
}

// w = -exp(time_decay) for `cw` channels; the lanes past them get -1.
template <class T>
void decays(const T* td, int64_t cw, T* w) {
  constexpr int64_t W = int64_t(Vec<T>::size);
  for (int64_t c = 0; c < cw; c += W) (-xsimd::exp(load(td + c, std::min(W, cw - c)))).store_aligned(w + c);
  for (int64_t c = cw; c < (cw + W - 1) / W * W; ++c) w[c] = T(-1);
}

template <class T>
void forward(const backend::Wkv& a, T* y, T* log_den, T* const* state_out) {
  constexpr int64_t W = int64_t(Vec<T>::size);
  const int64_t B = a.B, Tn = a.T, C = a.C;
  const T* td = static_cast<const T*>(a.time_decay);
  const T* u = static_cast<const T*>(a.u);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const T* s_in[3] = {static_cast<const T*>(a.state[0]), static_cast<const T*>(a.state[1]),
                      static_cast<const T*>(a.state[2])};
  const int64_t width = task_width(B, C, W), per_b = (C + width - 1) / width;
  const int64_t grain = B * Tn * C >= kParallelGrain ? 2 : B * per_b + 1;
  parallel_for(B * per_b, grain, [&](int64_t lo, int64_t hi) {
    alignas(64) T aa[kMaxWidth], bb[kMaxWidth], pp[kMaxWidth], w[kMaxWidth];
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t b = task / per_b, c0 = task % per_b * width, cw = std::min(width, C - c0);
      decays(td + c0, cw, w);
      for (int64_t c = 0; c < (cw + W - 1) / W * W; ++c) {
        const int64_t i = b * C + c0 + c;
        const bool given = s_in[0] && c < cw;
        aa[c] = given ? s_in[0][i] : T(0);
        bb[c] = given ? s_in[1][i] : T(0);
        pp[c] = given ? std::max(s_in[2][i], T(kMinLog)) : T(kMinLog);
      }
      const int64_t len = valid_len(a.lengths, b, Tn);
      for (int64_t t = 0; t < len; ++t) {
        const int64_t row = (b * Tn + t) * C + c0;
        for (int64_t c = 0; c < cw; c += W) {
          const int64_t n = std::min(W, cw - c);
          const Vec<T> kk = load(k + row + c, n), vv = load(v + row + c, n);
          Vec<T> sa = Vec<T>::load_aligned(aa + c), sb = Vec<T>::load_aligned(bb + c);
          const Vec<T> sp = Vec<T>::load_aligned(pp + c);
          // Output: the state plus this frame with the bonus u.
          Weights<T> o = log_weights(sp, load(u + c0 + c, n) + kk);
          const Vec<T> den = o.wa * sb + o.wb;
          store(Vec<T>((o.wa * sa + o.wb * vv) / den), y + row + c, n);
          if (log_den) store(Vec<T>(o.max + xsimd::log(den)), log_den + row + c, n);
          // State: decay by w, then add this frame.
          Weights<T> s = log_weights(Vec<T>::load_aligned(w + c) + sp, kk);
          (s.wa * sa + s.wb * vv).store_aligned(aa + c);
          (s.wa * sb + s.wb).store_aligned(bb + c);
          s.max.store_aligned(pp + c);
        }
      }
      for (int64_t t = len; t < Tn; ++t) {
        std::memset(y + (b * Tn + t) * C + c0, 0, size_t(cw) * sizeof(T));
        if (log_den) std::memset(log_den + (b * Tn + t) * C + c0, 0, size_t(cw) * sizeof(T));
      }
      if (state_out) {
        std::memcpy(state_out[0] + b * C + c0, aa, size_t(cw) * sizeof(T));
        std::memcpy(state_out[1] + b * C + c0, bb, size_t(cw) * sizeof(T));
        std::memcpy(state_out[2] + b * C + c0, pp, size_t(cw) * sizeof(T));
      }
    }
  });
}

// Reverse-time accumulators of the future's gradient, all scaled by exp(qq):
//   G_t = sum_{s>t} e^{(s-1-t)w} gy_s/D_s,  H_t = the same with gy_s y_s,
//   G'_t, H'_t = the same sums weighted by (s-1-t) (their w-derivatives over e^w).
// dv_t = e^{u+k_t} gy_t/D_t + e^{k_t} G_t;  dk_t = e^{u+k_t} gy_t (v_t-y_t)/D_t + e^{k_t}(v_t G_t - H_t);
// dw = sum_t e^{k_t}(v_t G'_t - H'_t) + (num_0 G'_{-1} - den_0 H'_{-1}) for the incoming state.
template <class T>
void backward(const backend::Wkv& a, const T* y, const T* log_den, const T* gy, T* gk, T* gv, T* gtd, T* gu) {
  constexpr int64_t W = int64_t(Vec<T>::size);
  const int64_t B = a.B, Tn = a.T, C = a.C;
  const T* td = static_cast<const T*>(a.time_decay);
  const T* u = static_cast<const T*>(a.u);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const T* s_in[3] = {static_cast<const T*>(a.state[0]), static_cast<const T*>(a.state[1]),
                      static_cast<const T*>(a.state[2])};
  const int64_t width = task_width(B, C, W), per_b = (C + width - 1) / width;
  const int64_t grain = B * Tn * C >= kParallelGrain / 2 ? 2 : B * per_b + 1;
  parallel_for(B * per_b, grain, [&](int64_t lo, int64_t hi) {
    alignas(64) T gg[kMaxWidth], hh[kMaxWidth], g2[kMaxWidth], h2[kMaxWidth], qq[kMaxWidth];
    alignas(64) T dw[kMaxWidth], du[kMaxWidth], w[kMaxWidth];
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t b = task / per_b, c0 = task % per_b * width, cw = std::min(width, C - c0);
      decays(td + c0, cw, w);
      for (int64_t c = 0; c < (cw + W - 1) / W * W; ++c) {
        gg[c] = hh[c] = g2[c] = h2[c] = dw[c] = du[c] = T(0);
        qq[c] = T(kMinLog);
      }
      const int64_t len = valid_len(a.lengths, b, Tn);
      for (int64_t t = len - 1; t >= 0; --t) {
        const int64_t row = (b * Tn + t) * C + c0;
        for (int64_t c = 0; c < cw; c += W) {
          const int64_t n = std::min(W, cw - c);
          const Vec<T> kk = load(k + row + c, n), vv = load(v + row + c, n), yy = load(y + row + c, n);
          const Vec<T> g = load(gy + row + c, n), ld = load(log_den + row + c, n);
          Vec<T> G = Vec<T>::load_aligned(gg + c), H = Vec<T>::load_aligned(hh + c);
          Vec<T> G2 = Vec<T>::load_aligned(g2 + c), H2 = Vec<T>::load_aligned(h2 + c);
          const Vec<T> q = Vec<T>::load_aligned(qq + c);
          const Vec<T> eu = xsimd::exp(load(u + c0 + c, n) + kk - ld);  // e^{u+k}/D <= 1
          const Vec<T> ek = xsimd::exp(q + kk);                          // e^{k} times the scale
          const Vec<T> direct = g * eu;
          store(Vec<T>(direct + ek * G), gv + row + c, n);
          store(Vec<T>(direct * (vv - yy) + ek * (vv * G - H)), gk + row + c, n);
          (Vec<T>::load_aligned(du + c) + direct * (vv - yy)).store_aligned(du + c);
          (Vec<T>::load_aligned(dw + c) + ek * (vv * G2 - H2)).store_aligned(dw + c);
          // Step back over frame t: decay by w and add gy_t / D_t.
          Weights<T> s = log_weights(Vec<T>::load_aligned(w + c) + q, -ld);
          (s.wa * (G2 + G)).store_aligned(g2 + c);
          (s.wa * (H2 + H)).store_aligned(h2 + c);
          (s.wa * G + s.wb * g).store_aligned(gg + c);
          (s.wa * H + s.wb * g * yy).store_aligned(hh + c);
          s.max.store_aligned(qq + c);
        }
      }
      for (int64_t t = len; t < Tn; ++t) {
        std::memset(gk + (b * Tn + t) * C + c0, 0, size_t(cw) * sizeof(T));
        std::memset(gv + (b * Tn + t) * C + c0, 0, size_t(cw) * sizeof(T));
      }
      for (int64_t c = 0; c < cw; ++c) {
        const int64_t i = b * C + c0 + c;
        T init = 0;
        if (s_in[0]) {
          T e = std::exp(std::max(s_in[2][i], T(kMinLog)) + qq[c]);
          T x = s_in[0][i] * g2[c] - s_in[1][i] * h2[c];
          init = x == T(0) ? T(0) : e * x;
        }
        gtd[i] = (dw[c] + init) * w[c];  // chain rule through w = -exp(time_decay)
        gu[i] = du[c];
      }
    }
  });
}

}  // namespace

void CpuBackend::wkv_forward(DType dt, const backend::Wkv& a, void* y, void* log_den, void* const state_out[3]) {
  auto go = [&](auto zero) {
    using T = decltype(zero);
    T* so[3] = {state_out ? static_cast<T*>(state_out[0]) : nullptr, state_out ? static_cast<T*>(state_out[1]) : nullptr,
                state_out ? static_cast<T*>(state_out[2]) : nullptr};
    forward<T>(a, static_cast<T*>(y), static_cast<T*>(log_den), state_out ? so : nullptr);
  };
  if (dt == DType::f32) return go(float{});
  if (dt == DType::f64) return go(double{});
  throw Error(std::string("wkv: dtype ") + dtype_name(dt) + " not supported on the CPU (f32, f64)");
}

void CpuBackend::wkv_backward(DType dt, const backend::Wkv& a, const void* y, const void* log_den, const void* gy,
                              void* gk, void* gv, void* gtd, void* gu) {
  auto go = [&](auto zero) {
    using T = decltype(zero);
    backward<T>(a, static_cast<const T*>(y), static_cast<const T*>(log_den), static_cast<const T*>(gy),
                static_cast<T*>(gk), static_cast<T*>(gv), static_cast<T*>(gtd), static_cast<T*>(gu));
  };
  if (dt == DType::f32) return go(float{});
  if (dt == DType::f64) return go(double{});
  throw Error(std::string("wkv: dtype ") + dtype_name(dt) + " not supported on the CPU (f32, f64)");
}

}  // namespace dimx::cpu

// The WKV scan on the CPU: sequential in time, vectorized across channels (xsimd), parallel
// over (batch, channel block). One exp per max-rescaling: of e^{a-p}, e^{b-p} with
// p = max(a, b), one factor is 1 and the other e^{-|a-b|}.
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_backend.h"
#include "parallel.h"

namespace dimx::cpu {

namespace {

// Scalar and batch versions of the few functions the scan needs.
template <class T>
T vexp(T x) { return std::exp(x); }
template <class T, class A>
xsimd::batch<T, A> vexp(const xsimd::batch<T, A>& x) { return xsimd::exp(x); }
template <class T>
T vlog(T x) { return std::log(x); }
template <class T, class A>
xsimd::batch<T, A> vlog(const xsimd::batch<T, A>& x) { return xsimd::log(x); }
template <class T>
T vabs(T x) { return std::abs(x); }
template <class T, class A>
xsimd::batch<T, A> vabs(const xsimd::batch<T, A>& x) { return xsimd::abs(x); }
template <class T>
T vmax(T a, T b) { return std::max(a, b); }
template <class T, class A>
xsimd::batch<T, A> vmax(const xsimd::batch<T, A>& a, const xsimd::batch<T, A>& b) { return xsimd::max(a, b); }
template <class T>
T vsel(bool c, T a, T b) { return c ? a : b; }
template <class T, class A>
xsimd::batch<T, A> vsel(const xsimd::batch_bool<T, A>& c, const xsimd::batch<T, A>& a, const xsimd::batch<T, A>& b) {
  return xsimd::select(c, a, b);
}

template <class V, class T>
V load(const T* p) {
  if constexpr (std::is_same_v<V, T>) return *p;
  else return V::load_unaligned(p);
}
template <class V, class T>
void store(T* p, const V& x) {
  if constexpr (std::is_same_v<V, T>) *p = x;
  else x.store_unaligned(p);
}

constexpr double kEmptyMax = -1e38;
constexpr int64_t kBlock = 256;  // channels per task

// Channels [c0, c0 + n) of batch entry b; V is a batch of `step` channels (or the scalar type).
// Time is the outer loop, so every step streams one contiguous row piece of k, v and y.
template <class T, class V, int64_t step>
void forward_channels(const backend::Wkv& a, int64_t b, int64_t c0, int64_t n, int64_t len) {
  constexpr int64_t N = kBlock / step;
  const int64_t nv = n / step;
  if (nv == 0) return;
  const T* w = static_cast<const T*>(a.w);
  const T* u = static_cast<const T*>(a.u);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  T* y = static_cast<T*>(a.y);
  T* ld = static_cast<T*>(a.log_den);
  const int64_t C = a.C, T_ = a.T;
  V aa[N], bb[N], pp[N], wv[N], uv[N];
  for (int64_t j = 0; j < nv; ++j) {
    const int64_t c = c0 + j * step, s = b * C + c;
    aa[j] = a.state_in[0] ? load<V>(static_cast<const T*>(a.state_in[0]) + s) : V(T(0));
    bb[j] = a.state_in[1] ? load<V>(static_cast<const T*>(a.state_in[1]) + s) : V(T(0));
    pp[j] = a.state_in[2] ? load<V>(static_cast<const T*>(a.state_in[2]) + s) : V(T(kEmptyMax));
    wv[j] = load<V>(w + c);
    uv[j] = load<V>(u + c);
  }
  const V one(T(1));
  for (int64_t t = 0; t < len; ++t) {
    const int64_t row = (b * T_ + t) * C + c0;
    for (int64_t j = 0; j < nv; ++j) {
      const int64_t i = row + j * step;
      const V kt = load<V>(k + i), vt = load<V>(v + i);
      V ww = uv[j] + kt;
      V d = vexp(-vabs(pp[j] - ww));
      auto hist = pp[j] >= ww;  // the history holds the max
      V e1 = vsel(hist, one, d), e2 = vsel(hist, d, one);
      const V den = e1 * bb[j] + e2;
      store(y + i, V((e1 * aa[j] + e2 * vt) / den));
      if (ld) store(ld + i, V(vmax(pp[j], ww) + vlog(den)));
      ww = wv[j] + pp[j];
      d = vexp(-vabs(ww - kt));
      hist = ww >= kt;
      e1 = vsel(hist, one, d);
      e2 = vsel(hist, d, one);
      aa[j] = e1 * aa[j] + e2 * vt;
      bb[j] = e1 * bb[j] + e2;
      pp[j] = vmax(ww, kt);
    }
  }
  for (int64_t t = len; t < T_; ++t) {
    const int64_t row = (b * T_ + t) * C + c0;
    std::fill(y + row, y + row + nv * step, T(0));
    if (ld) std::fill(ld + row, ld + row + nv * step, T(0));
  }
  if (a.state_out[0])
    for (int64_t j = 0; j < nv; ++j) {
      const int64_t s = b * C + c0 + j * step;
      store(static_cast<T*>(a.state_out[0]) + s, aa[j]);
      store(static_cast<T*>(a.state_out[1]) + s, bb[j]);
      store(static_cast<T*>(a.state_out[2]) + s, pp[j]);
    }
}

// The reverse scan. With c_s = gy_s / D_s it carries, for the frames after t,
//   G = sum e^{(s-1-t) w} c_s,  H = sum e^{(s-1-t) w} c_s y_s,  and G' = dG/dw, H' = dH/dw,
// all scaled by e^{-q} (q tracks the largest exponent), so that e^{k_t} G never overflows.
template <class T, class V, int64_t step>
void backward_channels(const backend::Wkv& a, const backend::WkvGrad& g, int64_t b, int64_t c0, int64_t n,
                       int64_t len) {
  constexpr int64_t N = kBlock / step;
  const int64_t nv = n / step;
  if (nv == 0) return;
  const T* w = static_cast<const T*>(a.w);
  const T* u = static_cast<const T*>(a.u);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const T* y = static_cast<const T*>(a.y);
  const T* ld = static_cast<const T*>(a.log_den);
  const T* gy = static_cast<const T*>(g.gy);
  T* gk = static_cast<T*>(g.gk);
  T* gv = static_cast<T*>(g.gv);
  const int64_t C = a.C, T_ = a.T;
  const V one(T(1)), zero(T(0));
  V G[N], H[N], G1[N], H1[N], q[N], dw[N], du[N], wv[N], uv[N];
  for (int64_t j = 0; j < nv; ++j) {
    G[j] = H[j] = G1[j] = H1[j] = dw[j] = du[j] = zero;
    q[j] = V(T(kEmptyMax));
    wv[j] = load<V>(w + c0 + j * step);
    uv[j] = load<V>(u + c0 + j * step);
  }
  for (int64_t t = T_ - 1; t >= len; --t) {
    const int64_t row = (b * T_ + t) * C + c0;
    std::fill(gk + row, gk + row + nv * step, T(0));
    std::fill(gv + row, gv + row + nv * step, T(0));
  }
  for (int64_t t = len - 1; t >= 0; --t) {
    const int64_t row = (b * T_ + t) * C + c0;
    for (int64_t j = 0; j < nv; ++j) {
      const int64_t i = row + j * step;
      const V kt = load<V>(k + i), vt = load<V>(v + i), yt = load<V>(y + i), lt = load<V>(ld + i),
              gt = load<V>(gy + i);
      const V ek = vexp(kt + q[j]);                  // e^{k_t} times the scale of G, H
      const V now = gt * vexp(uv[j] + kt - lt);      // gy_t e^{u + k_t} / D_t
      store(gv + i, V(now + ek * G[j]));
      store(gk + i, V(now * (vt - yt) + ek * (vt * G[j] - H[j])));
      du[j] += now * (vt - yt);
      dw[j] += ek * (vt * G1[j] - H1[j]);
      // Step to the sums over s > t - 1.
      const V decayed = q[j] + wv[j], fresh = -lt;
      const V d = vexp(-vabs(decayed - fresh));
      const auto old = decayed >= fresh;
      const V sa = vsel(old, one, d), sb = vsel(old, d, one);
      G1[j] = sa * (G1[j] + G[j]);
      H1[j] = sa * (H1[j] + H[j]);
      G[j] = sa * G[j] + sb * gt;
      H[j] = sa * H[j] + sb * gt * yt;
      q[j] = vmax(decayed, fresh);
    }
  }
  for (int64_t j = 0; j < nv; ++j) {
    const int64_t s = b * C + c0 + j * step;
    if (a.state_in[0]) {
      // The carried history is frame -1: it reaches frame s decayed by e^{s w}.
      const V num = load<V>(static_cast<const T*>(a.state_in[0]) + s);
      const V den = load<V>(static_cast<const T*>(a.state_in[1]) + s);
      const V mx = load<V>(static_cast<const T*>(a.state_in[2]) + s);
      dw[j] += vexp(mx + q[j]) * (num * G1[j] - den * H1[j]);
    }
    store(static_cast<T*>(g.gw) + s, dw[j]);
    store(static_cast<T*>(g.gu) + s, du[j]);
  }
}

template <class T, class Body>
void over_blocks(const backend::Wkv& a, Body&& body) {
  const int64_t blocks = (a.C + kBlock - 1) / kBlock;
  parallel_for(a.B * blocks, 1, [&](int64_t begin, int64_t end) {
    using V = xsimd::batch<T>;
    constexpr int64_t W = int64_t(V::size);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, c0 = (task % blocks) * kBlock, n = std::min(kBlock, a.C - c0);
      const int64_t len = a.lengths ? std::clamp<int64_t>(a.lengths[b], 0, a.T) : a.T;
      const int64_t vec = n / W * W;
      body.template operator()<V, W>(b, c0, vec, len);
      body.template operator()<T, 1>(b, c0 + vec, n - vec, len);
    }
  });
}

}  // namespace

void CpuBackend::wkv_forward(DType dt, const backend::Wkv& a) {
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_floating_point_v<T>) {
      over_blocks<T>(a, [&]<class V, int64_t W>(int64_t b, int64_t c0, int64_t n, int64_t len) {
        forward_channels<T, V, W>(a, b, c0, n, len);
      });
    } else {
      throw Error(std::string("wkv: needs a floating dtype, got ") + dtype_name(dt));
    }
  });
}

void CpuBackend::wkv_backward(DType dt, const backend::Wkv& a, const backend::WkvGrad& g) {
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_floating_point_v<T>) {
      over_blocks<T>(a, [&]<class V, int64_t W>(int64_t b, int64_t c0, int64_t n, int64_t len) {
        backward_channels<T, V, W>(a, g, b, c0, n, len);
      });
    } else {
      throw Error(std::string("wkv: needs a floating dtype, got ") + dtype_name(dt));
    }
  });
}

}  // namespace dimx::cpu

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
template <class T, class V, int64_t step>
void forward_channels(const backend::Wkv& a, int64_t b, int64_t c0, int64_t n, int64_t len) {
  const T* w = static_cast<const T*>(a.w);
  const T* u = static_cast<const T*>(a.u);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  T* y = static_cast<T*>(a.y);
  T* ld = static_cast<T*>(a.log_den);
  const int64_t C = a.C, T_ = a.T;
  for (int64_t c = c0; c + step <= c0 + n; c += step) {
    const int64_t s = b * C + c;
    V aa = a.state_in[0] ? load<V>(static_cast<const T*>(a.state_in[0]) + s) : V(T(0));
    V bb = a.state_in[1] ? load<V>(static_cast<const T*>(a.state_in[1]) + s) : V(T(0));
    V pp = a.state_in[2] ? load<V>(static_cast<const T*>(a.state_in[2]) + s) : V(T(kEmptyMax));
    const V wv = load<V>(w + c), uv = load<V>(u + c), one(T(1));
    for (int64_t t = 0; t < len; ++t) {
      const int64_t i = (b * T_ + t) * C + c;
      const V kt = load<V>(k + i), vt = load<V>(v + i);
      V ww = uv + kt;
      V d = vexp(-vabs(pp - ww));
      auto hist = pp >= ww;  // the history holds the max
      V e1 = vsel(hist, one, d), e2 = vsel(hist, d, one);
      V den = e1 * bb + e2;
      store(y + i, V((e1 * aa + e2 * vt) / den));
      if (ld) store(ld + i, V(vmax(pp, ww) + vlog(den)));
      ww = wv + pp;
      d = vexp(-vabs(ww - kt));
      hist = ww >= kt;
      e1 = vsel(hist, one, d);
      e2 = vsel(hist, d, one);
      aa = e1 * aa + e2 * vt;
      bb = e1 * bb + e2;
      pp = vmax(ww, kt);
    }
    for (int64_t t = len; t < T_; ++t) {
      const int64_t i = (b * T_ + t) * C + c;
      store(y + i, V(T(0)));
      if (ld) store(ld + i, V(T(0)));
    }
    if (a.state_out[0]) {
      store(static_cast<T*>(a.state_out[0]) + s, aa);
      store(static_cast<T*>(a.state_out[1]) + s, bb);
      store(static_cast<T*>(a.state_out[2]) + s, pp);
    }
  }
}

// The reverse scan. With c_s = gy_s / D_s it carries, for the frames after t,
//   G = sum e^{(s-1-t) w} c_s,  H = sum e^{(s-1-t) w} c_s y_s,  and G' = dG/dw, H' = dH/dw,
// all scaled by e^{-q} (q tracks the largest exponent), so that e^{k_t} G never overflows.
template <class T, class V, int64_t step>
void backward_channels(const backend::Wkv& a, const backend::WkvGrad& g, int64_t b, int64_t c0, int64_t n,
                       int64_t len) {
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
  for (int64_t c = c0; c + step <= c0 + n; c += step) {
    const V wv = load<V>(w + c), uv = load<V>(u + c), one(T(1)), zero(T(0));
    V G = zero, H = zero, G1 = zero, H1 = zero, q = V(T(kEmptyMax)), dw = zero, du = zero;
    for (int64_t t = T_ - 1; t >= len; --t) {
      const int64_t i = (b * T_ + t) * C + c;
      store(gk + i, zero);
      store(gv + i, zero);
    }
    for (int64_t t = len - 1; t >= 0; --t) {
      const int64_t i = (b * T_ + t) * C + c;
      const V kt = load<V>(k + i), vt = load<V>(v + i), yt = load<V>(y + i), lt = load<V>(ld + i),
              gt = load<V>(gy + i);
      const V ek = vexp(kt + q);                // e^{k_t} times the scale of G, H
      const V now = gt * vexp(uv + kt - lt);    // gy_t e^{u + k_t} / D_t
      store(gv + i, V(now + ek * G));
      store(gk + i, V(now * (vt - yt) + ek * (vt * G - H)));
      du += now * (vt - yt);
      dw += ek * (vt * G1 - H1);
      // Step to the sums over s > t - 1.
      const V decayed = q + wv, fresh = -lt;
      const V d = vexp(-vabs(decayed - fresh));
      const auto old = decayed >= fresh;
      const V sa = vsel(old, one, d), sb = vsel(old, d, one);
      G1 = sa * (G1 + G);
      H1 = sa * (H1 + H);
      G = sa * G + sb * gt;
      H = sa * H + sb * gt * yt;
      q = vmax(decayed, fresh);
    }
    if (a.state_in[0]) {
      // The carried history is frame -1: it reaches frame s decayed by e^{s w}.
      const int64_t s = b * C + c;
      const V num = load<V>(static_cast<const T*>(a.state_in[0]) + s);
      const V den = load<V>(static_cast<const T*>(a.state_in[1]) + s);
      const V mx = load<V>(static_cast<const T*>(a.state_in[2]) + s);
      dw += vexp(mx + q) * (num * G1 - den * H1);
    }
    store(static_cast<T*>(g.gw) + b * C + c, dw);
    store(static_cast<T*>(g.gu) + b * C + c, du);
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

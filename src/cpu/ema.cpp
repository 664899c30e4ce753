// The multi-head damped EMA on the CPU (dimx/ema.h, backend::Ema): sequential over time, one
// task per (sequence, block of channels), the heads of a channel innermost (contiguous, so the
// compiler vectorizes them). The backward is one reverse sweep (see ema_backward_rows).
#include <algorithm>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/parallel.h"

namespace dimx::cpu {

namespace {

constexpr int64_t kChannelsPerTask = 64;

int64_t valid_len(const int64_t* lengths, int64_t b, int64_t L) {
  return lengths ? std::clamp<int64_t>(lengths[b], 0, L) : L;
}

// Runs fn(b, c0, c1) for every sequence and block of channels, in parallel.
template <class F>
void for_tasks(const backend::Ema& a, F&& fn) {
  const int64_t blocks = (a.C + kChannelsPerTask - 1) / kChannelsPerTask;
  parallel_for(a.B * blocks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / blocks, c0 = (t % blocks) * kChannelsPerTask;
      fn(b, c0, std::min(a.C, c0 + kChannelsPerTask));
    }
  });
}

// a's operands, typed.
template <class T>
struct Operands {
  const T *x, *gain, *decay, *weight, *s0;
  explicit Operands(const backend::Ema& a)
      : x(static_cast<const T*>(a.x)), gain(static_cast<const T*>(a.gain)), decay(static_cast<const T*>(a.decay)),
        weight(static_cast<const T*>(a.weight)), s0(static_cast<const T*>(a.state)) {}
};

template <class T>
void ema_forward_rows(const backend::Ema& a, T* y, T* state_out) {
  // Plain variables, not a structured binding: lambdas capture them under Clang 14 too.
  const Operands<T> ops(a);
  const T *x = ops.x, *gain = ops.gain, *decay = ops.decay, *weight = ops.weight, *s0 = ops.s0;
  const int64_t L = a.L, C = a.C, H = a.H;
  for_tasks(a, [&](int64_t b, int64_t c0, int64_t c1) {
    const int64_t n = valid_len(a.lengths, b, L), w = c1 - c0;
    std::vector<T> s(size_t(w * H), T(0));
    if (s0) std::copy(s0 + (b * C + c0) * H, s0 + (b * C + c1) * H, s.begin());
    for (int64_t t = 0; t < L; ++t) {
      const T* xt = x + b * a.sb + t * a.st;
      T* yt = y + b * a.sb + t * a.st;
      if (t >= n) {
        std::fill(yt + c0, yt + c1, T(0));
        continue;
      }
      for (int64_t c = c0; c < c1; ++c) {
        const T xv = xt[c];
        T* sc = s.data() + (c - c0) * H;
        const T *ac = gain + c * H, *qc = decay + c * H, *wc = weight + c * H;
        T acc = 0;
        for (int64_t h = 0; h < H; ++h) {
          sc[h] = qc[h] * sc[h] + ac[h] * xv;
          acc += wc[h] * sc[h];
        }
        yt[c] = acc;
      }
    }
    if (state_out) std::copy(s.begin(), s.end(), state_out + (b * C + c0) * H);
  });
}

// One reverse sweep over each sequence's valid frames (n of them), with g_t = dL/dy_t and
// G = dL/d(final state) (each may be absent: zeros):
//   lambda_t = dL/ds_t = weight g_t + q lambda_{t+1} (+ G at t = n - 1)
//   P_t = lambda_{t+1} + q P_{t+1},  r_t = g_t + q r_{t+1}   (all 0 past the last valid frame)
//   dx_t = gain lambda_t            dgain = sum_t x_t lambda_t
//   dweight = gain sum_t x_t r_t + s0 q r_0
//   ddecay = gain sum_t x_t P_t + s0 (lambda_0 + q P_0)
//   dstate = q lambda_0 (n >= 1), G (n = 0)
template <class T>
void ema_backward_rows(const backend::Ema& a, const T* gy, const T* gfinal, T* gx, T* ggain, T* gdecay, T* gweight,
                       T* gstate) {
  // Plain variables, not a structured binding: lambdas capture them under Clang 14 too.
  const Operands<T> ops(a);
  const T *x = ops.x, *gain = ops.gain, *decay = ops.decay, *weight = ops.weight, *s0 = ops.s0;
  const int64_t L = a.L, C = a.C, H = a.H;
  for_tasks(a, [&](int64_t b, int64_t c0, int64_t c1) {
    const int64_t n = valid_len(a.lengths, b, L), w = c1 - c0;
    std::vector<T> r(size_t(w * H), T(0)), lam(r), P(r), sxr(r), sxlam(r), sxp(r);
    for (int64_t t = L - 1; t >= 0; --t) {
      T* gxt = gx + b * a.sb + t * a.st;
      if (t >= n) {
        std::fill(gxt + c0, gxt + c1, T(0));
        continue;
      }
      const T* xt = x + b * a.sb + t * a.st;
      for (int64_t c = c0; c < c1; ++c) {
        const T xv = xt[c], gv = gy ? gy[b * a.sb + t * a.st + c] : T(0);
        const size_t o = size_t((c - c0) * H);
        const T *ac = gain + c * H, *qc = decay + c * H, *wc = weight + c * H;
        T* __restrict rr = r.data() + o;
        T* __restrict ll = lam.data() + o;
        T* __restrict pp = P.data() + o;
        T* __restrict s1 = sxr.data() + o;
        T* __restrict s2 = sxlam.data() + o;
        T* __restrict s3 = sxp.data() + o;
        T acc = 0;
        for (int64_t h = 0; h < H; ++h) {
          pp[h] = ll[h] + qc[h] * pp[h];
          rr[h] = gv + qc[h] * rr[h];
          ll[h] = wc[h] * gv + qc[h] * ll[h];
          s1[h] += xv * rr[h];
          s3[h] += xv * pp[h];
        }
        if (gfinal && t == n - 1) {  // the final state's gradient enters at the last valid frame
          const T* G = gfinal + (b * C + c) * H;
          for (int64_t h = 0; h < H; ++h) ll[h] += G[h];
        }
        for (int64_t h = 0; h < H; ++h) {
          s2[h] += xv * ll[h];
          acc += ac[h] * ll[h];
        }
        gxt[c] = acc;
      }
    }
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t h = 0; h < H; ++h) {
        const size_t o = size_t((c - c0) * H + h);
        const int64_t p = c * H + h, out = (b * C + c) * H + h;
        const T s = s0 ? s0[out] : T(0);
        ggain[out] = sxlam[o];
        gweight[out] = gain[p] * sxr[o] + s * decay[p] * r[o];
        gdecay[out] = gain[p] * sxp[o] + s * (lam[o] + decay[p] * P[o]);
        if (gstate) gstate[out] = n > 0 ? decay[p] * lam[o] : gfinal ? gfinal[out] : T(0);
      }
  });
}

}  // namespace

void CpuBackend::ema_forward(DType dt, const backend::Ema& a, void* y, void* state_out) {
  if (dt == DType::f32) return ema_forward_rows<float>(a, static_cast<float*>(y), static_cast<float*>(state_out));
  if (dt == DType::f64) return ema_forward_rows<double>(a, static_cast<double*>(y), static_cast<double*>(state_out));
  throw Error(std::string("ema: dtype ") + dtype_name(dt) + " not supported (f32, f64)");
}

void CpuBackend::ema_backward(DType dt, const backend::Ema& a, const void* gy, const void* gfinal, void* gx,
                              void* ggain, void* gdecay, void* gweight, void* gstate) {
  auto go = [&](auto tag) {
    using T = decltype(tag);
    ema_backward_rows<T>(a, static_cast<const T*>(gy), static_cast<const T*>(gfinal), static_cast<T*>(gx), static_cast<T*>(ggain),
                         static_cast<T*>(gdecay), static_cast<T*>(gweight), static_cast<T*>(gstate));
  };
  if (dt == DType::f32) return go(float{});
  if (dt == DType::f64) return go(double{});
  throw Error(std::string("ema: dtype ") + dtype_name(dt) + " not supported (f32, f64)");
}

}  // namespace dimx::cpu

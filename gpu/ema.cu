// The multi-head damped EMA on CUDA (dimx/ema.h, backend::Ema), chunked over time like the
// WKV scan so that few channels and long sequences still fill the GPU. A thread owns one
// (chunk, sequence, channel) and keeps the states of up to kGroup heads in registers (more
// heads: it runs over them in groups, adding into its outputs).
//   forward:  1. summary: each chunk's final state, scanned from zeros;
//             2. combine: per (sequence, channel, head), a sequential pass over the chunks
//                gives each chunk its incoming state (state after a chunk of n valid frames
//                = decay^n * state before + the chunk's own part) and the final state;
//             3. main: each chunk rescans its frames from its incoming state and writes y.
//   backward: the same three steps in reverse time over (r, lambda, P) of src/cpu/ema.cpp;
//             step 3 also writes per-chunk sums of x r, x lambda and x P, and 4. finish sums
//             them over the chunks and adds the incoming state's terms.
// Steps 1 and 3 are one kernel each way (fwd_scan, bwd_scan), without and with their outputs.
// With enough channels to fill the GPU there is one chunk and only steps 3 (and 4) run.

#include "common.cuh"

namespace dimx::gpu {

namespace {

constexpr int kThreads = 128;
constexpr int kUnroll = 8;  // frames loaded ahead of the dependent recurrence
constexpr int kGroup = 16;  // heads kept in registers at once

struct Geometry {
  int64_t B, L, C, H, BC, Lc, chunks;
  int64_t sb, st;  // x's strides over sequences and frames (channels contiguous)
  const int64_t* len;
  __device__ int64_t valid(int64_t b) const {
    if (!len) return L;
    int64_t l = len[b];
    return l < 0 ? 0 : (l > L ? L : l);
  }
  // Chunk j of sequence b: frames [t0, t_end); valid ones [t0, t1) (t1 <= t0 when none).
  __device__ void range(int64_t j, int64_t b, int64_t& t0, int64_t& t1, int64_t& t_end) const {
    t0 = j * Lc;
    t_end = t0 + Lc < L ? t0 + Lc : L;
    const int64_t v = valid(b);
    t1 = t_end < v ? t_end : v;
  }
};

unsigned grid_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

template <class T>
__device__ T ipow(T q, int64_t n) {
  T r = 1;
  while (n > 0) {
    if (n & 1) r *= q;
    q *= q;
    n >>= 1;
  }
  return r;
}

// The parameters of heads [h0, h0 + hn) of channel c.
template <class T>
struct Heads {
  T a[kGroup], q[kGroup], w[kGroup];
  __device__ Heads(const T* gain, const T* decay, const T* weight, int64_t c, int64_t H, int64_t h0, int hn) {
#pragma unroll
    for (int i = 0; i < kGroup; ++i) {
      const int64_t p = c * H + h0 + (i < hn ? i : 0);
      a[i] = gain[p];
      q[i] = decay[p];
      w[i] = weight[p];
    }
  }
};

// ---- forward

// Per (sequence, channel, head): replaces each chunk's summary by its incoming state.
template <class T>
__global__ void fwd_combine(Geometry g, const T* decay, const T* state, T* summary, T* state_out) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= g.BC * g.H) return;
  const int64_t bc = idx / g.H, h = idx % g.H, b = bc / g.C, c = bc % g.C;
  const T q = decay[c * g.H + h];
  T e = state ? state[idx] : T(0);
  for (int64_t j = 0; j < g.chunks; ++j) {
    int64_t t0, t1, te;
    g.range(j, b, t0, t1, te);
    const int64_t n = t1 > t0 ? t1 - t0 : 0;
    T* sj = summary + (j * g.BC + bc) * g.H + h;
    const T own = *sj;
    *sj = e;
    e = ipow(q, n) * e + own;
  }
  if (state_out) state_out[idx] = e;
}

// One chunk's scan from its incoming state ([chunks, BC, H], or the state [BC, H] with one
// chunk, or null: zeros). kOut writes y and, where `state` is given, the state after the
// chunk to state[bc, h]; without kOut (step 1, from zeros) that state goes to state[idx, h],
// the chunk's summary, and y is not written.
template <class T, bool kOut>
__global__ void fwd_scan(Geometry g, const T* x, const T* gain, const T* decay, const T* weight, const T* incoming,
                         T* y, T* state) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= g.chunks * g.BC) return;
  const int64_t j = idx / g.BC, bc = idx % g.BC, b = bc / g.C, c = bc % g.C;
  int64_t t0, t1, te;
  g.range(j, b, t0, t1, te);
  for (int64_t h0 = 0; h0 < g.H; h0 += kGroup) {
    const int hn = int(g.H - h0 < kGroup ? g.H - h0 : kGroup);
    const Heads<T> p(gain, decay, weight, c, g.H, h0, hn);
    T s[kGroup];
#pragma unroll
    for (int i = 0; i < kGroup; ++i) s[i] = incoming && i < hn ? incoming[idx * g.H + h0 + i] : T(0);
    for (int64_t t = t0; t < t1; t += kUnroll) {
      T xv[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) xv[u] = t + u < t1 ? x[b * g.sb + (t + u) * g.st + c] : T(0);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (t + u < t1) {
          T acc = 0;
#pragma unroll
          for (int i = 0; i < kGroup; ++i) {
            s[i] = p.q[i] * s[i] + p.a[i] * xv[u];
            if constexpr (kOut) acc += i < hn ? p.w[i] * s[i] : T(0);
          }
          if constexpr (kOut) {
            T* out = y + b * g.sb + (t + u) * g.st + c;
            *out = h0 == 0 ? acc : *out + acc;
          }
        }
    }
    if (state) {
      T* dst = state + (kOut ? bc : idx) * g.H + h0;
#pragma unroll
      for (int i = 0; i < kGroup; ++i)
        if (i < hn) dst[i] = s[i];
    }
  }
  if constexpr (kOut)
    for (int64_t t = t1 > t0 ? t1 : t0; t < te; ++t) y[b * g.sb + t * g.st + c] = T(0);
}

// ---- backward, in reverse time over (r, lambda, P) of src/cpu/ema.cpp:
//   P_t = lambda_{t+1} + q P_{t+1}, r_t = g_t + q r_{t+1},
//   lambda_t = weight g_t + q lambda_{t+1} (+ G, the final state's gradient, at the last valid frame).
// Across a chunk of n valid frames with no gradient in it: r' = q^n r, lambda' = q^n lambda,
// P' = n q^(n-1) lambda + q^n P.

template <class T>
__device__ __forceinline__ T load_or_zero(const T* p, int64_t i) {
  return p ? p[i] : T(0);
}

// Per (sequence, channel, head), from the last chunk to the first: replaces each chunk's
// values by those coming in from its right, and leaves those at frame 0 in rlp0 [3, BC, H].
template <class T>
__global__ void bwd_combine(Geometry g, const T* decay, T* rlp, T* rlp0) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t bch = g.BC * g.H;
  if (idx >= bch) return;
  const int64_t bc = idx / g.H, h = idx % g.H, b = bc / g.C, c = bc % g.C;
  const int64_t stride = g.chunks * bch;
  const T q = decay[c * g.H + h];
  T r = 0, lam = 0, P = 0;
  for (int64_t j = g.chunks - 1; j >= 0; --j) {
    int64_t t0, t1, te;
    g.range(j, b, t0, t1, te);
    const int64_t n = t1 > t0 ? t1 - t0 : 0;
    const int64_t k = (j * g.BC + bc) * g.H + h;
    const T own_r = rlp[k], own_lam = rlp[stride + k], own_p = rlp[2 * stride + k];
    rlp[k] = r;
    rlp[stride + k] = lam;
    rlp[2 * stride + k] = P;
    const T qn = ipow(q, n), dqn = n > 0 ? T(n) * ipow(q, n - 1) : T(0);
    P = own_p + dqn * lam + qn * P;
    r = own_r + qn * r;
    lam = own_lam + qn * lam;
  }
  rlp0[idx] = r;
  rlp0[bch + idx] = lam;
  rlp0[2 * bch + idx] = P;
}

// One chunk's reverse sweep from the values coming in from its right (`in`, [3, chunks, BC, H],
// or null: zeros). kFull (step 3) writes gx and the chunk's sums of x r, x lambda and x P to
// out [3, chunks, BC, H], and with no `in` (one chunk) the values at frame 0 to rlp0; without
// kFull (step 1, from zeros) out gets the chunk's (r, lambda, P) at its first frame.
template <class T, bool kFull>
__global__ void bwd_scan(Geometry g, const T* x, const T* gy, const T* gfinal, const T* gain, const T* decay,
                         const T* weight, const T* in, T* gx, T* out, T* rlp0) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= g.chunks * g.BC) return;
  const int64_t j = idx / g.BC, bc = idx % g.BC, b = bc / g.C, c = bc % g.C;
  const int64_t stride = g.chunks * g.BC * g.H;
  int64_t t0, t1, te;
  g.range(j, b, t0, t1, te);
  const int64_t last = g.valid(b) - 1;
  for (int64_t h0 = 0; h0 < g.H; h0 += kGroup) {
    const int hn = int(g.H - h0 < kGroup ? g.H - h0 : kGroup);
    const Heads<T> p(gain, decay, weight, c, g.H, h0, hn);
    T r[kGroup], lam[kGroup], P[kGroup], sr[kGroup], sl[kGroup], sp[kGroup], G[kGroup], a[kGroup];
#pragma unroll
    for (int i = 0; i < kGroup; ++i) {
      const int64_t k = idx * g.H + h0 + i;
      const bool ok = in && i < hn;
      r[i] = ok ? in[k] : T(0);
      lam[i] = ok ? in[stride + k] : T(0);
      P[i] = ok ? in[2 * stride + k] : T(0);
      sr[i] = sl[i] = sp[i] = 0;
      G[i] = gfinal && i < hn ? gfinal[bc * g.H + h0 + i] : T(0);
      a[i] = i < hn ? p.a[i] : T(0);  // dx_t = sum_h gain lambda_t
    }
    for (int64_t t = t1 - 1; t >= t0; t -= kUnroll) {
      T xv[kUnroll], gv[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const bool ok = t - u >= t0;
        if constexpr (kFull) xv[u] = ok ? x[b * g.sb + (t - u) * g.st + c] : T(0);
        gv[u] = ok ? load_or_zero(gy, b * g.sb + (t - u) * g.st + c) : T(0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (t - u >= t0) {
          const bool at_last = t - u == last;
          T acc = 0;
#pragma unroll
          for (int i = 0; i < kGroup; ++i) {
            P[i] = lam[i] + p.q[i] * P[i];
            r[i] = gv[u] + p.q[i] * r[i];
            lam[i] = p.w[i] * gv[u] + p.q[i] * lam[i] + (at_last ? G[i] : T(0));
            if constexpr (kFull) {
              sr[i] += xv[u] * r[i];
              sl[i] += xv[u] * lam[i];
              sp[i] += xv[u] * P[i];
              acc += a[i] * lam[i];
            }
          }
          if constexpr (kFull) {
            T* o = gx + b * g.sb + (t - u) * g.st + c;
            *o = h0 == 0 ? acc : *o + acc;
          }
        }
    }
#pragma unroll
    for (int i = 0; i < kGroup; ++i) {
      if (i >= hn) continue;
      const int64_t k = idx * g.H + h0 + i;
      out[k] = kFull ? sr[i] : r[i];
      out[stride + k] = kFull ? sl[i] : lam[i];
      out[2 * stride + k] = kFull ? sp[i] : P[i];
      if (kFull && !in) {
        const int64_t bch = g.BC * g.H, k0 = bc * g.H + h0 + i;
        rlp0[k0] = r[i];
        rlp0[bch + k0] = lam[i];
        rlp0[2 * bch + k0] = P[i];
      }
    }
  }
  if constexpr (kFull)
    for (int64_t t = t1 > t0 ? t1 : t0; t < te; ++t) gx[b * g.sb + t * g.st + c] = T(0);
}

// Per (sequence, channel, head): the parameter and state gradients (see src/cpu/ema.cpp).
template <class T>
__global__ void bwd_finish(Geometry g, const T* gain, const T* decay, const T* state, const T* gfinal, const T* sums,
                           const T* rlp0, T* ggain, T* gdecay, T* gweight, T* gstate) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t bch = g.BC * g.H;
  if (idx >= bch) return;
  const int64_t bc = idx / g.H, h = idx % g.H, b = bc / g.C, c = bc % g.C, p = c * g.H + h;
  const int64_t stride = g.chunks * bch;
  T xr = 0, xl = 0, xp = 0;
  for (int64_t j = 0; j < g.chunks; ++j) {
    xr += sums[j * bch + idx];
    xl += sums[stride + j * bch + idx];
    xp += sums[2 * stride + j * bch + idx];
  }
  const T a = gain[p], q = decay[p], s = state ? state[idx] : T(0);
  const T r0 = rlp0[idx], l0 = rlp0[bch + idx], p0 = rlp0[2 * bch + idx];
  ggain[idx] = xl;
  gweight[idx] = a * xr + s * q * r0;
  gdecay[idx] = a * xp + s * (l0 + q * p0);
  if (gstate) gstate[idx] = g.valid(b) > 0 ? q * l0 : load_or_zero(gfinal, idx);
}

// Chunks as the WKV scan's (scan_chunk_frames; DIMX_EMA_CHUNK overrides, for tests).
Geometry geometry(const EmaLaunch& a) {
  Geometry g{a.B, a.L, a.C, a.H, a.B * a.C, a.L, 1, a.sb, a.st, a.lengths};
  const int64_t Lc = scan_chunk_frames(g.BC, a.L, "DIMX_EMA_CHUNK");
  g.Lc = Lc < 1 ? 1 : Lc;
  g.chunks = a.L > g.Lc ? (a.L + g.Lc - 1) / g.Lc : 1;
  return g;
}


template <class T>
void forward(const EmaLaunch& a, T* y, T* state_out, cudaStream_t s) {
  const Geometry g = geometry(a);
  if (g.BC == 0 || a.L == 0) {
    if (state_out && g.BC * g.H > 0) {
      if (a.state) cudaMemcpyAsync(state_out, a.state, size_t(g.BC * g.H) * sizeof(T), cudaMemcpyDeviceToDevice, s);
      else cudaMemsetAsync(state_out, 0, size_t(g.BC * g.H) * sizeof(T), s);
    }
    return;
  }
  auto x = static_cast<const T*>(a.x);
  auto gain = static_cast<const T*>(a.gain), decay = static_cast<const T*>(a.decay), weight = static_cast<const T*>(a.weight);
  auto state = static_cast<const T*>(a.state);
  const int64_t n = g.chunks * g.BC;
  if (g.chunks == 1) {
    fwd_scan<T, true><<<grid_for(n), kThreads, 0, s>>>(g, x, gain, decay, weight, state, y, state_out);
  } else {
    Scratch<T> incoming(n * g.H, s, "ema");
    fwd_scan<T, false><<<grid_for(n), kThreads, 0, s>>>(g, x, gain, decay, weight, nullptr, nullptr, incoming.p);
    fwd_combine<T><<<grid_for(g.BC * g.H), kThreads, 0, s>>>(g, decay, state, incoming.p, state_out);
    fwd_scan<T, true><<<grid_for(n), kThreads, 0, s>>>(g, x, gain, decay, weight, incoming.p, y, nullptr);
  }
  check_launch("ema forward");
}

template <class T>
void backward(const EmaLaunch& a, const T* gy, const T* gfinal, T* gx, T* ggain, T* gdecay, T* gweight, T* gstate,
              cudaStream_t s) {
  const Geometry g = geometry(a);
  const int64_t bch = g.BC * g.H;
  if (bch == 0) return;
  auto x = static_cast<const T*>(a.x);
  auto gain = static_cast<const T*>(a.gain), decay = static_cast<const T*>(a.decay), weight = static_cast<const T*>(a.weight);
  auto state = static_cast<const T*>(a.state);
  const int64_t n = g.chunks * g.BC;
  Scratch<T> sums(3 * n * g.H + 3 * bch, s, "ema");
  T* rlp0 = sums.p + 3 * n * g.H;
  if (a.L == 0) {  // no frames: only the final state's gradient flows, to the incoming state
    cudaMemsetAsync(rlp0, 0, size_t(3 * bch) * sizeof(T), s);
  } else if (g.chunks == 1) {
    bwd_scan<T, true><<<grid_for(n), kThreads, 0, s>>>(g, x, gy, gfinal, gain, decay, weight, nullptr, gx, sums.p, rlp0);
  } else {
    Scratch<T> incoming(3 * n * g.H, s, "ema");
    bwd_scan<T, false><<<grid_for(n), kThreads, 0, s>>>(g, x, gy, gfinal, gain, decay, weight, nullptr, nullptr,
                                                         incoming.p, nullptr);
    bwd_combine<T><<<grid_for(bch), kThreads, 0, s>>>(g, decay, incoming.p, rlp0);
    bwd_scan<T, true><<<grid_for(n), kThreads, 0, s>>>(g, x, gy, gfinal, gain, decay, weight, incoming.p, gx, sums.p,
                                                        nullptr);
  }
  Geometry gf = g;
  if (a.L == 0) gf.chunks = 0;  // no partial sums
  bwd_finish<T><<<grid_for(bch), kThreads, 0, s>>>(gf, gain, decay, state, gfinal, sums.p, rlp0, ggain, gdecay, gweight,
                                                   gstate);
  check_launch("ema backward");
}

}  // namespace

void launch_ema_forward(DType dt, const EmaLaunch& a, void* y, void* state_out, cudaStream_t s) {
  if (dt == DType::f32) return forward<float>(a, static_cast<float*>(y), static_cast<float*>(state_out), s);
  if (dt == DType::f64) return forward<double>(a, static_cast<double*>(y), static_cast<double*>(state_out), s);
  throw Error(std::string("ema: dtype ") + dtype_name(dt) + " not supported on cuda (f32, f64)");
}

void launch_ema_backward(DType dt, const EmaLaunch& a, const void* gy, const void* gfinal, void* gx, void* ggain,
                         void* gdecay, void* gweight, void* gstate, cudaStream_t s) {
  auto go = [&](auto tag) {
    using T = decltype(tag);
    backward<T>(a, static_cast<const T*>(gy), static_cast<const T*>(gfinal), static_cast<T*>(gx), static_cast<T*>(ggain), static_cast<T*>(gdecay),
                static_cast<T*>(gweight), static_cast<T*>(gstate), s);
  };
  if (dt == DType::f32) return go(float{});
  if (dt == DType::f64) return go(double{});
  throw Error(std::string("ema: dtype ") + dtype_name(dt) + " not supported on cuda (f32, f64)");
}

}  // namespace dimx::gpu

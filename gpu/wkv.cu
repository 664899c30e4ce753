// The WKV scan on CUDA, chunked over time so that few channels and long sequences still fill
// the GPU. Time is cut into chunks of L frames; a thread owns one (chunk, sequence, channel):
//   1. summary: each chunk's own state contribution, scanned from the empty state;
//   2. combine: per channel, a sequential pass over the chunk summaries (the combine is
//      associative: state after a chunk = e^{L w} * state before + the chunk's own part, in
//      log space with a running max) gives every chunk its incoming state;
//   3. main: each chunk rescans its frames from its incoming state and writes the outputs.
// With enough channels to fill the GPU there is one chunk and only step 3 runs (one pass
// over the data). The backward runs the same three steps in reverse time over the
// accumulators of the future's gradient. Per-thread buffers have a fixed size (kUnroll
// frames of prefetch), never one sized by T. Float32 math throughout.

#include "common.cuh"

namespace dimx::gpu {

namespace {

constexpr float kMinLog = -1e38f;  // the empty state's max (log of 0, kept finite)
constexpr int kThreads = 128;
constexpr int kUnroll = 8;  // frames loaded ahead of the dependent recurrence

struct Geometry {
  int64_t B, T, C, BC, L, chunks;
  const int64_t* len;
  __device__ int64_t valid(int64_t b) const {
    if (!len) return T;
    int64_t l = len[b];
    return l < 0 ? 0 : (l > T ? T : l);
  }
  // Valid frames [t0, t1) of chunk j of sequence b (t1 < t0 when none).
  __device__ void range(int64_t j, int64_t b, int64_t& t0, int64_t& t1) const {
    t0 = j * L;
    int64_t e = t0 + L, v = valid(b);
    t1 = e < v ? e : v;
  }
};

unsigned grid_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

// max(a, b) and the weights e^{a-max}, e^{b-max}: one exp.
struct LogWeights {
  float wa, wb, max;
};
__device__ __forceinline__ LogWeights log_weights(float a, float b) {
  const float d = a - b;
  const float e = expf(-fabsf(d));
  const bool a_wins = d >= 0.f;
  return {a_wins ? 1.f : e, a_wins ? e : 1.f, a_wins ? a : b};
}

// ---------------------------------------------------------------- forward

// Frames [t0, t1) of one (sequence, channel) starting at k + base, from the state (aa, bb, pp);
// with kOut also writes y (and log D with kLogDen). Loads run kUnroll frames ahead of the
// dependent recurrence.
template <bool kOut, bool kLogDen>
__device__ __forceinline__ void scan_frames(const Geometry& g, int64_t base, int64_t t0, int64_t t1, float ww,
                                            float uu, const float* __restrict__ k, const float* __restrict__ v,
                                            float* __restrict__ y, float* __restrict__ log_den, float& aa, float& bb,
                                            float& pp) {
  const float* kp = k + base;
  const float* vp = v + base;
  for (int64_t t = t0; t < t1; t += kUnroll) {
    float kk[kUnroll], vv[kUnroll];
#pragma unroll
    for (int i = 0; i < kUnroll; ++i)
      if (t + i < t1) {
        kk[i] = __ldg(kp + (t + i) * g.C);
        vv[i] = __ldg(vp + (t + i) * g.C);
      }
#pragma unroll
    for (int i = 0; i < kUnroll; ++i)
      if (t + i < t1) {
        if (kOut) {
          const int64_t at = base + (t + i) * g.C;
          const LogWeights o = log_weights(pp, uu + kk[i]);
          const float den = o.wa * bb + o.wb;
          y[at] = (o.wa * aa + o.wb * vv[i]) / den;
          if (kLogDen) log_den[at] = o.max + logf(den);
        }
        const LogWeights s = log_weights(ww + pp, kk[i]);
        aa = s.wa * aa + s.wb * vv[i];
        bb = s.wa * bb + s.wb;
        pp = s.max;
      }
  }
}

__global__ void fwd_summary(Geometry g, const float* __restrict__ td, const float* __restrict__ k,
                            const float* __restrict__ v, float* __restrict__ sa, float* __restrict__ sb,
                            float* __restrict__ sp) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= g.chunks * g.BC) return;
  const int64_t j = idx / g.BC, bc = idx - j * g.BC, b = bc / g.C, c = bc - b * g.C;
  int64_t t0, t1;
  g.range(j, b, t0, t1);
  float aa = 0.f, bb = 0.f, pp = kMinLog;
  scan_frames<false, false>(g, b * g.T * g.C + c, t0, t1, -expf(td[c]), 0.f, k, v, nullptr, nullptr, aa, bb, pp);
  sa[idx] = aa;
  sb[idx] = bb;
  sp[idx] = pp;
}

// In place: chunk summaries in, incoming states out.
__global__ void fwd_combine(Geometry g, const float* __restrict__ td, const float* s0, const float* s1,
                            const float* s2, float* sa, float* sb, float* sp) {
  const int64_t bc = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (bc >= g.BC) return;
  const int64_t b = bc / g.C;
  const float ww = -expf(td[bc - b * g.C]);
  const int64_t vlen = g.valid(b);
  float aa = s0 ? s0[bc] : 0.f, bb = s1 ? s1[bc] : 0.f, pp = s2 ? fmaxf(s2[bc], kMinLog) : kMinLog;
  for (int64_t j0 = 0; j0 < g.chunks; j0 += kUnroll) {
    float la[kUnroll], lb[kUnroll], lp[kUnroll];
#pragma unroll
    for (int i = 0; i < kUnroll; ++i)
      if (j0 + i < g.chunks) {
        const int64_t at = (j0 + i) * g.BC + bc;
        la[i] = sa[at];
        lb[i] = sb[at];
        lp[i] = sp[at];
      }
#pragma unroll
    for (int i = 0; i < kUnroll; ++i)
      if (j0 + i < g.chunks) {
        const int64_t at = (j0 + i) * g.BC + bc;
        sa[at] = aa;
        sb[at] = bb;
        sp[at] = pp;
        int64_t n = vlen - (j0 + i) * g.L;
        n = n < 0 ? 0 : (n > g.L ? g.L : n);
        const float decayed = n > 0 ? fmaxf(pp + float(n) * ww, kMinLog) : pp;
        const LogWeights s = log_weights(decayed, lp[i]);
        aa = s.wa * aa + s.wb * la[i];
        bb = s.wa * bb + s.wb * lb[i];
        pp = s.max;
      }
  }
}

// Rescan of each chunk from its incoming state (ia/ib/ip at [chunk][BC], or null: empty).
template <bool kLogDen>
__global__ void fwd_main(Geometry g, const float* __restrict__ td, const float* __restrict__ u,
                         const float* __restrict__ k, const float* __restrict__ v, const float* ia, const float* ib,
                         const float* ip, float* __restrict__ y, float* __restrict__ log_den, float* so0, float* so1,
                         float* so2) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= g.chunks * g.BC) return;
  const int64_t j = idx / g.BC, bc = idx - j * g.BC, b = bc / g.C, c = bc - b * g.C;
  int64_t t0, t1;
  g.range(j, b, t0, t1);
  const float ww = -expf(td[c]), uu = u[c];
  float aa = ia ? ia[idx] : 0.f, bb = ib ? ib[idx] : 0.f, pp = ip ? fmaxf(ip[idx], kMinLog) : kMinLog;
  const int64_t base = b * g.T * g.C + c;
  scan_frames<true, kLogDen>(g, base, t0, t1, ww, uu, k, v, y, log_den, aa, bb, pp);
  // Frames past the sequence's length output 0.
  const int64_t end = (t0 + g.L < g.T ? t0 + g.L : g.T);
  for (int64_t t = (t1 > t0 ? t1 : t0); t < end; ++t) {
    y[base + t * g.C] = 0.f;
    if (kLogDen) log_den[base + t * g.C] = 0.f;
  }
  if (so0 && j == g.chunks - 1) {
    so0[bc] = aa;
    so1[bc] = bb;
    so2[bc] = pp;
  }
}

// ---------------------------------------------------------------- backward
// Reverse-time accumulators of the future's gradient, scaled by e^{qq}:
//   G_t = sum_{s>t} e^{(s-1-t)w} gy_s/D_s, H_t = the same with gy_s y_s, and G'_t, H'_t the
//   same sums weighted by (s-1-t). Stepping back over frame t:
//   G' <- e^w (G' + G), G <- e^w G + gy_t/D_t (likewise H', H).

struct Rev {
  float gg, hh, g2, h2, qq;
};

__device__ __forceinline__ void rev_step(Rev& r, float ww, float gy, float yy, float ld) {
  const LogWeights s = log_weights(ww + r.qq, -ld);
  r.g2 = s.wa * (r.g2 + r.gg);
  r.h2 = s.wa * (r.h2 + r.hh);
  r.gg = s.wa * r.gg + s.wb * gy;
  r.hh = s.wa * r.hh + s.wb * gy * yy;
  r.qq = s.max;
}

__global__ void bwd_summary(Geometry g, const float* __restrict__ td, const float* __restrict__ y,
                            const float* __restrict__ log_den, const float* __restrict__ gy, float* __restrict__ ws) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t n = g.chunks * g.BC;
  if (idx >= n) return;
  const int64_t j = idx / g.BC, bc = idx - j * g.BC, b = bc / g.C, c = bc - b * g.C;
  int64_t t0, t1;
  g.range(j, b, t0, t1);
  const float ww = -expf(td[c]);
  Rev r{0.f, 0.f, 0.f, 0.f, kMinLog};
  const int64_t base = b * g.T * g.C + c;
  for (int64_t t = t1 - 1; t >= t0; t -= kUnroll) {
    float yy[kUnroll], gg[kUnroll], ld[kUnroll];
#pragma unroll
    for (int i = 0; i < kUnroll; ++i)
      if (t - i >= t0) {
        const int64_t at = base + (t - i) * g.C;
        yy[i] = __ldg(y + at);
        gg[i] = __ldg(gy + at);
        ld[i] = __ldg(log_den + at);
      }
#pragma unroll
    for (int i = 0; i < kUnroll; ++i)
      if (t - i >= t0) rev_step(r, ww, gg[i], yy[i], ld[i]);
  }
  ws[idx] = r.gg;
  ws[n + idx] = r.hh;
  ws[2 * n + idx] = r.g2;
  ws[3 * n + idx] = r.h2;
  ws[4 * n + idx] = r.qq;
}

// In place, last chunk first: chunk summaries in, incoming (future) accumulators out.
__global__ void bwd_combine(Geometry g, const float* __restrict__ td, float* ws) {
  const int64_t bc = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (bc >= g.BC) return;
  const int64_t n = g.chunks * g.BC;
  const int64_t b = bc / g.C;
  const float ww = -expf(td[bc - b * g.C]);
  const int64_t vlen = g.valid(b);
  Rev r{0.f, 0.f, 0.f, 0.f, kMinLog};
  for (int64_t j0 = g.chunks - 1; j0 >= 0; j0 -= kUnroll) {
    Rev l[kUnroll];
#pragma unroll
    for (int i = 0; i < kUnroll; ++i)
      if (j0 - i >= 0) {
        const int64_t at = (j0 - i) * g.BC + bc;
        l[i] = {ws[at], ws[n + at], ws[2 * n + at], ws[3 * n + at], ws[4 * n + at]};
      }
#pragma unroll
    for (int i = 0; i < kUnroll; ++i)
      if (j0 - i >= 0) {
        const int64_t at = (j0 - i) * g.BC + bc;
        ws[at] = r.gg;
        ws[n + at] = r.hh;
        ws[2 * n + at] = r.g2;
        ws[3 * n + at] = r.h2;
        ws[4 * n + at] = r.qq;
        int64_t m = vlen - (j0 - i) * g.L;
        m = m < 0 ? 0 : (m > g.L ? g.L : m);
        float q = r.qq;
        if (m > 0) {  // decay over the chunk's m frames: G' <- e^{mw}(G' + m G), G <- e^{mw} G
          r.g2 += float(m) * r.gg;
          r.h2 += float(m) * r.hh;
          q = fmaxf(r.qq + float(m) * ww, kMinLog);
        }
        const LogWeights s = log_weights(q, l[i].qq);
        r.gg = s.wa * r.gg + s.wb * l[i].gg;
        r.hh = s.wa * r.hh + s.wb * l[i].hh;
        r.g2 = s.wa * r.g2 + s.wb * l[i].g2;
        r.h2 = s.wa * r.h2 + s.wb * l[i].h2;
        r.qq = s.max;
      }
  }
}

// Reverse rescan of each chunk from its incoming accumulators (ws, or null: none).
// Writes gk, gv and per-chunk partial sums of d time_decay and du (pw, pu at [chunk][BC]).
__global__ void bwd_main(Geometry g, const float* __restrict__ td, const float* __restrict__ u,
                         const float* __restrict__ k, const float* __restrict__ v, const float* __restrict__ y,
                         const float* __restrict__ log_den, const float* __restrict__ gy, const float* ws,
                         const float* s0, const float* s1, const float* s2, float* __restrict__ gk,
                         float* __restrict__ gv, float* __restrict__ pw, float* __restrict__ pu) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t n = g.chunks * g.BC;
  if (idx >= n) return;
  const int64_t j = idx / g.BC, bc = idx - j * g.BC, b = bc / g.C, c = bc - b * g.C;
  int64_t t0, t1;
  g.range(j, b, t0, t1);
  const float ww = -expf(td[c]), uu = u[c];
  Rev r{0.f, 0.f, 0.f, 0.f, kMinLog};
  if (ws) r = {ws[idx], ws[n + idx], ws[2 * n + idx], ws[3 * n + idx], ws[4 * n + idx]};
  float dw = 0.f, du = 0.f;
  const int64_t base = b * g.T * g.C + c;
  for (int64_t t = t1 - 1; t >= t0; t -= kUnroll) {
    float kk[kUnroll], vv[kUnroll], yy[kUnroll], gg[kUnroll], ld[kUnroll];
#pragma unroll
    for (int i = 0; i < kUnroll; ++i)
      if (t - i >= t0) {
        const int64_t at = base + (t - i) * g.C;
        kk[i] = __ldg(k + at);
        vv[i] = __ldg(v + at);
        yy[i] = __ldg(y + at);
        gg[i] = __ldg(gy + at);
        ld[i] = __ldg(log_den + at);
      }
#pragma unroll
    for (int i = 0; i < kUnroll; ++i)
      if (t - i >= t0) {
        const int64_t at = base + (t - i) * g.C;
        const float eu = expf(uu + kk[i] - ld[i]);  // e^{u+k}/D <= 1
        const float ek = expf(r.qq + kk[i]);        // e^{k} at the accumulators' scale
        const float direct = gg[i] * eu;
        gv[at] = direct + ek * r.gg;
        gk[at] = direct * (vv[i] - yy[i]) + ek * (vv[i] * r.gg - r.hh);
        du += direct * (vv[i] - yy[i]);
        dw += ek * (vv[i] * r.g2 - r.h2);
        rev_step(r, ww, gg[i], yy[i], ld[i]);
      }
  }
  const int64_t end = (t0 + g.L < g.T ? t0 + g.L : g.T);
  for (int64_t t = (t1 > t0 ? t1 : t0); t < end; ++t) {
    gk[base + t * g.C] = 0.f;
    gv[base + t * g.C] = 0.f;
  }
  // The incoming state's share of dw: num_0 G'_{-1} - den_0 H'_{-1}.
  if (j == 0 && s0) {
    const float x = s0[bc] * r.g2 - s1[bc] * r.h2;
    if (x != 0.f) dw += expf(fmaxf(s2[bc], kMinLog) + r.qq) * x;
  }
  pw[idx] = dw * ww;  // d/d time_decay, through w = -exp(time_decay)
  pu[idx] = du;
}

__global__ void bwd_reduce(Geometry g, const float* __restrict__ pw, const float* __restrict__ pu,
                           float* __restrict__ gtd, float* __restrict__ gu) {
  const int64_t bc = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (bc >= g.BC) return;
  float a = 0.f, b = 0.f;
  for (int64_t j = 0; j < g.chunks; ++j) {
    a += pw[j * g.BC + bc];
    b += pu[j * g.BC + bc];
  }
  gtd[bc] = a;
  gu[bc] = b;
}

// Chunks as scan_chunk_frames says (DIMX_WKV_CHUNK overrides, for benchmarks and tests).
Geometry geometry(const WkvLaunch& a) {
  Geometry g{a.B, a.T, a.C, a.B * a.C, a.T, 1, a.lengths};
  const int64_t L = scan_chunk_frames(g.BC, a.T, "DIMX_WKV_CHUNK");
  g.L = L < 1 ? 1 : L;
  g.chunks = a.T > g.L ? (a.T + g.L - 1) / g.L : 1;
  return g;
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw Error(std::string("wkv: ") + what + " failed: " + cudaGetErrorString(e));
  }
}

}  // namespace

void launch_wkv_forward(const WkvLaunch& a, float* y, float* log_den, float* const state_out[3], cudaStream_t s) {
  const Geometry g = geometry(a);
  if (g.BC == 0) return;
  const float* ia = a.state[0];
  const float* ib = a.state[1];
  const float* ip = a.state[2];
  float* ws = nullptr;
  if (g.chunks > 1) {
    const int64_t n = g.chunks * g.BC;
    check(cudaMallocAsync(reinterpret_cast<void**>(&ws), size_t(3 * n) * sizeof(float), s), "cudaMallocAsync");
    fwd_summary<<<grid_for(n), kThreads, 0, s>>>(g, a.time_decay, a.k, a.v, ws, ws + n, ws + 2 * n);
    fwd_combine<<<grid_for(g.BC), kThreads, 0, s>>>(g, a.time_decay, ia, ib, ip, ws, ws + n, ws + 2 * n);
    ia = ws;
    ib = ws + n;
    ip = ws + 2 * n;
  }
  float* so0 = state_out ? state_out[0] : nullptr;
  float* so1 = state_out ? state_out[1] : nullptr;
  float* so2 = state_out ? state_out[2] : nullptr;
  if (log_den)
    fwd_main<true><<<grid_for(g.chunks * g.BC), kThreads, 0, s>>>(g, a.time_decay, a.u, a.k, a.v, ia, ib, ip, y, log_den, so0,
                                                                  so1, so2);
  else
    fwd_main<false><<<grid_for(g.chunks * g.BC), kThreads, 0, s>>>(g, a.time_decay, a.u, a.k, a.v, ia, ib, ip, y, nullptr, so0,
                                                                   so1, so2);
  check_launch("wkv forward");
  if (ws) check(cudaFreeAsync(ws, s), "cudaFreeAsync");
}

void launch_wkv_backward(const WkvLaunch& a, const float* y, const float* log_den, const float* gy, float* gk,
                         float* gv, float* gtd, float* gu, cudaStream_t s) {
  const Geometry g = geometry(a);
  if (g.BC == 0) return;
  const int64_t n = g.chunks * g.BC;
  float* ws = nullptr;
  float* pw = gtd;
  float* pu = gu;
  if (g.chunks > 1) {
    check(cudaMallocAsync(reinterpret_cast<void**>(&ws), size_t(7 * n) * sizeof(float), s), "cudaMallocAsync");
    bwd_summary<<<grid_for(n), kThreads, 0, s>>>(g, a.time_decay, y, log_den, gy, ws);
    bwd_combine<<<grid_for(g.BC), kThreads, 0, s>>>(g, a.time_decay, ws);
    pw = ws + 5 * n;
    pu = ws + 6 * n;
  }
  bwd_main<<<grid_for(n), kThreads, 0, s>>>(g, a.time_decay, a.u, a.k, a.v, y, log_den, gy, ws, a.state[0], a.state[1],
                                            a.state[2], gk, gv, pw, pu);
  if (ws) bwd_reduce<<<grid_for(g.BC), kThreads, 0, s>>>(g, pw, pu, gtd, gu);
  check_launch("wkv backward");
  if (ws) check(cudaFreeAsync(ws, s), "cudaFreeAsync");
}

}  // namespace dimx::gpu

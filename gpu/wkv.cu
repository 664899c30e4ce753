// The WKV scan on the GPU as a chunked scan over time. Every channel's recurrence is linear in
// its state, so time is cut into chunks that run in parallel: (1) each chunk's own effect from
// an empty state, (2) a short sequential pass over the chunks carries the state from chunk to
// chunk, (3) each chunk reruns from its true incoming state and writes its outputs. The
// backward pass does the same in reverse time. Math in the input's precision (f32 or f64), no
// per-thread arrays: any sequence length, any B * C. With enough channels (B * C large) one
// chunk per channel is used and steps (1) and (2) are skipped.
#include "common.cuh"

#include <algorithm>

namespace dimx::gpu {

namespace {

constexpr int kThreads = 128;
constexpr double kEmptyMax = -1e38;
constexpr int64_t kMinChunk = 16;
// Threads that keep an H100 busy (132 SMs x 2048): chunks are added until B * C * chunks reaches it.
constexpr int64_t kTargetThreads = int64_t(132) * 2048;

struct Plan {
  int64_t chunks, len;  // number of chunks, frames per chunk
};

Plan plan(const WkvArgs& a) {
  const int64_t bc = std::max<int64_t>(1, a.B * a.C);
  int64_t n = std::clamp<int64_t>((kTargetThreads + bc - 1) / bc, 1, std::max<int64_t>(1, a.T / kMinChunk));
  const int64_t len = (a.T + n - 1) / n;
  return {len > 0 ? (a.T + len - 1) / len : 1, std::max<int64_t>(len, 1)};
}

// The frames [t0, t1) of chunk j that are valid for a sequence of length len.
struct Span {
  int64_t t0, t1;
  __device__ int64_t n() const { return t1 > t0 ? t1 - t0 : 0; }
};
__device__ Span span(int64_t j, int64_t L, int64_t len) {
  const int64_t t0 = j * L;
  return {t0, t0 + L < len ? t0 + L : len};
}

__device__ inline float xexp(float x) { return __expf(x); }
__device__ inline double xexp(double x) { return exp(x); }
__device__ inline float xlog(float x) { return __logf(x); }
__device__ inline double xlog(double x) { return log(x); }

// Of e^{a-p} and e^{b-p} with p = max(a, b) one is 1: a single exp.
template <class T>
__device__ inline void rescale(T a, T b, T& ea, T& eb, T& p) {
  const T d = xexp(-fabs(a - b));
  if (a >= b) {
    ea = T(1), eb = d, p = a;
  } else {
    ea = d, eb = T(1), p = b;
  }
}

// Log-scaled forward state: num, den scaled by e^{-max}.
template <class T>
struct State {
  T aa, bb, pp;
  // This state decayed by n steps, then the state `o` added.
  __device__ State then(int64_t n, T w, const State& o) const {
    State r;
    T ea, eb;
    rescale(pp + T(n) * w, o.pp, ea, eb, r.pp);
    r.aa = ea * aa + eb * o.aa;
    r.bb = ea * bb + eb * o.bb;
    return r;
  }
};

struct Index {
  int64_t b, j, c;
  bool ok;
};
// One thread per (b, chunk, channel); blocks of kThreads channels.
__device__ Index thread_index(const WkvArgs& a, int64_t chunks) {
  const int64_t cblocks = (a.C + kThreads - 1) / kThreads;
  const int64_t blk = int64_t(blockIdx.x);
  const int64_t c = (blk % cblocks) * kThreads + threadIdx.x;
  const int64_t bj = blk / cblocks;
  return {bj / chunks, bj % chunks, c, c < a.C};
}

template <class T>
__device__ int64_t length_of(const WkvArgs& a, int64_t b) {
  if (!a.lengths) return a.T;
  const int64_t l = a.lengths[b];
  return l < 0 ? 0 : (l > a.T ? a.T : l);
}

// Runs frames [s.t0, s.t1) from `st`; writes y and log D when `out`.
template <class T, bool out>
__device__ State<T> run_forward(const WkvArgs& a, int64_t b, int64_t c, Span s, State<T> st) {
  const T w = static_cast<const T*>(a.w)[c], u = static_cast<const T*>(a.u)[c];
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  T* y = static_cast<T*>(a.y);
  T* ld = static_cast<T*>(a.log_den);
  int64_t i = (b * a.T + s.t0) * a.C + c;
  T kn = s.t0 < s.t1 ? k[i] : T(0), vn = s.t0 < s.t1 ? v[i] : T(0);
  for (int64_t t = s.t0; t < s.t1; ++t, i += a.C) {
    const T kt = kn, vt = vn;
    if (t + 1 < s.t1) {  // the next frame's loads overlap this frame's math
      kn = k[i + a.C];
      vn = v[i + a.C];
    }
    T e1, e2, p;
    if (out) {
      rescale(st.pp, u + kt, e1, e2, p);
      const T den = e1 * st.bb + e2;
      y[i] = (e1 * st.aa + e2 * vt) / den;
      if (ld) ld[i] = p + xlog(den);
    }
    rescale(w + st.pp, kt, e1, e2, p);
    st.aa = e1 * st.aa + e2 * vt;
    st.bb = e1 * st.bb + e2;
    st.pp = p;
  }
  return st;
}

template <class T>
__device__ State<T> empty_state() {
  return {T(0), T(0), T(kEmptyMax)};
}

template <class T>
__device__ State<T> load_state(const void* const (&p)[3], int64_t at) {
  if (!p[0]) return empty_state<T>();
  return {static_cast<const T*>(p[0])[at], static_cast<const T*>(p[1])[at], static_cast<const T*>(p[2])[at]};
}

template <class T>
__device__ void store_state(void* const (&p)[3], int64_t at, const State<T>& s) {
  if (!p[0]) return;
  static_cast<T*>(p[0])[at] = s.aa;
  static_cast<T*>(p[1])[at] = s.bb;
  static_cast<T*>(p[2])[at] = s.pp;
}

// Workspace: three [B, chunks, C] planes.
template <class T>
__device__ T* plane(void* ws, const WkvArgs& a, int64_t chunks, int q) {
  return static_cast<T*>(ws) + int64_t(q) * a.B * chunks * a.C;
}

template <class T>
__global__ void forward_summary(WkvArgs a, int64_t chunks, int64_t L, void* ws) {
  const Index x = thread_index(a, chunks);
  if (!x.ok) return;
  const State<T> s = run_forward<T, false>(a, x.b, x.c, span(x.j, L, length_of<T>(a, x.b)), empty_state<T>());
  const int64_t at = (x.b * chunks + x.j) * a.C + x.c;
  plane<T>(ws, a, chunks, 0)[at] = s.aa;
  plane<T>(ws, a, chunks, 1)[at] = s.bb;
  plane<T>(ws, a, chunks, 2)[at] = s.pp;
}

// One thread per (b, channel): replaces each chunk's summary by its incoming state.
template <class T>
__global__ void forward_carry(WkvArgs a, int64_t chunks, int64_t L, void* ws) {
  const int64_t idx = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= a.B * a.C) return;
  const int64_t b = idx / a.C, c = idx % a.C, len = length_of<T>(a, b);
  const T w = static_cast<const T*>(a.w)[c];
  T* A = plane<T>(ws, a, chunks, 0);
  T* Bp = plane<T>(ws, a, chunks, 1);
  T* P = plane<T>(ws, a, chunks, 2);
  State<T> st = load_state<T>(a.state_in, idx);
  for (int64_t j = 0; j < chunks; ++j) {
    const int64_t at = (b * chunks + j) * a.C + c;
    const State<T> local{A[at], Bp[at], P[at]};
    A[at] = st.aa, Bp[at] = st.bb, P[at] = st.pp;
    st = st.then(span(j, L, len).n(), w, local);
  }
  store_state<T>(a.state_out, idx, st);
}

template <class T>
__global__ void forward_apply(WkvArgs a, int64_t chunks, int64_t L, void* ws) {
  const Index x = thread_index(a, chunks);
  if (!x.ok) return;
  const int64_t len = length_of<T>(a, x.b), bc = x.b * a.C + x.c;
  State<T> st;
  if (chunks == 1) {
    st = load_state<T>(a.state_in, bc);
  } else {
    const int64_t at = (x.b * chunks + x.j) * a.C + x.c;
    st = {plane<T>(ws, a, chunks, 0)[at], plane<T>(ws, a, chunks, 1)[at], plane<T>(ws, a, chunks, 2)[at]};
  }
  const Span s = span(x.j, L, len);
  st = run_forward<T, true>(a, x.b, x.c, s, st);
  if (chunks == 1) store_state<T>(a.state_out, bc, st);
  // Padded frames of this chunk: zeros.
  T* y = static_cast<T*>(a.y);
  T* ld = static_cast<T*>(a.log_den);
  const int64_t end = (x.j + 1) * L < a.T ? (x.j + 1) * L : a.T;
  for (int64_t t = s.t1 > x.j * L ? s.t1 : x.j * L; t < end; ++t) {
    const int64_t i = (x.b * a.T + t) * a.C + x.c;
    y[i] = T(0);
    if (ld) ld[i] = T(0);
  }
}

// Reverse-time sums for the frames after t (see src/cpu/wkv.cpp), scaled by e^{-q}.
template <class T>
struct Back {
  T G, H, G1, H1, q;
  // n frames earlier (no new terms), then the sums `o` of those frames added.
  __device__ Back then(int64_t n, T w, const Back& o) const {
    Back r;
    T ea, eb;
    rescale(q + T(n) * w, o.q, ea, eb, r.q);
    r.G = ea * G + eb * o.G;
    r.H = ea * H + eb * o.H;
    r.G1 = ea * (G1 + T(n) * G) + eb * o.G1;
    r.H1 = ea * (H1 + T(n) * H) + eb * o.H1;
    return r;
  }
};

template <class T>
__device__ Back<T> empty_back() {
  return {T(0), T(0), T(0), T(0), T(kEmptyMax)};
}

// Frames (s.t1 .. s.t0] backwards from `st`; with `out`, writes gk, gv and sums dw, du.
template <class T, bool out>
__device__ Back<T> run_backward(const WkvArgs& a, int64_t b, int64_t c, Span s, Back<T> st, T& dw, T& du) {
  const T w = static_cast<const T*>(a.w)[c], u = static_cast<const T*>(a.u)[c];
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const T* y = static_cast<const T*>(a.y);
  const T* ld = static_cast<const T*>(a.log_den);
  const T* gy = static_cast<const T*>(a.gy);
  T* gk = static_cast<T*>(a.gk);
  T* gv = static_cast<T*>(a.gv);
  for (int64_t t = s.t1 - 1; t >= s.t0; --t) {
    const int64_t i = (b * a.T + t) * a.C + c;
    const T kt = k[i], vt = v[i], yt = y[i], lt = ld[i], gt = gy[i];
    if (out) {
      const T ek = xexp(kt + st.q);
      const T now = gt * xexp(u + kt - lt);
      gv[i] = now + ek * st.G;
      gk[i] = now * (vt - yt) + ek * (vt * st.G - st.H);
      du += now * (vt - yt);
      dw += ek * (vt * st.G1 - st.H1);
    }
    T sa, sb, q;
    rescale(st.q + w, -lt, sa, sb, q);
    st.G1 = sa * (st.G1 + st.G);
    st.H1 = sa * (st.H1 + st.H);
    st.G = sa * st.G + sb * gt;
    st.H = sa * st.H + sb * gt * yt;
    st.q = q;
  }
  return st;
}

// Workspace for the backward pass: five [B, chunks, C] planes of sums, then two of dw, du.
template <class T>
__global__ void backward_summary(WkvArgs a, int64_t chunks, int64_t L, void* ws) {
  const Index x = thread_index(a, chunks);
  if (!x.ok) return;
  T dw = 0, du = 0;
  const Back<T> s =
      run_backward<T, false>(a, x.b, x.c, span(x.j, L, length_of<T>(a, x.b)), empty_back<T>(), dw, du);
  const int64_t at = (x.b * chunks + x.j) * a.C + x.c;
  const T v[5] = {s.G, s.H, s.G1, s.H1, s.q};
  for (int q = 0; q < 5; ++q) plane<T>(ws, a, chunks, q)[at] = v[q];
}

template <class T>
__global__ void backward_carry(WkvArgs a, int64_t chunks, int64_t L, void* ws) {
  const int64_t idx = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= a.B * a.C) return;
  const int64_t b = idx / a.C, c = idx % a.C, len = length_of<T>(a, b);
  const T w = static_cast<const T*>(a.w)[c];
  Back<T> st = empty_back<T>();
  for (int64_t j = chunks - 1; j >= 0; --j) {
    const int64_t at = (b * chunks + j) * a.C + c;
    T* p[5];
    for (int q = 0; q < 5; ++q) p[q] = plane<T>(ws, a, chunks, q) + at;
    const Back<T> local{*p[0], *p[1], *p[2], *p[3], *p[4]};
    *p[0] = st.G, *p[1] = st.H, *p[2] = st.G1, *p[3] = st.H1, *p[4] = st.q;
    st = st.then(span(j, L, len).n(), w, local);
  }
}

template <class T>
__global__ void backward_apply(WkvArgs a, int64_t chunks, int64_t L, void* ws) {
  const Index x = thread_index(a, chunks);
  if (!x.ok) return;
  const int64_t len = length_of<T>(a, x.b), at = (x.b * chunks + x.j) * a.C + x.c;
  Back<T> st = empty_back<T>();
  if (chunks > 1) {
    T v[5];
    for (int q = 0; q < 5; ++q) v[q] = plane<T>(ws, a, chunks, q)[at];
    st = {v[0], v[1], v[2], v[3], v[4]};
  }
  T dw = 0, du = 0;
  const Span s = span(x.j, L, len);
  st = run_backward<T, true>(a, x.b, x.c, s, st, dw, du);
  if (x.j == 0 && a.state_in[0]) {
    // The carried history is frame -1: it reaches frame s decayed by e^{s w}.
    const State<T> h = load_state<T>(a.state_in, x.b * a.C + x.c);
    dw += xexp(h.pp + st.q) * (h.aa * st.G1 - h.bb * st.H1);
  }
  plane<T>(ws, a, chunks, 5)[at] = dw;
  plane<T>(ws, a, chunks, 6)[at] = du;
  T* gk = static_cast<T*>(a.gk);
  T* gv = static_cast<T*>(a.gv);
  const int64_t end = (x.j + 1) * L < a.T ? (x.j + 1) * L : a.T;
  for (int64_t t = s.t1 > x.j * L ? s.t1 : x.j * L; t < end; ++t) {
    const int64_t i = (x.b * a.T + t) * a.C + x.c;
    gk[i] = T(0);
    gv[i] = T(0);
  }
}

// gw, gu [B, C]: the per-chunk sums added up.
template <class T>
__global__ void backward_reduce(WkvArgs a, int64_t chunks, void* ws) {
  const int64_t idx = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= a.B * a.C) return;
  const int64_t b = idx / a.C, c = idx % a.C;
  T dw = 0, du = 0;
  for (int64_t j = 0; j < chunks; ++j) {
    dw += plane<T>(ws, a, chunks, 5)[(b * chunks + j) * a.C + c];
    du += plane<T>(ws, a, chunks, 6)[(b * chunks + j) * a.C + c];
  }
  static_cast<T*>(a.gw)[idx] = dw;
  static_cast<T*>(a.gu)[idx] = du;
}

unsigned grid_chunks(const WkvArgs& a, int64_t chunks) {
  return unsigned(a.B * chunks * ((a.C + kThreads - 1) / kThreads));
}
unsigned grid_channels(const WkvArgs& a) { return unsigned((a.B * a.C + kThreads - 1) / kThreads); }

template <class F>
void floating(DType dt, F&& f) {
  if (dt == DType::f32) return f(float{});
  if (dt == DType::f64) return f(double{});
  throw Error(std::string("wkv: needs f32 or f64 on the GPU, got ") + dtype_name(dt));
}

}  // namespace

size_t wkv_workspace_bytes(DType dt, const WkvArgs& a, bool backward) {
  const Plan p = plan(a);
  const int64_t planes = backward ? 7 : (p.chunks > 1 ? 3 : 0);
  return size_t(planes * a.B * p.chunks * a.C) * dtype_size(dt);
}

void launch_wkv_forward(DType dt, const WkvArgs& a, void* ws, cudaStream_t s) {
  if (a.B * a.C == 0 || a.T == 0) return;
  const Plan p = plan(a);
  floating(dt, [&](auto tag) {
    using T = decltype(tag);
    if (p.chunks > 1) {
      forward_summary<T><<<grid_chunks(a, p.chunks), kThreads, 0, s>>>(a, p.chunks, p.len, ws);
      forward_carry<T><<<grid_channels(a), kThreads, 0, s>>>(a, p.chunks, p.len, ws);
    }
    forward_apply<T><<<grid_chunks(a, p.chunks), kThreads, 0, s>>>(a, p.chunks, p.len, ws);
  });
  check_launch("wkv");
}

void launch_wkv_backward(DType dt, const WkvArgs& a, void* ws, cudaStream_t s) {
  if (a.B * a.C == 0 || a.T == 0) return;
  const Plan p = plan(a);
  floating(dt, [&](auto tag) {
    using T = decltype(tag);
    if (p.chunks > 1) {
      backward_summary<T><<<grid_chunks(a, p.chunks), kThreads, 0, s>>>(a, p.chunks, p.len, ws);
      backward_carry<T><<<grid_channels(a), kThreads, 0, s>>>(a, p.chunks, p.len, ws);
    }
    backward_apply<T><<<grid_chunks(a, p.chunks), kThreads, 0, s>>>(a, p.chunks, p.len, ws);
    backward_reduce<T><<<grid_channels(a), kThreads, 0, s>>>(a, p.chunks, ws);
  });
  check_launch("wkv backward");
}

}  // namespace dimx::gpu

// Long causal convolution on the CPU: a direct loop over the kernel taps (vectorized across
// channels) for short kernels, and FFTW's real transforms otherwise. x [B, L, C] and the kernel
// [Lk, C] are contiguous; the FFT works on all C channels of a sequence at once (FFTW's "many"
// interface with stride C), zero-padded to a length n >= L + Lk - 1 FFTW handles fast, so the
// circular convolution equals the linear one.
#include <fftw3.h>

#include <algorithm>
#include <complex>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/parallel.h"

namespace dimx::cpu {

namespace {

// FFTW's API per precision.
template <class T>
struct Fftw;
template <>
struct Fftw<float> {
  using Plan = fftwf_plan;
  using Complex = fftwf_complex;
  static void* alloc(size_t bytes) { return fftwf_malloc(bytes); }
  static void free(void* p) { fftwf_free(p); }
  static Plan r2c(int n, int howmany, float* in, Complex* out, unsigned flags) {
    return fftwf_plan_many_dft_r2c(1, &n, howmany, in, nullptr, 1, n, out, nullptr, 1, n / 2 + 1, flags);
  }
  static Plan c2r(int n, int howmany, Complex* in, float* out, unsigned flags) {
    return fftwf_plan_many_dft_c2r(1, &n, howmany, in, nullptr, 1, n / 2 + 1, out, nullptr, 1, n, flags);
  }
  static void exec_r2c(Plan p, float* in, Complex* out) { fftwf_execute_dft_r2c(p, in, out); }
  static void exec_c2r(Plan p, Complex* in, float* out) { fftwf_execute_dft_c2r(p, in, out); }
  static void destroy(Plan p) { fftwf_destroy_plan(p); }
  static void cleanup() { fftwf_cleanup(); }
};
template <>
struct Fftw<double> {
  using Plan = fftw_plan;
  using Complex = fftw_complex;
  static void* alloc(size_t bytes) { return fftw_malloc(bytes); }
  static void free(void* p) { fftw_free(p); }
  static Plan r2c(int n, int howmany, double* in, Complex* out, unsigned flags) {
    return fftw_plan_many_dft_r2c(1, &n, howmany, in, nullptr, 1, n, out, nullptr, 1, n / 2 + 1, flags);
  }
  static Plan c2r(int n, int howmany, Complex* in, double* out, unsigned flags) {
    return fftw_plan_many_dft_c2r(1, &n, howmany, in, nullptr, 1, n / 2 + 1, out, nullptr, 1, n, flags);
  }
  static void exec_r2c(Plan p, double* in, Complex* out) { fftw_execute_dft_r2c(p, in, out); }
  static void exec_c2r(Plan p, Complex* in, double* out) { fftw_execute_dft_c2r(p, in, out); }
  static void destroy(Plan p) { fftw_destroy_plan(p); }
  static void cleanup() { fftw_cleanup(); }
};

// An FFTW buffer (SIMD-aligned, as the plans expect).
template <class T, class E>
struct Buffer {
  E* p = nullptr;
  explicit Buffer(size_t n) : p(static_cast<E*>(Fftw<T>::alloc(std::max<size_t>(n, 1) * sizeof(E)))) {
    if (!p) throw Error("causal_conv: out of memory for an FFT buffer of " + std::to_string(n) + " elements");
  }
  ~Buffer() { Fftw<T>::free(p); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

// The smallest n >= m whose only prime factors are 2, 3, 5 and 7 (FFTW's fast sizes).
int64_t fast_size(int64_t m) {
  for (int64_t n = std::max<int64_t>(m, 1);; ++n) {
    int64_t r = n;
    for (int64_t p : {2, 3, 5, 7})
      while (r % p == 0) r /= p;
    if (r == 1) return n;
  }
}

// The transforms run on rows: a block of kRows channels at a time, each a contiguous row of n
// (time innermost), moved in and out of the [L, C] layout by a blocked transpose.
constexpr int64_t kRows = 16;

// Plans by (precision, n), made once with FFTW_ESTIMATE: FFTW_MEASURE picks among algorithms by
// timing them, so two processes could round differently (bench_ema's FFT-vs-direct check came
// out 4.29e-6 in one run and 3.81e-6 in the next), and a run resumed from a checkpoint would
// not repeat an uninterrupted one bit for bit; ESTIMATE's plans are fixed, and measured as fast
// for these lengths (docs/performance.md). FFTW's planner is not thread-safe, its new-array
// execute functions are.
// The cache is destroyed at exit: the plans first, then FFTW's planner memory.
template <class T>
struct Plans {
  typename Fftw<T>::Plan r2c = nullptr, c2r = nullptr;
  Plans() = default;
  Plans(const Plans&) = delete;
  Plans& operator=(const Plans&) = delete;
  ~Plans() {
    if (r2c) Fftw<T>::destroy(r2c);
    if (c2r) Fftw<T>::destroy(c2r);
  }
};
template <class T>
struct PlannerCleanup {
  ~PlannerCleanup() { Fftw<T>::cleanup(); }
};
template <class T>
const Plans<T>& plans_for(int64_t n) {
  static PlannerCleanup<T> cleanup;  // made before the cache, so destroyed after it
  static std::mutex mu;
  static std::map<int64_t, Plans<T>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(n);
  if (it != cache.end()) return it->second;
  using Cx = typename Fftw<T>::Complex;
  Buffer<T, T> re(size_t(n * kRows));
  Buffer<T, Cx> cx(size_t((n / 2 + 1) * kRows));
  Plans<T>& p = cache[n];
  p.r2c = Fftw<T>::r2c(int(n), int(kRows), re.p, cx.p, FFTW_ESTIMATE);
  p.c2r = Fftw<T>::c2r(int(n), int(kRows), cx.p, re.p, FFTW_ESTIMATE);
  if (!p.r2c || !p.c2r) {
    cache.erase(n);
    throw Error("causal_conv: FFTW could not plan a transform of length " + std::to_string(n));
  }
  return p;
}

// rows[r][t] = src[t][c0 + r] for t < L (reversed in time if asked), zero up to n.
template <class T>
void to_rows(const T* src, int64_t L, int64_t C, int64_t c0, int64_t nr, int64_t n, bool reverse, T* rows) {
  for (int64_t r = 0; r < nr; ++r) std::fill(rows + r * n + L, rows + (r + 1) * n, T(0));
  for (int64_t t = 0; t < L; ++t) {
    const T* s = src + t * C + c0;
    const int64_t tt = reverse ? L - 1 - t : t;
    for (int64_t r = 0; r < nr; ++r) rows[r * n + tt] = s[r];
  }
}

template <class T>
void conv_direct(const backend::CausalConv& a, const T* x, const T* k, T* y) {
  const int64_t L = a.L, C = a.C, Lk = a.Lk;
  parallel_for(a.B * L, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, C * std::min(L, Lk))),
               [&](int64_t r0, int64_t r1) {
                 for (int64_t r = r0; r < r1; ++r) {
                   const int64_t b = r / L, t = r % L;
                   T* yr = y + r * C;
                   std::fill(yr, yr + C, T(0));
                   const int64_t taps = a.anti_causal ? std::min(Lk, L - t) : std::min(Lk, t + 1);
                   for (int64_t j = 0; j < taps; ++j) {
                     const T* xr = x + (b * L + (a.anti_causal ? t + j : t - j)) * C;
                     const T* kr = k + j * C;
                     for (int64_t c = 0; c < C; ++c) yr[c] += kr[c] * xr[c];
                   }
                 }
               });
}

template <class T>
void kernel_grad_direct(const backend::CausalConv& a, const T* x, const T* g, T* dk) {
  const int64_t L = a.L, C = a.C;
  parallel_for(a.Lk, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      T* d = dk + j * C;
      std::fill(d, d + C, T(0));
      for (int64_t b = 0; b < a.B; ++b)
        for (int64_t t = j; t < L; ++t) {
          const T* gr = g + (b * L + t) * C;
          const T* xr = x + (b * L + t - j) * C;
          for (int64_t c = 0; c < C; ++c) d[c] += gr[c] * xr[c];
        }
    }
  });
}

template <class T>
void conv_fft(const backend::CausalConv& a, const T* x, const T* k, T* y) {
  using F = Fftw<T>;
  using Cx = typename F::Complex;
  const int64_t L = a.L, C = a.C, Lk = std::min(a.Lk, a.L), n = fast_size(L + std::max<int64_t>(Lk, 1) - 1), nf = n / 2 + 1;
  const Plans<T>& p = plans_for<T>(n);
  const int64_t blocks = (C + kRows - 1) / kRows;
  // The kernel's transforms, per channel, shared by every sequence.
  Buffer<T, Cx> kf(size_t(nf * blocks * kRows));
  parallel_for(blocks, 1, [&](int64_t q0, int64_t q1) {
    Buffer<T, T> rows(size_t(n * kRows));
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t c0 = q * kRows, nr = std::min(kRows, C - c0);
      std::fill(rows.p, rows.p + n * kRows, T(0));
      to_rows(k, Lk, C, c0, nr, n, false, rows.p);
      F::exec_r2c(p.r2c, rows.p, kf.p + q * kRows * nf);
    }
  });
  const T scale = T(1) / T(n);
  parallel_for(a.B * blocks, 1, [&](int64_t i0, int64_t i1) {
    Buffer<T, T> rows(size_t(n * kRows));
    Buffer<T, Cx> cx(size_t(nf * kRows));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / blocks, q = i % blocks, c0 = q * kRows, nr = std::min(kRows, C - c0);
      // Anti-causal: the causal convolution of the time-reversed sequence, reversed back.
      to_rows(x + b * L * C, L, C, c0, nr, n, a.anti_causal, rows.p);
      if (nr < kRows) std::fill(rows.p + nr * n, rows.p + kRows * n, T(0));
      F::exec_r2c(p.r2c, rows.p, cx.p);
      auto* X = reinterpret_cast<std::complex<T>*>(cx.p);
      const auto* K = reinterpret_cast<const std::complex<T>*>(kf.p + q * kRows * nf);
      for (int64_t j = 0; j < nr * nf; ++j) X[j] *= K[j];
      F::exec_c2r(p.c2r, cx.p, rows.p);
      T* yb = y + b * L * C + c0;
      for (int64_t t = 0; t < L; ++t) {
        const int64_t tt = a.anti_causal ? L - 1 - t : t;
        for (int64_t r = 0; r < nr; ++r) yb[t * C + r] = rows.p[r * n + tt] * scale;
      }
    }
  });
}

template <class T>
void kernel_grad_fft(const backend::CausalConv& a, const T* x, const T* g, T* dk) {
  using F = Fftw<T>;
  using Cx = typename F::Complex;
  const int64_t L = a.L, C = a.C, Lk = a.Lk, n = fast_size(L + std::max<int64_t>(std::min(Lk, L), 1) - 1), nf = n / 2 + 1;
  const Plans<T>& p = plans_for<T>(n);
  const int64_t blocks = (C + kRows - 1) / kRows;
  // Per block of channels: sum over b of G_b(f) conj(X_b(f)), then one inverse transform.
  parallel_for(blocks, 1, [&](int64_t q0, int64_t q1) {
    Buffer<T, T> rows(size_t(n * kRows));
    Buffer<T, Cx> gx(size_t(nf * kRows)), xx(size_t(nf * kRows));
    std::vector<std::complex<T>> acc(size_t(nf * kRows));
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t c0 = q * kRows, nr = std::min(kRows, C - c0);
      std::fill(acc.begin(), acc.end(), std::complex<T>(0));
      for (int64_t b = 0; b < a.B; ++b) {
        std::fill(rows.p, rows.p + n * kRows, T(0));
        to_rows(g + b * L * C, L, C, c0, nr, n, false, rows.p);
        F::exec_r2c(p.r2c, rows.p, gx.p);
        to_rows(x + b * L * C, L, C, c0, nr, n, false, rows.p);
        F::exec_r2c(p.r2c, rows.p, xx.p);
        const auto* G = reinterpret_cast<const std::complex<T>*>(gx.p);
        const auto* X = reinterpret_cast<const std::complex<T>*>(xx.p);
        for (int64_t j = 0; j < nr * nf; ++j) acc[size_t(j)] += G[j] * std::conj(X[j]);
      }
      std::memcpy(gx.p, acc.data(), sizeof(Cx) * size_t(nf * kRows));
      F::exec_c2r(p.c2r, gx.p, rows.p);
      const T scale = T(1) / T(n);
      for (int64_t j = 0; j < Lk; ++j)
        for (int64_t r = 0; r < nr; ++r) dk[j * C + c0 + r] = j < L ? rows.p[r * n + j] * scale : T(0);
    }
  });
}

template <class F32, class F64>
void by_dtype(const char* op, DType dt, F32&& f32, F64&& f64) {
  if (dt == DType::f32) return f32();
  if (dt == DType::f64) return f64();
  throw Error(std::string(op) + ": dtype " + dtype_name(dt) + " not supported on the CPU (f32, f64)");
}

}  // namespace

void CpuBackend::causal_conv(DType dt, const backend::CausalConv& a, const void* x, const void* k, void* y) {
  if (a.B * a.L * a.C == 0) return;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (a.fft) conv_fft<T>(a, static_cast<const T*>(x), static_cast<const T*>(k), static_cast<T*>(y));
    else conv_direct<T>(a, static_cast<const T*>(x), static_cast<const T*>(k), static_cast<T*>(y));
  };
  by_dtype("causal_conv", dt, [&] { run(float()); }, [&] { run(double()); });
}

void CpuBackend::causal_conv_kernel_grad(DType dt, const backend::CausalConv& a, const void* x, const void* g,
                                         void* dk) {
  if (a.Lk * a.C == 0) return;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (a.B * a.L == 0) return std::fill(static_cast<T*>(dk), static_cast<T*>(dk) + a.Lk * a.C, T(0));
    if (a.fft) kernel_grad_fft<T>(a, static_cast<const T*>(x), static_cast<const T*>(g), static_cast<T*>(dk));
    else kernel_grad_direct<T>(a, static_cast<const T*>(x), static_cast<const T*>(g), static_cast<T*>(dk));
  };
  by_dtype("causal_conv", dt, [&] { run(float()); }, [&] { run(double()); });
}

}  // namespace dimx::cpu

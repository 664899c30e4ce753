// Causal convolution on the GPU. Direct form: one thread per output element sums over the
// kernel taps (channels are the fastest index, so a warp reads consecutive channels of one
// frame), O(L * Lk) per channel. FFT form (cuFFT): each sequence zero-padded to a fast length
// n >= L + Lk - 1, real transforms over all channels at once (stride C), a product with the
// kernel's transform, the inverse; the kernel's gradient sums G conj(X) over the batch in the
// frequency domain before one inverse transform.
#include <dimx/error.h>

#include <cufft.h>

#include <map>
#include <mutex>
#include <tuple>

#include "common.cuh"

namespace dimx::gpu {

namespace {

template <class T>
__global__ void conv_kernel(int64_t B, int64_t L, int64_t C, int64_t Lk, bool anti, const T* x, const T* k, T* y) {
  const int64_t n = B * L * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C, t = (i / C) % L, b = i / (C * L);
    const int64_t taps = anti ? (Lk < L - t ? Lk : L - t) : (Lk < t + 1 ? Lk : t + 1);
    const T* xb = x + b * L * C + c;
    T acc = 0;
    for (int64_t j = 0; j < taps; ++j) acc += k[j * C + c] * xb[(anti ? t + j : t - j) * C];
    y[i] = acc;
  }
}

template <class T>
__global__ void kernel_grad_kernel(int64_t B, int64_t L, int64_t C, int64_t Lk, const T* x, const T* g, T* dk) {
  const int64_t n = Lk * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C, j = i / C;
    T acc = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = j; t < L; ++t) acc += g[(b * L + t) * C + c] * x[(b * L + t - j) * C + c];
    dk[i] = acc;
  }
}

template <class F>
void floating(const char* op, DType dt, F&& f) {
  if (dt == DType::f32) return f(float());
  if (dt == DType::f64) return f(double());
  throw Error(std::string(op) + ": dtype " + dtype_name(dt) + " not supported on cuda (f32, f64)");
}

// ---- the FFT form

template <class T>
struct Cx;
template <>
struct Cx<float> {
  using type = cufftComplex;
};
template <>
struct Cx<double> {
  using type = cufftDoubleComplex;
};

// rows [R * C, n] from src [R, L, C]: row (r, c) holds src[r, t, c] at t (or L - 1 - t reversed), zeros
// up to n. Time innermost, so one plan transforms every row of the batch at once.
template <class T>
__global__ void to_rows(int64_t R, int64_t L, int64_t C, int64_t n, bool reverse, const T* src, T* rows) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < R * C * n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i % n, rc = i / n, c = rc % C, r = rc / C;
    rows[i] = t < L ? src[(r * L + (reverse ? L - 1 - t : t)) * C + c] : T(0);
  }
}

// dst [R, L, C] = scale * rows (reversed if asked).
template <class T>
__global__ void from_rows(int64_t R, int64_t L, int64_t C, int64_t n, bool reverse, T scale, const T* rows, T* dst) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < R * L * C; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C, t = (i / C) % L, r = i / (C * L);
    dst[i] = rows[(r * C + c) * n + (reverse ? L - 1 - t : t)] * scale;
  }
}

// a[(b, c), f] *= k[c, f] over B sequences.
template <class C2>
__global__ void mul_spectra(int64_t B, int64_t CF, C2* a, const C2* k) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * CF; i += int64_t(gridDim.x) * blockDim.x) {
    const C2 u = a[i], v = k[i % CF];
    a[i].x = u.x * v.x - u.y * v.y;
    a[i].y = u.x * v.y + u.y * v.x;
  }
}

// acc[c, f] = sum_b g[(b, c), f] conj(x[(b, c), f])
template <class C2>
__global__ void sum_conj_products(int64_t B, int64_t CF, const C2* g, const C2* x, C2* acc) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < CF; i += int64_t(gridDim.x) * blockDim.x) {
    C2 s;
    s.x = 0;
    s.y = 0;
    for (int64_t b = 0; b < B; ++b) {
      const C2 u = g[b * CF + i], v = x[b * CF + i];
      s.x += u.x * v.x + u.y * v.y;
      s.y += u.y * v.x - u.x * v.y;
    }
    acc[i] = s;
  }
}

int64_t fast_size(int64_t m) {
  for (int64_t n = m < 1 ? 1 : m;; ++n) {
    int64_t r = n;
    for (int64_t p : {2, 3, 5, 7})
      while (r % p == 0) r /= p;
    if (r == 1) return n;
  }
}

void check_fft(cufftResult r, const char* what) {
  if (r != CUFFT_SUCCESS) throw Error(std::string("causal_conv: ") + what + " failed (cuFFT error " + std::to_string(int(r)) + ")");
}

// Plans for (device, n, rows, double?): `rows` contiguous transforms of length n, made once.
struct FftPlans {
  cufftHandle r2c, c2r;
};
const FftPlans& plans_for(int64_t n, int64_t rows, bool dbl, cudaStream_t s) {
  static std::mutex mu;
  static std::map<std::tuple<int, int64_t, int64_t, bool>, FftPlans> cache;
  int device = 0;
  cudaGetDevice(&device);
  std::lock_guard<std::mutex> lock(mu);
  auto key = std::make_tuple(device, n, rows, dbl);
  auto it = cache.find(key);
  if (it == cache.end()) {
    int len = int(n), inembed = int(n), onembed = int(n / 2 + 1);
    FftPlans p{};
    check_fft(cufftPlanMany(&p.r2c, 1, &len, &inembed, 1, int(n), &onembed, 1, int(n / 2 + 1), dbl ? CUFFT_D2Z : CUFFT_R2C,
                            int(rows)),
              "cufftPlanMany");
    check_fft(cufftPlanMany(&p.c2r, 1, &len, &onembed, 1, int(n / 2 + 1), &inembed, 1, int(n), dbl ? CUFFT_Z2D : CUFFT_C2R,
                            int(rows)),
              "cufftPlanMany");
    it = cache.emplace(key, p).first;
  }
  check_fft(cufftSetStream(it->second.r2c, s), "cufftSetStream");
  check_fft(cufftSetStream(it->second.c2r, s), "cufftSetStream");
  return it->second;
}

template <class T>
void r2c(const FftPlans& p, T* in, typename Cx<T>::type* out) {
  if constexpr (std::is_same_v<T, float>) check_fft(cufftExecR2C(p.r2c, in, out), "cufftExecR2C");
  else check_fft(cufftExecD2Z(p.r2c, in, out), "cufftExecD2Z");
}
template <class T>
void c2r(const FftPlans& p, typename Cx<T>::type* in, T* out) {
  if constexpr (std::is_same_v<T, float>) check_fft(cufftExecC2R(p.c2r, in, out), "cufftExecC2R");
  else check_fft(cufftExecZ2D(p.c2r, in, out), "cufftExecZ2D");
}

// Scratch from the stream-ordered pool.
template <class T>
T* scratch(size_t n, cudaStream_t s) {
  void* p = nullptr;
  if (cudaMallocAsync(&p, n * sizeof(T), s) != cudaSuccess) {
    cudaGetLastError();
    throw Error("causal_conv: cudaMallocAsync of " + std::to_string(n * sizeof(T)) + " bytes failed");
  }
  return static_cast<T*>(p);
}

// The transform length for L frames and Lk taps: at least L + min(Lk, L) - 1 (no wrap-around).
struct FftSize {
  int64_t Lu, n, nf;
};
FftSize fft_size(int64_t L, int64_t Lk) {
  FftSize f{};
  f.Lu = Lk < L ? Lk : L;
  f.n = fast_size(L + (f.Lu > 1 ? f.Lu : 1) - 1);
  f.nf = f.n / 2 + 1;
  return f;
}

template <class T>
void conv_fft(int64_t B, int64_t L, int64_t C, int64_t Lk, bool anti, const T* x, const T* k, T* y, cudaStream_t s) {
  using C2 = typename Cx<T>::type;
  const FftSize f = fft_size(L, Lk);
  const bool dbl = sizeof(T) == 8;
  T* rows = scratch<T>(size_t(B * C * f.n), s);
  C2* spec = scratch<C2>(size_t(B * C * f.nf), s);
  C2* kf = scratch<C2>(size_t(C * f.nf), s);
  // The kernel's transform per channel, then every row of the batch in one transform.
  to_rows<T><<<blocks_for(C * f.n), 256, 0, s>>>(1, f.Lu, C, f.n, false, k, rows);
  r2c<T>(plans_for(f.n, C, dbl, s), rows, kf);
  to_rows<T><<<blocks_for(B * C * f.n), 256, 0, s>>>(B, L, C, f.n, anti, x, rows);
  const FftPlans& p = plans_for(f.n, B * C, dbl, s);
  r2c<T>(p, rows, spec);
  mul_spectra<C2><<<blocks_for(B * C * f.nf), 256, 0, s>>>(B, C * f.nf, spec, kf);
  c2r<T>(p, spec, rows);
  from_rows<T><<<blocks_for(B * L * C), 256, 0, s>>>(B, L, C, f.n, anti, T(1) / T(f.n), rows, y);
  check_launch("causal_conv");
  cudaFreeAsync(rows, s);
  cudaFreeAsync(spec, s);
  cudaFreeAsync(kf, s);
}

template <class T>
void kernel_grad_fft(int64_t B, int64_t L, int64_t C, int64_t Lk, const T* x, const T* g, T* dk, cudaStream_t s) {
  using C2 = typename Cx<T>::type;
  const FftSize f = fft_size(L, Lk);
  const bool dbl = sizeof(T) == 8;
  T* rows = scratch<T>(size_t(B * C * f.n), s);
  C2* gs = scratch<C2>(size_t(B * C * f.nf), s);
  C2* xs = scratch<C2>(size_t(B * C * f.nf), s);
  const FftPlans& p = plans_for(f.n, B * C, dbl, s);
  to_rows<T><<<blocks_for(B * C * f.n), 256, 0, s>>>(B, L, C, f.n, false, g, rows);
  r2c<T>(p, rows, gs);
  to_rows<T><<<blocks_for(B * C * f.n), 256, 0, s>>>(B, L, C, f.n, false, x, rows);
  r2c<T>(p, rows, xs);
  // The batch's sum in the frequency domain, then one inverse transform per channel.
  sum_conj_products<C2><<<blocks_for(C * f.nf), 256, 0, s>>>(B, C * f.nf, gs, xs, gs);
  c2r<T>(plans_for(f.n, C, dbl, s), gs, rows);
  cudaMemsetAsync(dk, 0, size_t(Lk * C) * sizeof(T), s);
  // dk [Lk, C]: lags 0 .. Lu-1 from row c (the rows buffer read as [1, C, n]), zero beyond.
  from_rows<T><<<blocks_for(f.Lu * C), 256, 0, s>>>(1, f.Lu, C, f.n, false, T(1) / T(f.n), rows, dk);
  check_launch("causal_conv");
  cudaFreeAsync(rows, s);
  cudaFreeAsync(gs, s);
  cudaFreeAsync(xs, s);
}

}  // namespace

void launch_causal_conv(DType dt, int64_t B, int64_t L, int64_t C, int64_t Lk, bool anti, bool fft, const void* x,
                        const void* k, void* y, cudaStream_t s) {
  if (B * L * C == 0) return;
  floating("causal_conv", dt, [&](auto tag) {
    using T = decltype(tag);
    if (fft && Lk > 0) {
      conv_fft<T>(B, L, C, Lk, anti, static_cast<const T*>(x), static_cast<const T*>(k), static_cast<T*>(y), s);
      return;
    }
    conv_kernel<T><<<blocks_for(B * L * C), 256, 0, s>>>(B, L, C, Lk, anti, static_cast<const T*>(x),
                                                         static_cast<const T*>(k), static_cast<T*>(y));
  });
  check_launch("causal_conv");
}

void launch_causal_conv_kernel_grad(DType dt, int64_t B, int64_t L, int64_t C, int64_t Lk, bool fft, const void* x,
                                    const void* g, void* dk, cudaStream_t s) {
  if (Lk * C == 0) return;
  floating("causal_conv", dt, [&](auto tag) {
    using T = decltype(tag);
    if (fft && B * L > 0) {
      kernel_grad_fft<T>(B, L, C, Lk, static_cast<const T*>(x), static_cast<const T*>(g), static_cast<T*>(dk), s);
      return;
    }
    kernel_grad_kernel<T><<<blocks_for(Lk * C), 256, 0, s>>>(B, L, C, Lk, static_cast<const T*>(x),
                                                             static_cast<const T*>(g), static_cast<T*>(dk));
  });
  check_launch("causal_conv");
}

}  // namespace dimx::gpu

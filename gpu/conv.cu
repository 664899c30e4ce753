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

// dst [n, C] = src [L, C] (rows reversed if asked), zero beyond L.
template <class T>
__global__ void pad_rows(int64_t L, int64_t n, int64_t C, bool reverse, const T* src, T* dst) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n * C; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / C, c = i % C;
    dst[i] = t < L ? src[(reverse ? L - 1 - t : t) * C + c] : T(0);
  }
}

// y [L, C] = scale * src rows (reversed if asked).
template <class T>
__global__ void unpad_rows(int64_t L, int64_t C, bool reverse, T scale, const T* src, T* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < L * C; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / C, c = i % C;
    y[i] = src[(reverse ? L - 1 - t : t) * C + c] * scale;
  }
}

template <class C2>
__global__ void mul_spectra(int64_t n, C2* a, const C2* b) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const C2 u = a[i], v = b[i];
    a[i].x = u.x * v.x - u.y * v.y;
    a[i].y = u.x * v.y + u.y * v.x;
  }
}

// acc += g conj(x)
template <class C2>
__global__ void mac_conj(int64_t n, C2* acc, const C2* g, const C2* x) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const C2 u = g[i], v = x[i];
    acc[i].x += u.x * v.x + u.y * v.y;
    acc[i].y += u.y * v.x - u.x * v.y;
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

// Plans for (device, n, C, double?): C transforms of length n with stride C, made once.
struct FftPlans {
  cufftHandle r2c, c2r;
};
const FftPlans& plans_for(int64_t n, int64_t C, bool dbl) {
  static std::mutex mu;
  static std::map<std::tuple<int, int64_t, int64_t, bool>, FftPlans> cache;
  int device = 0;
  cudaGetDevice(&device);
  std::lock_guard<std::mutex> lock(mu);
  auto key = std::make_tuple(device, n, C, dbl);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  int len = int(n), inembed = int(n), onembed = int(n / 2 + 1);
  FftPlans p{};
  check_fft(cufftPlanMany(&p.r2c, 1, &len, &inembed, int(C), 1, &onembed, int(C), 1, dbl ? CUFFT_D2Z : CUFFT_R2C, int(C)),
            "cufftPlanMany");
  check_fft(cufftPlanMany(&p.c2r, 1, &len, &onembed, int(C), 1, &inembed, int(C), 1, dbl ? CUFFT_Z2D : CUFFT_C2R, int(C)),
            "cufftPlanMany");
  return cache.emplace(key, p).first->second;
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

// The transform length for L frames and Lk taps (at least L, no wrap-around), and its plans on `s`.
struct FftSetup {
  int64_t Lu, n, nf;
  const FftPlans* plans;
};
FftSetup fft_setup(int64_t L, int64_t C, int64_t Lk, bool dbl, cudaStream_t s) {
  FftSetup f{};
  f.Lu = Lk < L ? Lk : L;
  f.n = fast_size(L + (f.Lu > 1 ? f.Lu : 1) - 1);
  f.nf = f.n / 2 + 1;
  f.plans = &plans_for(f.n, C, dbl);
  check_fft(cufftSetStream(f.plans->r2c, s), "cufftSetStream");
  check_fft(cufftSetStream(f.plans->c2r, s), "cufftSetStream");
  return f;
}

template <class T>
void conv_fft(int64_t B, int64_t L, int64_t C, int64_t Lk, bool anti, const T* x, const T* k, T* y, cudaStream_t s) {
  using C2 = typename Cx<T>::type;
  const FftSetup f = fft_setup(L, C, Lk, sizeof(T) == 8, s);
  const int64_t Lu = f.Lu, n = f.n, nf = f.nf;
  const FftPlans& p = *f.plans;
  T* re = scratch<T>(size_t(n * C), s);
  C2* kf = scratch<C2>(size_t(nf * C), s);
  C2* cx = scratch<C2>(size_t(nf * C), s);
  pad_rows<T><<<blocks_for(n * C), 256, 0, s>>>(Lu, n, C, false, k, re);
  r2c<T>(p, re, kf);
  for (int64_t b = 0; b < B; ++b) {
    pad_rows<T><<<blocks_for(n * C), 256, 0, s>>>(L, n, C, anti, x + b * L * C, re);
    r2c<T>(p, re, cx);
    mul_spectra<C2><<<blocks_for(nf * C), 256, 0, s>>>(nf * C, cx, kf);
    c2r<T>(p, cx, re);
    unpad_rows<T><<<blocks_for(L * C), 256, 0, s>>>(L, C, anti, T(1) / T(n), re, y + b * L * C);
  }
  check_launch("causal_conv");
  cudaFreeAsync(re, s);
  cudaFreeAsync(kf, s);
  cudaFreeAsync(cx, s);
}

template <class T>
void kernel_grad_fft(int64_t B, int64_t L, int64_t C, int64_t Lk, const T* x, const T* g, T* dk, cudaStream_t s) {
  using C2 = typename Cx<T>::type;
  const FftSetup f = fft_setup(L, C, Lk, sizeof(T) == 8, s);
  const int64_t Lu = f.Lu, n = f.n, nf = f.nf;
  const FftPlans& p = *f.plans;
  T* re = scratch<T>(size_t(n * C), s);
  C2* gx = scratch<C2>(size_t(nf * C), s);
  C2* xx = scratch<C2>(size_t(nf * C), s);
  C2* acc = scratch<C2>(size_t(nf * C), s);
  cudaMemsetAsync(acc, 0, size_t(nf * C) * sizeof(C2), s);
  for (int64_t b = 0; b < B; ++b) {
    pad_rows<T><<<blocks_for(n * C), 256, 0, s>>>(L, n, C, false, g + b * L * C, re);
    r2c<T>(p, re, gx);
    pad_rows<T><<<blocks_for(n * C), 256, 0, s>>>(L, n, C, false, x + b * L * C, re);
    r2c<T>(p, re, xx);
    mac_conj<C2><<<blocks_for(nf * C), 256, 0, s>>>(nf * C, acc, gx, xx);
  }
  c2r<T>(p, acc, re);
  // dk [Lk, C]: the first Lu lags, zero beyond the sequence.
  cudaMemsetAsync(dk, 0, size_t(Lk * C) * sizeof(T), s);
  unpad_rows<T><<<blocks_for(Lu * C), 256, 0, s>>>(Lu, C, false, T(1) / T(n), re, dk);
  check_launch("causal_conv");
  cudaFreeAsync(re, s);
  cudaFreeAsync(gx, s);
  cudaFreeAsync(xx, s);
  cudaFreeAsync(acc, s);
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

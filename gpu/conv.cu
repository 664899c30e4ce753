// Causal convolution on the GPU, direct form: one thread per output element sums over the
// kernel taps (channels are the fastest index, so a warp reads consecutive channels of one
// frame). O(L * Lk) per channel: the FFT or a fused EMA scan for long kernels is future work;
// until then `fft` requests take this path too.
#include <dimx/error.h>

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

}  // namespace

void launch_causal_conv(DType dt, int64_t B, int64_t L, int64_t C, int64_t Lk, bool anti, const void* x, const void* k,
                        void* y, cudaStream_t s) {
  if (B * L * C == 0) return;
  floating("causal_conv", dt, [&](auto tag) {
    using T = decltype(tag);
    conv_kernel<T><<<blocks_for(B * L * C), 256, 0, s>>>(B, L, C, Lk, anti, static_cast<const T*>(x),
                                                         static_cast<const T*>(k), static_cast<T*>(y));
  });
  check_launch("causal_conv");
}

void launch_causal_conv_kernel_grad(DType dt, int64_t B, int64_t L, int64_t C, int64_t Lk, const void* x,
                                    const void* g, void* dk, cudaStream_t s) {
  if (Lk * C == 0) return;
  floating("causal_conv", dt, [&](auto tag) {
    using T = decltype(tag);
    kernel_grad_kernel<T><<<blocks_for(Lk * C), 256, 0, s>>>(B, L, C, Lk, static_cast<const T*>(x),
                                                             static_cast<const T*>(g), static_cast<T*>(dk));
  });
  check_launch("causal_conv");
}

}  // namespace dimx::gpu

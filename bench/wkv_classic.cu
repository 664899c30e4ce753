// The classic WKV kernels (RWKV-4's design): one thread per (batch, channel), sequential
// over time; the backward stores gy/D and log-weights of every frame in per-thread arrays
// of T_MAX entries (local memory), then runs back over them. Written from the recurrence
// in the spec (shared/spec/modules.md, section 5).
#include <cuda_runtime.h>

#include "wkv_classic.h"

namespace {

constexpr float kMinValue = -1e38f;

__global__ void kernel_forward(int B, int T, int C, const float* __restrict__ w_, const float* __restrict__ u_,
                               const float* __restrict__ k_, const float* __restrict__ v_, float* __restrict__ y_) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= B * C) return;
  const int b = idx / C, c = idx % C;
  const long offset = long(b) * T * C + c;
  const float u = u_[c], w = w_[c];
  const float* k = k_ + offset;
  const float* v = v_ + offset;
  float* y = y_ + offset;
  float aa = 0, bb = 0, pp = kMinValue;
  for (int i = 0; i < T; ++i) {
    const long ii = long(i) * C;
    const float kk = k[ii], vv = v[ii];
    float ww = u + kk;
    float p = fmaxf(pp, ww);
    float e1 = expf(pp - p), e2 = expf(ww - p);
    y[ii] = (e1 * aa + e2 * vv) / (e1 * bb + e2);
    ww = w + pp;
    p = fmaxf(ww, kk);
    e1 = expf(ww - p);
    e2 = expf(kk - p);
    aa = e1 * aa + e2 * vv;
    bb = e1 * bb + e2;
    pp = p;
  }
}

template <int TMax>
__global__ void kernel_backward(int B, int T, int C, const float* __restrict__ w_, const float* __restrict__ u_,
                                const float* __restrict__ k_, const float* __restrict__ v_,
                                const float* __restrict__ y_, const float* __restrict__ gy_, float* __restrict__ gw_,
                                float* __restrict__ gu_, float* __restrict__ gk_, float* __restrict__ gv_) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= B * C) return;
  const int b = idx / C, c = idx % C;
  const long offset = long(b) * T * C + c;
  const float u = u_[c], w = w_[c];
  const float *k = k_ + offset, *v = v_ + offset, *y = y_ + offset, *gy = gy_ + offset;
  float *gk = gk_ + offset, *gv = gv_ + offset;
  float q[TMax], r[TMax];
  float gw = 0, gu = 0, aa = 0, bb = 0, ga = 0, gb = 0, pp = kMinValue;
  for (int i = 0; i < T; ++i) {
    const long ii = long(i) * C;
    const float kk = k[ii], vv = v[ii], yy = y[ii];
    float ww = u + kk;
    float p = fmaxf(pp, ww);
    float e1 = expf(pp - p), e2 = expf(ww - p);
    const float qq = gy[ii] / (e1 * bb + e2);
    gw += (ga - gb * yy) * e1 * qq;
    gu += (vv - yy) * e2 * qq;
    q[i] = qq;
    r[i] = ww - p;
    ww = w + pp;
    p = fmaxf(ww, kk);
    e1 = expf(ww - p);
    e2 = expf(kk - p);
    ga = e1 * (aa + ga);
    gb = e1 * (bb + gb);
    aa = e1 * aa + e2 * vv;
    bb = e1 * bb + e2;
    pp = p;
  }
  gw_[idx] = gw * w;  // the gradient of time_decay, through w = -exp(time_decay)
  gu_[idx] = gu;
  aa = 0, bb = 0, pp = kMinValue;
  for (int i = T - 1; i >= 0; --i) {
    const long ii = long(i) * C;
    const float kk = k[ii], vv = v[ii], yy = y[ii], qq = q[i], rr = r[i];
    float e1 = qq * expf(rr);
    float e2 = expf(kk + pp);
    gk[ii] = e1 * (vv - yy) + e2 * (aa * vv + bb);
    gv[ii] = e1 + e2 * aa;
    const float ww = w + pp;
    const float www = rr - u - kk;
    const float p = fmaxf(ww, www);
    e1 = expf(ww - p);
    e2 = qq * expf(www - p);
    aa = e1 * aa + e2;
    bb = e1 * bb - yy * e2;
    pp = p;
  }
}

}  // namespace

namespace wkv_classic {

void forward(int B, int T, int C, const float* w, const float* u, const float* k, const float* v, float* y) {
  const int threads = C < 32 ? C : 32;  // as the original: min(C, 32) threads per block
  kernel_forward<<<(B * C + threads - 1) / threads, threads>>>(B, T, C, w, u, k, v, y);
}

void backward(int B, int T, int C, const float* w, const float* u, const float* k, const float* v, const float* y,
              const float* gy, float* gw, float* gu, float* gk, float* gv) {
  const int threads = C < 32 ? C : 32;
  const int blocks = (B * C + threads - 1) / threads;
  if (T <= 1024)
    kernel_backward<1024><<<blocks, threads>>>(B, T, C, w, u, k, v, y, gy, gw, gu, gk, gv);
  else
    kernel_backward<4096><<<blocks, threads>>>(B, T, C, w, u, k, v, y, gy, gw, gu, gk, gv);
}

void* device_alloc(size_t bytes) {
  void* p = nullptr;
  if (cudaMalloc(&p, bytes) != cudaSuccess) return nullptr;
  cudaMemset(p, 1, bytes);
  return p;
}
void device_free(void* p) { cudaFree(p); }
void copy(void* dst, const void* src, size_t bytes) { cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0); }

const char* sync() {
  cudaError_t e = cudaDeviceSynchronize();
  if (e == cudaSuccess) e = cudaGetLastError();
  return e == cudaSuccess ? "" : cudaGetErrorString(e);
}

}  // namespace wkv_classic

// The classic WKV kernels from the recurrence in the RWKV-4 spec: one thread per (b, c),
// sequential over all of T. The backward kernel runs the same reverse recurrence as dimx
// (from the forward's y and log D), sequentially.
#include <cuda_runtime.h>

#include "wkv_classic.h"

namespace dimx::bench {

namespace {

__global__ void forward(int B, int T, int C, const float* w, const float* u, const float* k, const float* v, float* y,
                        float* ld) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= B * C) return;
  const int b = idx / C, c = idx % C;
  const float ww = w[c], uu = u[c];
  float aa = 0, bb = 0, pp = -1e38f;
  for (int t = 0; t < T; ++t) {
    const int i = (b * T + t) * C + c;
    const float kk = k[i], vv = v[i];
    float q = fmaxf(pp, uu + kk);
    float e1 = __expf(pp - q), e2 = __expf(uu + kk - q);
    const float den = e1 * bb + e2;
    y[i] = (e1 * aa + e2 * vv) / den;
    if (ld) ld[i] = q + __logf(den);
    q = fmaxf(pp + ww, kk);
    e1 = __expf(pp + ww - q);
    e2 = __expf(kk - q);
    aa = e1 * aa + e2 * vv;
    bb = e1 * bb + e2;
    pp = q;
  }
}

__global__ void backward(int B, int T, int C, const float* w, const float* u, const float* k, const float* v,
                         const float* y, const float* ld, const float* gy, float* gk, float* gv, float* gw, float* gu) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= B * C) return;
  const int b = idx / C, c = idx % C;
  const float ww = w[c], uu = u[c];
  float G = 0, H = 0, G1 = 0, H1 = 0, q = -1e38f, dw = 0, du = 0;
  for (int t = T - 1; t >= 0; --t) {
    const int i = (b * T + t) * C + c;
    const float kt = k[i], vt = v[i], yt = y[i], lt = ld[i], g = gy[i];
    const float ek = __expf(kt + q), now = g * __expf(uu + kt - lt);
    gv[i] = now + ek * G;
    gk[i] = now * (vt - yt) + ek * (vt * G - H);
    du += now * (vt - yt);
    dw += ek * (vt * G1 - H1);
    const float q2 = fmaxf(q + ww, -lt), sa = __expf(q + ww - q2), sb = __expf(-lt - q2);
    G1 = sa * (G1 + G);
    H1 = sa * (H1 + H);
    G = sa * G + sb * g;
    H = sa * H + sb * g * yt;
    q = q2;
  }
  gw[idx] = dw;
  gu[idx] = du;
}

unsigned blocks(int n) { return unsigned((n + 127) / 128); }

}  // namespace

void classic_wkv_forward(int B, int T, int C, const float* w, const float* u, const float* k, const float* v,
                         float* y, float* log_den) {
  forward<<<blocks(B * C), 128>>>(B, T, C, w, u, k, v, y, log_den);
}

void classic_wkv_backward(int B, int T, int C, const float* w, const float* u, const float* k, const float* v,
                          const float* y, const float* log_den, const float* gy, float* gk, float* gv, float* gw,
                          float* gu) {
  backward<<<blocks(B * C), 128>>>(B, T, C, w, u, k, v, y, log_den, gy, gk, gv, gw, gu);
}

void classic_sync() { cudaDeviceSynchronize(); }

}  // namespace dimx::bench

#pragma once
// The classic WKV kernels (one thread per channel, sequential in time), the peer of
// bench_wkv. Device pointers, f32, [B, T, C] contiguous; w = -exp(time_decay).
namespace dimx::bench {

void classic_wkv_forward(int B, int T, int C, const float* w, const float* u, const float* k, const float* v,
                         float* y, float* log_den);
void classic_wkv_backward(int B, int T, int C, const float* w, const float* u, const float* k, const float* v,
                          const float* y, const float* log_den, const float* gy, float* gk, float* gv, float* gw,
                          float* gu);
void classic_sync();

}  // namespace dimx::bench

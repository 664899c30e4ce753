#pragma once
#include <cstddef>
// The classic RWKV-4 WKV CUDA kernels (one thread per (batch, channel), sequential over T;
// the backward keeps per-thread arrays of T_MAX entries), written from the recurrence in
// the spec: the peer of bench_wkv. Plain pointers on the default stream, float32.
namespace wkv_classic {

// w = -exp(time_decay) [C], u [C], k, v, y [B, T, C].
void forward(int B, int T, int C, const float* w, const float* u, const float* k, const float* v, float* y);
// gy [B, T, C] -> gk, gv [B, T, C]; gw (already times w: the gradient of time_decay), gu [B, C].
// T must be at most 4096.
void backward(int B, int T, int C, const float* w, const float* u, const float* k, const float* v, const float* y,
              const float* gy, float* gw, float* gu, float* gk, float* gv);
// Plain device memory and a device-to-device copy on the default stream (the copy figure).
void* device_alloc(size_t bytes);
void device_free(void* p);
void copy(void* dst, const void* src, size_t bytes);
// Waits for the default stream; returns the last CUDA error as text ("" when none).
const char* sync();

}  // namespace wkv_classic

#pragma once
// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", 2011), shared
// by every backend so that one seed gives the same numbers on each device. Plain C++ with
// __host__ __device__ markers where nvcc compiles it.
#include <cmath>
#include <cstdint>

#include <dimx/dtype.h>

#ifdef __CUDACC__
#define DIMX_HD __host__ __device__
#else
#define DIMX_HD
#endif

namespace dimx::philox {

DIMX_HD inline void block(uint64_t counter, uint64_t seed, uint32_t out[4]) {
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    uint64_t p0 = uint64_t(0xD2511F53u) * c0, p1 = uint64_t(0xCD9E8D57u) * c2;
    uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    c1 = uint32_t(p1);
    c3 = uint32_t(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// 4 values per counter in f32, 2 in f64.
DIMX_HD inline int values_per_counter(DType dt) { return dt == DType::f64 ? 2 : 4; }

// Uniform values in [0, 1), or standard normals (Box-Muller), for one counter.
DIMX_HD inline void values(bool normal, bool f64, uint64_t seed, uint64_t counter, double v[4]) {
  uint32_t u[4];
  block(counter, seed, u);
  double x[4];
  int n;
  if (f64) {
    // 53 random bits per value.
    x[0] = double((uint64_t(u[0]) << 21) ^ (u[1] >> 11)) * 0x1p-53;
    x[1] = double((uint64_t(u[2]) << 21) ^ (u[3] >> 11)) * 0x1p-53;
    n = 2;
  } else {
    for (int i = 0; i < 4; ++i) x[i] = double(u[i] >> 8) * 0x1p-24;
    n = 4;
  }
  if (!normal) {
    for (int i = 0; i < n; ++i) v[i] = x[i];
    return;
  }
  const double two_pi = 6.283185307179586476925;
  for (int i = 0; i < n; i += 2) {
    double r = ::sqrt(-2.0 * ::log(1.0 - x[i]));  // 1 - x in (0, 1]
    v[i] = r * ::cos(two_pi * x[i + 1]);
    v[i + 1] = r * ::sin(two_pi * x[i + 1]);
  }
}

// Whether element `flat` of a dropout mask is kept, as random_uniform(dims, gen) >= p decides
// it for the stream (seed, offset): f32 values (4 per counter, 24 random bits) unless f64 (2
// per counter, 53 bits). `threshold` is p in those units, rounded up (keep_threshold), so that
// the comparison is exact in integers. The last counter's block is kept: neighbouring elements
// cost one Philox block per counter.
struct KeepStream {
  uint64_t seed, offset, threshold;
  bool f64;
  uint64_t counter = ~uint64_t(0);
  uint32_t u[4] = {0, 0, 0, 0};

  DIMX_HD bool operator()(uint64_t flat) {
    const uint64_t c = offset + (f64 ? flat / 2 : flat / 4);
    if (c != counter) {
      block(c, seed, u);
      counter = c;
    }
    if (f64) {
      const bool hi = flat % 2;
      const uint64_t x = (uint64_t(hi ? u[2] : u[0]) << 21) ^ ((hi ? u[3] : u[1]) >> 11);
      return x >= threshold;
    }
    const uint32_t lane = uint32_t(flat % 4);
    const uint32_t x = lane == 0 ? u[0] : lane == 1 ? u[1] : lane == 2 ? u[2] : u[3];
    return (x >> 8) >= threshold;
  }
};

// KeepStream's threshold of drop probability p in [0, 1): p as the mask's dtype holds it (f32
// unless f64), times 2^24 (2^53 for f64), rounded up.
inline uint64_t keep_threshold(double p, bool f64) {
  return f64 ? uint64_t(std::ceil(std::ldexp(p, 53))) : uint64_t(std::ceil(std::ldexp(double(float(p)), 24)));
}

}  // namespace dimx::philox

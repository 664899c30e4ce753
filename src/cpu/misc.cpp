// CPU gather and counter-based random numbers.
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu/cpu_backend.h"
#include "cpu/strided.h"
#include "philox.h"

namespace dimx::cpu {

bool CpuBackend::gather(DType dt, const Shape& shape, const In& x, int64_t axis_stride, int64_t extent,
                        const In& idx, bool clip, const Out& y) {
  const int64_t es = int64_t(dtype_size(dt));
  std::atomic<bool> ok{true};
  std::array<char*, 3> base{static_cast<char*>(const_cast<void*>(x.data)),
                            static_cast<char*>(const_cast<void*>(idx.data)), static_cast<char*>(y.data)};
  std::array<Strides, 3> st{bytes(x.strides, size_t(es)), bytes(idx.strides, 8), bytes(y.strides, size_t(es))};
  const int64_t axis_bytes = axis_stride * es;
  for_each_strided<3>(shape, st, base, kParallelGrain,
                      [&](const std::array<char*, 3>& p, int64_t n, const std::array<int64_t, 3>& s) {
                        for (int64_t i = 0; i < n; ++i) {
                          int64_t j = *reinterpret_cast<const int64_t*>(p[1] + i * s[1]);
                          if (j < 0 || j >= extent) {
                            if (!clip) ok = false;
                            j = j < 0 ? 0 : extent - 1;
                          }
                          std::memcpy(p[2] + i * s[2], p[0] + i * s[0] + j * axis_bytes, size_t(es));
                        }
                      });
  return ok;
}

void CpuBackend::scatter_add(DType dt, const Shape& shape, const In& x, int64_t axis_stride, int64_t extent,
                             const In& idx, const Out& y) {
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, bool>) {
      throw Error("scatter_add: bool dtype not supported");
    } else {
      std::array<char*, 3> base{static_cast<char*>(const_cast<void*>(x.data)),
                                static_cast<char*>(const_cast<void*>(idx.data)), static_cast<char*>(y.data)};
      std::array<Strides, 3> st{bytes(x.strides, sizeof(T)), bytes(idx.strides, 8), bytes(y.strides, sizeof(T))};
      const int64_t axis_bytes = axis_stride * int64_t(sizeof(T));
      // Serial: several positions may add into the same element.
      for_each_strided<3>(shape, st, base, std::numeric_limits<int64_t>::max(),
                          [&](const std::array<char*, 3>& p, int64_t n, const std::array<int64_t, 3>& s) {
                            for (int64_t i = 0; i < n; ++i) {
                              int64_t j = *reinterpret_cast<const int64_t*>(p[1] + i * s[1]);
                              j = j < 0 ? 0 : (j >= extent ? extent - 1 : j);
                              *reinterpret_cast<T*>(p[2] + i * s[2] + j * axis_bytes) +=
                                  *reinterpret_cast<const T*>(p[0] + i * s[0]);
                            }
                          });
    }
  });
}

void CpuBackend::random(backend::RandomKind kind, DType dt, int64_t n, uint64_t seed, uint64_t offset, double a,
                        double b, void* y) {
  if (dt != DType::f32 && dt != DType::f64)
    throw Error(std::string("random: dtype ") + dtype_name(dt) + " not supported (f32, f64)");
  const int per = philox::values_per_counter(dt);
  const int64_t counters = (n + per - 1) / per;
  parallel_for(counters, 1 << 12, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double v[4];
      philox::values(kind == backend::RandomKind::normal, dt == DType::f64, seed, offset + uint64_t(c), v);
      for (int j = 0; j < per; ++j) {
        int64_t i = c * per + j;
        if (i >= n) break;
        double r = kind == backend::RandomKind::normal ? a + b * v[j] : a + (b - a) * v[j];
        if (dt == DType::f32) static_cast<float*>(y)[i] = float(r);
        else static_cast<double*>(y)[i] = r;
      }
    }
  });
}

}  // namespace dimx::cpu

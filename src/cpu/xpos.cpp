// CPU XPOS (see backend::Xpos): rows of interleaved pairs, walked with the row Dims along which
// the positions do not change innermost, so a row whose (r, m) equals the previous row's (a
// query's heads) reuses its cos / sin / scale table. Tables are f64, computed per pair.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/float_types.h"
#include "cpu/strided.h"

namespace dimx::cpu {

namespace {

// A thread's last table, tagged with the call it belongs to.
struct Table {
  uint64_t call = 0;
  double r = 0, m = 0;
  std::vector<double> c, s;  // s cos(theta), s sin(theta) (sign of the inverse applied)
};

std::atomic<uint64_t> g_calls{0};

template <class S>
void rotate(const backend::Xpos& a, const std::vector<double>& log_zeta, const std::vector<double>& inv_freq) {
  using T = ComputeOf<S>;
  const int64_t P = a.pairs;
  const uint64_t call = ++g_calls;
  const double scale = (a.downscale ? -1.0 : 1.0) / a.scale_base;
  const double sign = a.inverse ? -1.0 : 1.0;

  // Row Dims along which r and m stay fixed go innermost (stable otherwise).
  const size_t nd = a.shape.size();
  std::vector<size_t> order(nd);
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_partition(order.begin(), order.end(),
                        [&](size_t d) { return a.r_strides[d] != 0 || a.m_strides[d] != 0; });
  Shape shape;
  std::array<Strides, 4> st;
  for (size_t d : order) {
    shape.push_back(a.shape[d]);
    st[0].push_back(a.x_strides[d] * int64_t(sizeof(S)));
    st[1].push_back(a.y_strides[d] * int64_t(sizeof(S)));
    st[2].push_back(a.r_strides[d] * int64_t(sizeof(double)));
    st[3].push_back(a.m_strides[d] * int64_t(sizeof(double)));
  }
  std::array<char*, 4> base{static_cast<char*>(const_cast<void*>(a.x)), static_cast<char*>(a.y),
                            reinterpret_cast<char*>(const_cast<double*>(a.r)),
                            reinterpret_cast<char*>(const_cast<double*>(a.m))};
  const int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, 2 * P));
  for_each_strided<4>(shape, st, base, grain, [&](const std::array<char*, 4>& p, int64_t n, const std::array<int64_t, 4>& s) {
    thread_local Table t;
    for (int64_t k = 0; k < n; ++k) {
      const double r = *reinterpret_cast<const double*>(p[2] + k * s[2]);
      const double m = *reinterpret_cast<const double*>(p[3] + k * s[3]);
      if (t.call != call || t.r != r || t.m != m || int64_t(t.c.size()) != P) {
        t.call = call;
        t.r = r;
        t.m = m;
        t.c.resize(size_t(P));
        t.s.resize(size_t(P));
        const double mm = m * scale;
        for (int64_t i = 0; i < P; ++i) {
          const double sc = std::exp(mm * log_zeta[size_t(i)]), theta = r * inv_freq[size_t(i)];
          t.c[size_t(i)] = std::cos(theta) * sc;
          t.s[size_t(i)] = sign * (std::sin(theta) * sc);
        }
      }
      const S* x = reinterpret_cast<const S*>(p[0] + k * s[0]);
      S* y = reinterpret_cast<S*>(p[1] + k * s[1]);
      for (int64_t i = 0; i < P; ++i) {
        const T c = T(t.c[size_t(i)]), d = T(t.s[size_t(i)]);
        const T xe = widen(x[2 * i]), xo = widen(x[2 * i + 1]);
        y[2 * i] = narrow<S>(xe * c - xo * d);
        y[2 * i + 1] = narrow<S>(xo * c + xe * d);
      }
    }
  });
}

}  // namespace

void CpuBackend::xpos(DType dt, const backend::Xpos& a) {
  const int64_t P = a.pairs;
  if (P == 0) return;
  // log zeta_i (the table, or the closed form) and the inverse frequencies 10000^(-i / P).
  std::vector<double> log_zeta(static_cast<size_t>(P)), inv_freq(static_cast<size_t>(P));
  const double D = 2.0 * double(P);
  for (int64_t i = 0; i < P; ++i) {
    log_zeta[size_t(i)] = a.log_zeta ? a.log_zeta[i] : std::log((2.0 * double(i) + 0.4 * D) * (1.0 / (1.4 * D)));
    inv_freq[size_t(i)] = std::exp(double(i) * (-std::log(10000.0) / double(P)));
  }
  dispatch_floating(dt, "xpos", [&](auto tag) { rotate<decltype(tag)>(a, log_zeta, inv_freq); });
}

}  // namespace dimx::cpu

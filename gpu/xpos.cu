// XPOS (see backend::Xpos in src/backend.h): a thread per (row, pair) computes the pair's angle
// and scale from the row's positions in f64 and rotates the pair; rows are strided (Meta<4>:
// x, y, r, m), the pairs of a row contiguous, so adjacent threads read adjacent pairs.
#include <dimx/error.h>

#include <cmath>

#include "common.cuh"
#include "float_types.cuh"

namespace dimx::gpu {

namespace {

struct XposParams {
  int64_t pairs;
  double m_scale;    // +-1 / scale_base
  double sign;       // -1 for the inverse rotation
  double freq_step;  // -log(10000) / pairs: inv_freq_i = exp(i freq_step)
};

// inner rows (the innermost row axis where the positions broadcast over it, e.g. heads) share
// one pair's angle and scale: the thread rotates the pair in each of them (x and y steps
// x_inner, y_inner), so the transcendental functions run once per position, not per head.
template <class S>
__global__ void xpos_kernel(Meta<4> m, XposParams p, int64_t inner, int64_t x_inner, int64_t y_inner, const S* x,
                            S* y, const double* r, const double* pm, const double* log_zeta) {
  using C = ComputeOf<S>;
  const int64_t P = p.pairs, total = m.n * P;
  const double D = 2.0 * double(P);
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / P, i = idx - row * P;
    int64_t off[4];
    offsets(m, row, off);
    const double lz = log_zeta ? log_zeta[i] : ::log((2.0 * double(i) + 0.4 * D) * (1.0 / (1.4 * D)));
    const double sc = ::exp(pm[off[3]] * p.m_scale * lz);
    const double theta = r[off[2]] * ::exp(double(i) * p.freq_step);
    double sn, cs;
    ::sincos(theta, &sn, &cs);
    const C c = C(cs * sc), d = C(p.sign * (sn * sc));
    for (int64_t h = 0; h < inner; ++h) {
      const S* xp = x + off[0] + h * x_inner + 2 * i;
      S* yp = y + off[1] + h * y_inner + 2 * i;
      const C xe = widen(xp[0]), xo = widen(xp[1]);
      yp[0] = narrow<S>(xe * c - xo * d);
      yp[1] = narrow<S>(xo * c + xe * d);
    }
  }
}
}  // namespace

void launch_xpos(DType dt, const Meta<4>& m, const XposLaunch& a, cudaStream_t s) {
  if (m.n * a.pairs == 0) return;
  const XposParams p{a.pairs, (a.downscale ? -1.0 : 1.0) / a.scale_base, a.inverse ? -1.0 : 1.0,
                     -std::log(10000.0) / double(a.pairs)};
  // The innermost row axis moves into the thread where the positions broadcast over it.
  Meta<4> outer = m;
  int64_t inner = 1, x_inner = 0, y_inner = 0;
  if (m.nd >= 2 && m.strides[2][m.nd - 1] == 0 && m.strides[3][m.nd - 1] == 0) {
    inner = m.shape[m.nd - 1];
    x_inner = m.strides[0][m.nd - 1];
    y_inner = m.strides[1][m.nd - 1];
    outer.nd = m.nd - 1;
    outer.n = m.n / inner;
  }
  dispatch_floating(dt, "xpos", [&](auto tag) {
    using S = decltype(tag);
    xpos_kernel<S><<<blocks_for(outer.n * a.pairs), 256, 0, s>>>(outer, p, inner, x_inner, y_inner,
                                                                  static_cast<const S*>(a.x), static_cast<S*>(a.y),
                                                                  a.r, a.m, a.log_zeta);
  });
  check_launch("xpos");
}

}  // namespace dimx::gpu

#pragma once
// The element update of the fused optimizer step (backend::OptimStep), shared by the CPU loop
// and the CUDA kernel: plain arithmetic on one element, in the element type T.
#include <cmath>

#if defined(__CUDACC__)
#define DIMX_HD __host__ __device__ __forceinline__
#else
#define DIMX_HD inline
#endif

namespace dimx::optim_math {

// Scalars of one tensor's update, converted to T once.
template <class T>
struct Coeffs {
  // sign: -1 to maximize. decay: 1 - lr * weight_decay for decoupled (AdamW) decay, else 1;
  // coupled_decay: weight_decay added to the gradient (SGD, Adam), else 0. Written as
  // arithmetic rather than flags so that the loops have no branches and vectorize.
  T lr, sign, coupled_decay, momentum, damp, beta1, beta2, one_m_beta1, one_m_beta2, eps, step_size, sqrt_bc2, decay;
  bool nesterov, amsgrad, first;
};

// SGD: p, and the momentum buffer b (null without momentum).
template <class T>
DIMX_HD void sgd(const Coeffs<T>& c, T& p, T g, T* b) {
  T d = c.sign * g + c.coupled_decay * p;
  if (b) {
    *b = c.first ? d : c.momentum * *b + c.damp * d;
    d = c.nesterov ? d + c.momentum * *b : *b;
  }
  p -= c.lr * d;
}

// Adam / AdamW: p, exp_avg m, exp_avg_sq v, and max_exp_avg_sq vm (amsgrad only).
template <class T>
DIMX_HD void adam(const Coeffs<T>& c, T& p, T g, T& m, T& v, T* vm) {
  p *= c.decay;
  g = c.sign * g + c.coupled_decay * p;
  m = c.beta1 * m + c.one_m_beta1 * g;
  v = c.beta2 * v + (c.one_m_beta2 * g) * g;
  T vv = v;
  if (c.amsgrad) {
    *vm = *vm > v ? *vm : v;
    vv = *vm;
  }
  using std::sqrt;
  p += -c.step_size * m / (sqrt(vv) / c.sqrt_bc2 + c.eps);
}

}  // namespace dimx::optim_math

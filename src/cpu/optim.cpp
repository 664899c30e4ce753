// The fused optimizer step on the CPU: every tensor of the step in one pass each, elements
// split over the thread pool.
#include "cpu/cpu_backend.h"
#include "cpu/parallel.h"
#include "optim_coeffs.h"

namespace dimx::cpu {

namespace {

template <class T, bool Momentum>
void sgd_loop(optim_math::Coeffs<T> c, T* __restrict p, const T* __restrict g, T* __restrict b, int64_t lo,
              int64_t hi) {
  if constexpr (Momentum) {
    for (int64_t i = lo; i < hi; ++i) optim_math::sgd(c, p[i], g[i], b + i);
  } else {
    for (int64_t i = lo; i < hi; ++i) optim_math::sgd(c, p[i], g[i], static_cast<T*>(nullptr));
  }
}

template <class T, bool Amsgrad>
void adam_loop(optim_math::Coeffs<T> c, T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v,
               T* __restrict vm, int64_t lo, int64_t hi) {
  c.amsgrad = Amsgrad;
  if constexpr (Amsgrad) {
    for (int64_t i = lo; i < hi; ++i) optim_math::adam(c, p[i], g[i], m[i], v[i], vm + i);
  } else {
    for (int64_t i = lo; i < hi; ++i) optim_math::adam(c, p[i], g[i], m[i], v[i], static_cast<T*>(nullptr));
  }
}

template <class T>
void step_impl(const backend::OptimStep& a) {
  for (const backend::OptimStep::Item& it : a.items) {
    const optim_math::Coeffs<T> c = optim_coeffs<T>(a, it);
    T* p = static_cast<T*>(it.param);
    const T* g = static_cast<const T*>(it.grad);
    T* b0 = static_cast<T*>(it.buf[0]);
    T* b1 = static_cast<T*>(it.buf[1]);
    T* b2 = static_cast<T*>(it.buf[2]);
    const bool adam = a.kind == backend::OptimStep::Kind::adam;
    // The flags are loop-invariant: each combination gets its own branch-free loop, which the
    // compiler vectorizes.
    parallel_for(it.n, 1 << 14, [&](int64_t lo, int64_t hi) {
      if (adam) {
        if (b2) adam_loop<T, true>(c, p, g, b0, b1, b2, lo, hi);
        else adam_loop<T, false>(c, p, g, b0, b1, b2, lo, hi);
      } else {
        if (b0) sgd_loop<T, true>(c, p, g, b0, lo, hi);
        else sgd_loop<T, false>(c, p, g, b0, lo, hi);
      }
    });
  }
}

}  // namespace

void CpuBackend::optim_step(DType dt, const backend::OptimStep& a) {
  if (dt == DType::f32) return step_impl<float>(a);
  if (dt == DType::f64) return step_impl<double>(a);
  throw Error(std::string("optimizer step: the fused update needs f32 or f64, got ") + dtype_name(dt));
}

}  // namespace dimx::cpu

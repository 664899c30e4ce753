// The fused optimizer step on the CPU: every tensor of the step in one pass each, elements
// split over the thread pool.
#include "cpu/cpu_backend.h"
#include "cpu/parallel.h"
#include "optim_coeffs.h"

namespace dimx::cpu {

namespace {

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
    parallel_for(it.n, 1 << 14, [&](int64_t lo, int64_t hi) {
      if (adam) {
        for (int64_t i = lo; i < hi; ++i) optim_math::adam(c, p[i], g[i], b0[i], b1[i], b2 ? b2 + i : nullptr);
      } else {
        for (int64_t i = lo; i < hi; ++i) optim_math::sgd(c, p[i], g[i], b0 ? b0 + i : nullptr);
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

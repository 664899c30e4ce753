#pragma once
// The per-tensor coefficients of a fused optimizer step (backend::OptimStep), for both backends.
#include <cmath>

#include "backend.h"
#include "optim_math.h"

namespace dimx {

template <class T>
optim_math::Coeffs<T> optim_coeffs(const backend::OptimStep& a, const backend::OptimStep::Item& it) {
  optim_math::Coeffs<T> c{};
  c.lr = T(a.lr);
  c.sign = a.maximize ? T(-1) : T(1);
  c.coupled_decay = a.decoupled ? T(0) : T(a.weight_decay);
  c.momentum = T(a.momentum);
  c.damp = T(1 - a.dampening);
  c.nesterov = a.nesterov;
  c.first = it.first;
  c.beta1 = T(a.beta1);
  c.beta2 = T(a.beta2);
  c.one_m_beta1 = T(1 - a.beta1);
  c.one_m_beta2 = T(1 - a.beta2);
  c.eps = T(a.eps);
  c.amsgrad = a.amsgrad;
  c.decay = a.decoupled ? T(1 - a.lr * a.weight_decay) : T(1);
  c.step_size = it.bc1 > 0 ? T(a.lr / it.bc1) : T(0);
  c.sqrt_bc2 = T(std::sqrt(it.bc2));
  return c;
}

}  // namespace dimx

#pragma once
/// \file
/// Activations, as in torch.nn.functional (elementwise; any Dims, layout kept):
///   relu(x)     max(x, 0)
///   gelu(x)     x * Phi(x), the exact (erf) form, PyTorch's default approximate='none'
///   silu(x)     x * sigmoid(x); swish is the same function
///   sigmoid(x)  1 / (1 + exp(-x))
///   tanh(x)
///   softplus(x) log(1 + exp(x)), computed stably (beta = 1)
/// They are the dimx ops of elementwise.h, re-exported here; all are differentiable.
#include <dimx/elementwise.h>

namespace dimx::nn {

using dimx::gelu;
using dimx::relu;
using dimx::sigmoid;
using dimx::silu;
using dimx::softplus;
using dimx::tanh;

/// Swish: the same function as silu, x * sigmoid(x).
inline Tensor swish(const Tensor& x) { return dimx::silu(x); }

}  // namespace dimx::nn

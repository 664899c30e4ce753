#pragma once
/// \file
/// Reverse-mode autograd, recorded eagerly as ops run (PyTorch style).
///
/// Mark leaves with `x.with_requires_grad()`; every differentiable op on a tensor that requires
/// grad records how to propagate gradients back to its inputs. `backward(loss)` accumulates
/// d loss / d leaf into each leaf's `grad()`; `grad(loss, inputs)` returns the gradients
/// without touching any leaf. Gradients are written with dimx ops, so they run on whatever
/// device the tensors live on. An input that lacks Dims of the output (broadcasting) gets its
/// gradient summed over those Dims.
#include <dimx/tensor.h>

#include <vector>

namespace dimx {

/// Accumulates into the grad() of every leaf that `output` depends on. `grad_output`
/// defaults to ones for a one-element output; otherwise it must be given (same Dims).
void backward(const Tensor& output, const Tensor& grad_output = {});

/// d output / d inputs, one per input (in the input's Dims). An input the output does not
/// depend on gets an undefined Tensor if allow_unused, else an error.
std::vector<Tensor> grad(const Tensor& output, const std::vector<Tensor>& inputs, const Tensor& grad_output = {},
                         bool allow_unused = false);

/// Whether ops record gradients on this thread (see NoGradGuard and EnableGradGuard).
bool grad_enabled();

/// Disables recording in its scope (per thread), e.g. for evaluation or optimizer updates.
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

/// Enables recording in its scope (per thread), inside an outer NoGradGuard.
class EnableGradGuard {
 public:
  EnableGradGuard();
  ~EnableGradGuard();
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool prev_;
};

}  // namespace dimx

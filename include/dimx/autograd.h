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

#include <cstdint>
#include <functional>
#include <vector>

namespace dimx {

/// Accumulates into the grad() of every leaf that `output` depends on. `grad_output`
/// defaults to ones for a one-element output; otherwise it must be given (same Dims).
void backward(const Tensor& output, const Tensor& grad_output = {});

/// d output / d inputs, one per input (in the input's Dims). An input the output does not
/// depend on gets an undefined Tensor if allow_unused, else an error.
std::vector<Tensor> grad(const Tensor& output, const std::vector<Tensor>& inputs, const Tensor& grad_output = {},
                         bool allow_unused = false);

/// Unregisters a hook when destroyed (or by remove()); movable, not copyable. An empty handle
/// (default-constructed or moved from) does nothing.
class HookHandle {
 public:
  HookHandle() = default;
  /// Holds `remove`, called once by remove() or the destructor.
  explicit HookHandle(std::function<void()> remove) : remove_(std::move(remove)) {}
  ~HookHandle() { remove(); }
  /// Takes over o's hook (o becomes empty).
  HookHandle(HookHandle&& o) noexcept : remove_(std::move(o.remove_)) { o.remove_ = nullptr; }
  /// Removes this handle's hook, then takes over o's.
  HookHandle& operator=(HookHandle&& o) noexcept {
    if (this != &o) {
      remove();
      remove_ = std::move(o.remove_);
      o.remove_ = nullptr;
    }
    return *this;
  }
  HookHandle(const HookHandle&) = delete;
  HookHandle& operator=(const HookHandle&) = delete;
  /// Unregisters the hook now (idempotent).
  void remove() {
    if (remove_) {
      auto r = std::move(remove_);
      remove_ = nullptr;
      r();
    }
  }

 private:
  std::function<void()> remove_;
};

/// Registers `fn` on the leaf `leaf` (a tensor that requires grad and has no grad_fn, such as a
/// parameter): backward() calls fn(leaf.grad()) once per pass, as soon as every gradient of
/// that pass has been accumulated into the leaf (before the rest of the graph has run), and only
/// in a pass that reaches the leaf. grad() never calls it. Every handle copy of the leaf shares
/// its hooks. Hooks run on the thread of backward(), in registration order, with recording off;
/// an exception from a hook ends backward() with it. Throws dimx::Error
/// ("register_grad_ready_hook: ...") for an undefined tensor, one that does not require grad
/// or one that is not a leaf.
HookHandle register_grad_ready_hook(const Tensor& leaf, std::function<void(const Tensor& grad)> fn);

/// Registers `fn`, called at the end of every backward() in this process (after every leaf's
/// gradient is accumulated and its grad-ready hooks ran), on the thread of that backward(), in
/// registration order. For work that must finish before the gradients are used, such as
/// waiting for their communication (dist::DataParallel).
HookHandle register_backward_end_hook(std::function<void()> fn);

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

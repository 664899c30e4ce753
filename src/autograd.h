#pragma once
// Internal autograd machinery: the graph node each differentiable op records.
#include <dimx/autograd.h>

#include <functional>
#include <memory>
#include <mutex>

#include "tensor_impl.h"

namespace dimx {

// d loss / d input for each recorded input, given d loss / d output (undefined: no gradient).
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad)>;

// Optional, for a node of one input: adds that input's gradient, given d loss / d output, into
// `acc` (the input's gradient so far from its other consumers; undefined if none). The engine
// calls it instead of BackwardFn where the input is not a leaf, so that the slices of one
// tensor write their gradients into one buffer instead of each into a zero tensor of its own.
using AccumulateFn = std::function<void(const Tensor& grad, Tensor& acc)>;

struct Node {
  const char* name;
  std::vector<Tensor> inputs;  // as passed to the op; those that require grad get a gradient
  BackwardFn backward;
  AccumulateFn accumulate_into;  // may be empty
  // Frees the graph below iteratively: a chain of any length (a running sum kept across a
  // long training loop) never recurses through the destructors.
  ~Node();
};

struct AutogradMeta {
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;  // null for leaves
  mutable std::mutex mu;
  Tensor grad;  // leaves: accumulated by backward()
  // Leaves: register_grad_ready_hook's callbacks, by registration id (guarded by mu).
  std::vector<std::pair<uint64_t, std::function<void(const Tensor&)>>> grad_ready_hooks;
};

// True if recording is on and any of `inputs` requires grad.
bool needs_grad(std::initializer_list<const Tensor*> inputs);
// Returns `out` with a node that propagates to `inputs` through `fn` when recording applies.
Tensor record(const char* name, const Tensor& out, std::vector<Tensor> inputs, BackwardFn fn,
              AccumulateFn accumulate_into = {});

// True if no other tensor or view shares t's representation or storage: writing into it in
// place is seen by nobody else (an accumulated gradient the engine holds alone).
bool exclusively_owned(const Tensor& t);

// g summed over the Dims `like` lacks (the gradient of a broadcast).
Tensor sum_to(const Tensor& g, const Tensor& like);

}  // namespace dimx

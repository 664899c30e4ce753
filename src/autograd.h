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

struct Node {
  const char* name;
  std::vector<Tensor> inputs;  // as passed to the op; those that require grad get a gradient
  BackwardFn backward;
  // Frees the graph below iteratively: a chain of any length (a running sum kept across a
  // long training loop) never recurses through the destructors.
  ~Node();
};

struct AutogradMeta {
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;  // null for leaves
  mutable std::mutex mu;
  Tensor grad;  // leaves: accumulated by backward()
};

// True if recording is on and any of `inputs` requires grad.
bool needs_grad(std::initializer_list<const Tensor*> inputs);
// Returns `out` with a node that propagates to `inputs` through `fn` when recording applies.
Tensor record(const char* name, const Tensor& out, std::vector<Tensor> inputs, BackwardFn fn);

// g summed over the Dims `like` lacks (the gradient of a broadcast).
Tensor sum_to(const Tensor& g, const Tensor& like);

}  // namespace dimx

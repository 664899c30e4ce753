#pragma once
// The gradient of softmax / log_softmax from its output, on the device's fused primitive;
// shared by softmax's own backward and the backwards that recompute attention weights.
#include <dimx/tensor.h>

namespace dimx {

// d/dx of softmax (log: log_softmax) along `axis` given its output y and the gradient g of y:
// y (g - sum(g y)), or g - exp(y) sum(g). With use_mask and a dynamic axis the sums cover the
// valid frames and the padding gets 0. The result has y's Dims.
Tensor softmax_backward(bool log, const Tensor& y, const Tensor& g, const Dim& axis, bool use_mask);

}  // namespace dimx

#pragma once
// Lowering helper for ops along some Dims: views x as a contiguous [A, N, B] block with the
// op's Dims in the middle, copying only when they are not already consecutive and contiguous.
#include "tensor_impl.h"

namespace dimx {

struct Block {
  Tensor x;          // contiguous, dims = before + mid + after
  Dims before, mid, after;
  int64_t A = 1, N = 1, B = 1;
  Dims outer() const;  // before + after
};

Block as_block(const Tensor& x, const Dims& mid);

// Valid lengths of dynamic `d` for every [A, B] position of `b`, as a contiguous i64 tensor
// (x must already include the Dims of d's lengths).
Tensor block_lengths(const Block& b, const Dim& d);

}  // namespace dimx

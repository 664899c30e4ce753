#pragma once
// Lowering helper for ops along some Dims: views x as a contiguous [A, N, B] block with the
// op's Dims in the middle, copying only when they are not already consecutive and contiguous.
#include "tensor_impl.h"

namespace dimx {

struct Block {
  Tensor x;             // contiguous: the outer Dims before the op's, the op's, the outer ones after
  size_t before = 0;    // how many of x's Dims come before the op's
  size_t mid = 0;       // how many are the op's
  int64_t A = 1, N = 1, B = 1;
  Dims outer() const;   // x's Dims but the op's
};

Block as_block(const Tensor& x, const Dims& mid);
/// The same for one Dim.
Block as_block(const Tensor& x, const Dim& axis);

// Valid lengths of dynamic `d` for every [A, B] position of `b`, as a contiguous i64 tensor
// (x must already include the Dims of d's lengths).
Tensor block_lengths(const Block& b, const Dim& d);

}  // namespace dimx

#pragma once
// How bf16 and f16 compute: an op whose kernels have no half type checks its operands as they
// are, then widens the half ones to f32, runs itself in f32 and rounds the result once to the
// operands' dtype ("compute in f32, round once on output"):
//
//   if (is_half(x.dtype())) return round_to(op(widen_half(x)), x.dtype());
//
// The casts are ordinary recorded astype() calls, so autograd needs nothing more: the output's
// gradient reaches the f32 op through the outer cast (widened), the op's backward runs in f32,
// and each operand's gradient is rounded to the operand's dtype by the inner cast. (The
// elementwise ops and where have half kernels of their own on both backends and use this only
// for their backward and for scalar operands that are no half number.)
#include "tensor_impl.h"

namespace dimx {

// t widened to f32 where it is bf16 or f16; t itself otherwise (undefined stays undefined).
inline Tensor widen_half(const Tensor& t) { return t.defined() && is_half(t.dtype()) ? t.astype(DType::f32) : t; }

// y, computed in f32 for operands of dtype `dt`, rounded to dt where dt is bf16 or f16. Results
// that are not f32 (the bool of a comparison, the i64 of an argmax) stay as they are.
inline Tensor round_to(const Tensor& y, DType dt) {
  return is_half(dt) && y.defined() && y.dtype() == DType::f32 ? y.astype(dt) : y;
}

}  // namespace dimx

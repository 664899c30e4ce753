#pragma once
/// \file
/// Softmax over one Dim, masked over its padding: padded frames get 0 (softmax) or -inf
/// (log_softmax); a row with no valid frame gives all 0 / all -inf, never NaN. If the
/// axis's lengths live on Dims x lacks, the result gains them. Output keeps x's layout.
#include <dimx/tensor.h>

namespace dimx {

/// exp(x) normalized to sum 1 along `axis`; use_mask=false treats padded frames as valid.
Tensor softmax(const Tensor& x, const Dim& axis, bool use_mask = true);
/// log(softmax(x, axis)); use_mask=false treats padded frames as valid.
Tensor log_softmax(const Tensor& x, const Dim& axis, bool use_mask = true);

}  // namespace dimx

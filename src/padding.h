#pragma once
// The padding rule, in one place: the content of padded frames (beyond a dynamic Dim's
// lengths) never reaches a valid result, in the forward or the backward. Wherever a padded
// Dim is contracted or summed away, padded frames are selected out (`where`), never
// multiplied by zero, so NaN, inf or 1e30 in them stays there.
#include "tensor_impl.h"

namespace dimx {

// t with the padded frames of dynamic `d` set to 0 (a recorded `where`; t itself if d has no
// padding). When d's lengths live on Dims t lacks (a causal key Dim indexed by the query),
// a frame counts as padding only if it is padding for every one of them, so t is never
// broadcast: frames some query can see are data.
Tensor zero_padding(const Tensor& t, const Dim& d);

// The sum of g over `dims`, leaving out the padded frames of each dynamic Dim whose lengths'
// Dims g has (the gradient of a broadcast: padded frames contribute nothing to a tensor
// that lacks their Dim).
Tensor sum_over(const Tensor& g, const Dims& dims);

}  // namespace dimx

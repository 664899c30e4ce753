#pragma once
// The padding rule, in one place: the content of padded frames (beyond a dynamic Dim's
// lengths) never reaches a valid result, in the forward or the backward. Wherever a padded
// Dim is contracted or summed away, padded frames are selected out (`where`), never
// multiplied by zero, so NaN, inf or 1e30 in them stays there.
#include <functional>
#include <string>

#include "tensor_impl.h"

namespace dimx {

// t with the padded frames of dynamic `d` set to 0 (a recorded `where`; t itself if d has no
// padding). When d's lengths live on Dims t lacks (a causal key Dim indexed by the query),
// a frame counts as padding only if it is padding for every one of them, so t is never
// broadcast: frames some query can see are data.
Tensor zero_padding(const Tensor& t, const Dim& d);

// The bool mask of dynamic `d`'s valid frames (frame < length) over d and its lengths' Dims,
// on `device`; computed once per Dim and device (a read-only tensor).
Tensor valid_frames(const Dim& d, Device device);

// A tensor made from dynamic `d`'s lengths (with whatever else `key` names: the ids of the
// other Dims it is laid out over, its purpose) on `device`: made by `make` once, without
// gradient tracking, and kept with d and its copies, as its lengths are on a device; later
// calls with the same key return it. Callers must not write to it.
Tensor derived_from_lengths(const Dim& d, Device device, const std::string& key, const std::function<Tensor()>& make);

// The padded Dims of x that stay when `dims` are summed away but whose lengths live on some
// of `dims` (time, with lengths over batch, when summing over batch): a reduction or
// contraction over `dims` must leave their padded frames out too.
Dims padded_across(const Tensor& x, const Dims& dims);

// The sum of g over `dims`, leaving out padded frames (the gradient of a broadcast: padded
// frames contribute nothing to a tensor that lacks their Dim, or their sequence).
Tensor sum_over(const Tensor& g, const Dims& dims);

}  // namespace dimx

#pragma once
/// \file
/// Shape ops by Dim. Ops that create a Dim return it (or take it as `out_dim`) so callers keep
/// the identity; where a new Dim's size follows from others it is made by cached Dim
/// arithmetic (concat of a and b gives `a + b`, padding gives `left + d + right`).
#include <dimx/tensor.h>

#include <optional>
#include <utility>

namespace dimx {

/// Split `axis` into `dims` (static, product == axis extent), row-major: first of `dims` outermost.
Tensor split_dims(const Tensor& x, const Dim& axis, const Dims& dims);
/// Merge static `dims` into one Dim, row-major in the given order (first outermost).
std::pair<Tensor, Dim> merge_dims(const Tensor& x, const Dims& dims, std::optional<Dim> out_dim = {});
/// Rename `in_dim` to `out_dim` (default: in_dim.copy()); extents must match.
std::pair<Tensor, Dim> replace_dim(const Tensor& x, const Dim& in_dim, std::optional<Dim> out_dim = {});

/// Concatenate along per-part Dims. With dynamic Dims each sequence's valid frames are packed
/// back to back (part 1's frames, then part 2's, ...). Other Dims are broadcast to their union.
std::pair<Tensor, Dim> concat(const std::vector<std::pair<Tensor, Dim>>& parts,
                              std::optional<Dim> out_dim = {});
/// Constant padding (left, right) per axis; for a dynamic axis the right padding follows each
/// sequence's true end. Returns the new Dims (left + d + right).
std::pair<Tensor, Dims> pad(const Tensor& x, const Dims& axes,
                            const std::vector<std::pair<int64_t, int64_t>>& padding,
                            double value = 0);
/// Frames start, start+step, ... < end (default end: the Dim's extent, or each sequence's
/// length for a dynamic Dim, whose new lengths follow). Zero-copy.
std::pair<Tensor, Dim> slice(const Tensor& x, const Dim& axis, int64_t start,
                             std::optional<int64_t> end = {}, int64_t step = 1,
                             std::optional<Dim> out_dim = {});
/// out[..., i...] = x[..., indices[i...], ...] along `axis` (default: indices.sparse_dim()).
/// Dims of `indices` that x also has are batch Dims (gathered entry-wise). Out-of-range
/// indices throw, unless clip_to_valid clamps them into [0, extent). Indices in padded frames
/// of a dynamic Dim of `indices` (not shared with x) are padding: never read or checked, their
/// output frames are unspecified and send no gradient back.
Tensor gather(const Tensor& x, const Tensor& indices, std::optional<Dim> axis = {},
              bool clip_to_valid = false);
/// Frame `index` of every sequence along `axis` (the axis Dropped): x[..., index, ...] where
/// index < the sequence's length, 0 where the sequence is shorter (never its padding). The
/// batched form takes an integer tensor of indices over batch Dims of x (e.g. lengths - 1 for
/// each sequence's last frame); an index outside [0, length) gives 0. Differentiable in x.
Tensor frame(const Tensor& x, const Dim& axis, int64_t index);
/// The batched form of frame(): `indices` is an integer tensor over batch Dims of x.
Tensor frame(const Tensor& x, const Dim& axis, const Tensor& indices);
/// Sliding windows: out[t, w] = x[t + w - window_left] (0 outside the valid frames of axis).
/// window_left defaults to (size - 1) / 2 ("same"); size - 1 gives a causal window.
std::pair<Tensor, Dim> window(const Tensor& x, const Dim& axis, int64_t size,
                              std::optional<int64_t> window_left = {},
                              std::optional<Dim> window_dim = {});
/// out[t] = x[t - amount] (pad_value for t < amount); the Dim is kept.
Tensor shift_right(const Tensor& x, const Dim& axis, int64_t amount = 1, double pad_value = 0);
/// Inclusive prefix sum along axis (padded frames contribute 0).
Tensor cumsum(const Tensor& x, const Dim& axis);

/// [0, 1, ..., extent-1] over `dim`, with sparse_dim = dim.
Tensor range_over_dim(const Dim& dim, DType dtype = DType::i32, Device device = Device::cpu());
/// True on valid frames: over each dynamic Dim of `dims` plus its lengths' Dims; static Dims
/// add nothing (all valid); with no dynamic Dim the result is a scalar true. Each Dim's mask is
/// computed once per device and kept with the Dim, read-only as Dim::lengths().
Tensor sequence_mask(const Dims& dims, Device device = Device::cpu());
/// x with padded frames of the dynamic Dims among `dims` set to `value`.
Tensor copy_masked(const Tensor& x, const Dims& dims, double value = 0);
/// x broadcast along a new Dim (a zero-copy view).
Tensor expand_dim(const Tensor& x, const Dim& dim);
/// Drop `axis`, whose extent must be 1.
Tensor squeeze(const Tensor& x, const Dim& axis);

}  // namespace dimx

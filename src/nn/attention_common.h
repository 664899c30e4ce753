#pragma once
// Helpers shared by the attention modules.
#include <dimx/nn/linear.h>

#include <array>

namespace dimx::nn {

// heads itself; throws naming `op` unless it is positive (before any Dim is made of it).
int64_t positive_heads(const char* op, int64_t heads);
// total / heads; throws naming `op` unless total is static and a multiple of heads.
int64_t size_per_head(const char* op, const char* what, const Dim& total, int64_t heads);
// Glorot-uniform fill: U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out)).
void glorot_uniform(Tensor& t, int64_t fan_in, int64_t fan_out, Generator& gen, double gain = 1);
// Glorot-normal fill: N(0, s), s = gain * sqrt(2 / (fan_in + fan_out)).
void glorot_normal(Tensor& t, int64_t fan_in, int64_t fan_out, Generator& gen, double gain = 1);
// Glorot-uniform weight, zero bias (RETURNN's Linear init in its attention modules).
void glorot_linear(Linear& l, Generator& gen);

// The keys' padding from a user's bool mask (true = pad) over {batch..., axis}: where every
// row pads only its end, lengths (`axis` becomes a new dynamic Dim, min'ed with axis's own
// lengths; tensors move to it with to_key_axis); otherwise an additive term (0 / -inf, in
// `dtype`) over the mask's Dims, and `axis` is kept.
struct KeyPadding {
  Dim axis;
  Tensor additive;  // undefined when the mask became lengths
};
KeyPadding key_padding(const char* op, const Tensor& mask, const Dim& axis, DType dtype);
// t over `from` moved to `to` (the first to.extent() frames; t itself if it lacks `from`).
Tensor to_key_axis(const Tensor& t, const Dim& from, const Dim& to);
// A tensor a user gives for the scores (an additive mask, a position bias) moved onto the
// keys' Dim: its one Dim outside `known` (the query's Dims, heads) is read as the key Dim and
// must have the keys' extent, or `full_extent` when the keys were cut to their lengths (the
// cut frames are padding). Any other Dim is an error naming `what`.
Tensor onto_keys(const char* op, const char* what, Tensor t, const Dim& keys, const Dims& known, int64_t full_extent);

// A query as frames: x {..., query_axis, embed}, or one decoding step (query_axis =
// single_step_dim(), no time Dim) as a chunk of one frame over the static `frame_axis` (so
// the modules handle both alike and squeeze frame_axis from their outputs at the end).
struct QueryFrames {
  Tensor query;
  Dim axis;
  bool step;
};
const Dim& frame_axis();
QueryFrames query_frames(const char* op, const Tensor& query, const Dim& query_axis, const Dim& embed);

// A user's key padding mask applied to the new keys k, v over `axis` (key_padding): they move
// onto the lengths' Dim, or the additive term is returned. A mask given over the query's axis
// (self-attention) is read over `axis`. With a decoding state only end padding works, and
// self-attention decoding takes the query axis's lengths instead of a mask.
struct PaddedKeys {
  Dim axis;
  Tensor additive;
};
PaddedKeys pad_keys(const char* op, const Tensor& mask, Tensor& k, Tensor& v, const Dim& axis, const Dim& query_axis,
                    DType dtype, bool decoding);
// A user's attn_mask (bool: true = -inf, or `dtype` additive) onto the keys (onto_keys).
Tensor score_mask(const char* op, const Tensor& mask, DType dtype, const Dim& keys, const Dims& known, int64_t full_extent);

// q, k, v of the fused projection h {..., heads, per_head}: per head (dk, dk, dv) frames.
std::array<Tensor, 3> split_qkv(const Tensor& h, const Dim& per_head, const Dim& dk, const Dim& dv);

}  // namespace dimx::nn

#pragma once
/// \file
/// Scaled dot-product attention by Dim (RETURNN's dot_attention).
///
///   energy  = matmul(q * scale, k, reduce = key_dim)      scale defaults to key_dim^-0.5
///           (+ bias)                                       DotAttentionOptions::bias
///   weights = softmax(energy, axis)                        padded keys (axis's lengths) get 0
///   weights = dropout(weights)                             training only; with broadcast,
///                                                          the mask is shared over all Dims but axis
///   out     = matmul(weights, v, reduce = axis)            v's Dims without axis, plus q's extra Dims
///
/// q: {..., key_dim}; k: {..., axis, key_dim}; v: {..., axis}. If q has `axis` too
/// (self-attention), k and v are moved to a fresh key Dim with the same lengths first.
/// Causal: with causal_query_dim, key j is visible to query i iff j <= i (and j is a valid
/// frame of its sequence); this is a key Dim whose lengths are indexed by the query position,
/// so causality and padding are one mask. Padded query frames give finite, unspecified values.
///
/// This is dimx::dot_attention (dimx/attention.h) with RETURNN's conventions: it makes the
/// keys' Dim (a copy of axis in self-attention, the causal key Dim), moves the bias onto it,
/// defaults the scale and applies dropout in training only. That op's lowering applies: the
/// fused primitive (bias and dropout included) where the Dims map onto it, path counters
/// (attention_path_counts()) and DIMX_STRICT_FUSED=1.
///
/// Under autocast (dimx/autocast.h) q, k, v and the bias are cast to the low dtype first; the
/// result is in the low dtype (bf16/f16 run on the GPU's tensor-core kernels with f32
/// accumulation and f32 row statistics, and on the CPU in f32).
#include <dimx/attention.h>
#include <dimx/random.h>
#include <dimx/tensor.h>

#include <optional>

namespace dimx::nn {

/// Options of dot_attention().
struct DotAttentionOptions {
  double att_dropout = 0;               ///< dropout rate on the attention weights, in [0, 1)
  bool att_dropout_broadcast = false;   ///< share the dropout mask over all Dims but the key axis
  std::optional<Dim> causal_query_dim;  ///< q's time Dim, aligned with axis frame by frame
  std::optional<double> scale;          ///< default: 1 / sqrt(key_dim.size())
  Generator* gen = nullptr;             ///< needed when att_dropout > 0 in training
  bool training = false;               ///< apply att_dropout only when true
  /// The fused primitive (no [query, key] energies in memory, forward or backward) where the
  /// Dims map onto it. Unset: as DIMX_FUSED_ATTENTION (0 / 1) says, else
  /// fused; true / false: prefer it / never (results agree within rounding).
  std::optional<bool> fused;
  /// An additive term on the energies before the softmax (a relative-position bias, an additive
  /// mask), over any of q's Dims but key_dim and the keys' Dim; it broadcasts over the Dims it
  /// lacks and is never expanded; q's dtype. Its gradient is the sum over what it broadcasts
  /// over (padded frames left out).
  std::optional<Tensor> bias;
  /// The bias's Dim over the keys: `axis` by default where q lacks axis; in self-attention (q
  /// has axis as its query Dim) a Dim of axis's extent standing for the keys.
  std::optional<Dim> bias_key_dim;
  /// A bias by relative position (dimx::RelativeBias: a table over the positions j - i of the
  /// keys relative to its query Dim), added to `bias` where both are set; the CPU's fused
  /// primitive reads the table in place, never forming {query, key}.
  std::optional<RelativeBias> relative_bias;
};

/// Scaled dot-product attention of q over k and v along `axis`, reducing `key_dim` (see the
/// file comment). Returns v's Dims without axis, plus q's extra Dims.
Tensor dot_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Dim& key_dim, const Dim& axis,
                     const DotAttentionOptions& options = {});

/// The path counters of dimx::dot_attention, which this one is.
using dimx::AttentionPathCounts;
using dimx::attention_path_counts;
using dimx::reset_attention_path_counts;

/// The key Dim of causal attention: frames of `axis`, where query i sees keys j <= i of its
/// sequence (lengths min(i + 1, len) over {query, axis's length Dims}). A new Dim per call.
Dim causal_key_dim(const Dim& query, const Dim& axis);
/// The general form: a query at absolute position p (integer `query_pos`, e.g. over {batch,
/// query}) sees keys j <= p of `axis`, capped by each sequence's length.
Dim causal_key_dim(const Tensor& query_pos, const Dim& axis);

/// Passed as `axis` to a stateful module to decode one frame: its input then has no time Dim.
/// Every sequence of the batch takes the step (its history grows by one frame).
const Dim& single_step_dim();

/// The decoding step of a batch in which some sequences have finished: a one-frame dynamic Dim
/// whose length is 1 where `active` (bool over batch Dims) is true and 0 where it is false.
/// Given as the axis of a stateful module, with the input over it (expand_dim(x, step)), it is
/// a one-frame chunk: a finished sequence's state does not change (its history does not grow,
/// an EMA or WKV state is left alone) and its output frame is padding, while the active ones
/// step exactly as with single_step_dim().
Dim decoding_step(const Tensor& active, const std::string& name = "step");

}  // namespace dimx::nn

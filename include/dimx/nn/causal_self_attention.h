#pragma once
/// \file
/// Causal multi-head self-attention with a decoding state (RETURNN's CausalSelfAttention).
///
/// Same parameters and math as SelfAttention; a frame attends to itself and to every earlier
/// frame, including the frames held in the state. The state keeps the keys and values seen so
/// far over `accum_axis`, whose lengths are each sequence's history (padded frames of a chunk
/// are never appended). One call handles all three uses:
///   - a whole sequence:           x {..., axis, in_dim}, state = default_initial_state(...)
///   - one decoding step:          x {..., in_dim}, axis = single_step_dim()
///   - a chunk continuing a state: x {..., axis, in_dim}; frame i of a sequence with h frames
///                                 of history sees h + i + 1 keys
/// and returns the output with the new state. Full sequence == step by step == chunks.
#include <dimx/nn/self_attention.h>

namespace dimx::nn {

/// The decoding state of CausalSelfAttention: the keys and values seen so far.
struct CausalSelfAttentionState {
  Tensor k_accum;  ///< {batch..., accum_axis, heads, key_dim_per_head}
  Tensor v_accum;  ///< {batch..., accum_axis, heads, value_dim_per_head}
  Dim accum_axis;  ///< lengths: the frames seen so far per sequence
};

/// Causal multi-head self-attention with a key/value history state (see the file comment).
struct CausalSelfAttention : SelfAttention {
  /// The constructors of SelfAttention (same parameters).
  using SelfAttention::SelfAttention;

  /// Empty history (length 0) for every entry of `batch_dims`.
  CausalSelfAttentionState default_initial_state(const Dims& batch_dims) const;
  /// Attention of x {..., axis, in_dim} (or {..., in_dim} with axis = single_step_dim()) over
  /// the state's history and x itself; returns the output and the state with x's frames appended.
  /// `gen` is needed for attention dropout in training.
  std::pair<Tensor, CausalSelfAttentionState> operator()(const Tensor& x, const Dim& axis,
                                                         const CausalSelfAttentionState& state,
                                                         Generator* gen = nullptr) const;
};

}  // namespace dimx::nn

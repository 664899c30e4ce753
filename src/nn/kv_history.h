#pragma once
// Appending keys and values to a causal attention state: shared by the causal attention modules.
#include <dimx/nn/causal_self_attention.h>

namespace dimx::nn {

struct KvHistory {
  CausalSelfAttentionState state;  // history plus the new frames
  Tensor query_pos;                // absolute position of each new frame (i32, {batch..., axis})
  Dim keys;                        // the key Dim to attend over: causal per query for a chunk
  Tensor k, v;                     // the state's keys and values over `keys`
};

// k {..., axis, heads, dk}, v {..., axis, heads, dv}; axis may be single_step_dim() (no time Dim).
// causal: frame i of a chunk sees the history and the chunk's frames up to i; else all of them.
KvHistory append_kv(const char* op, const CausalSelfAttentionState& state, const Tensor& k, const Tensor& v,
                    const Dim& axis, bool causal = true);

// The empty state for keys {heads, dk} and values {heads, dv}.
CausalSelfAttentionState empty_kv(const Dims& batch_dims, const Dim& heads, const Dim& dk, const Dim& dv, DType dtype,
                                  Device device);

}  // namespace dimx::nn

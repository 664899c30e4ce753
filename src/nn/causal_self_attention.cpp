#include <dimx/nn/causal_self_attention.h>

#include "kv_history.h"
#include "tensor_impl.h"

namespace dimx::nn {

CausalSelfAttentionState CausalSelfAttention::default_initial_state(const Dims& batch_dims) const {
  return empty_kv(batch_dims, heads, key_dim_per_head, value_dim_per_head, qkv.weight.dtype(), qkv.weight.device());
}

std::pair<Tensor, CausalSelfAttentionState> CausalSelfAttention::operator()(const Tensor& x, const Dim& axis,
                                                                            const CausalSelfAttentionState& state,
                                                                            Generator* gen) const {
  const char* op = "CausalSelfAttention";
  check_defined(op, x);
  check_has_dim(op, x, in_dim);
  if (axis != single_step_dim()) check_has_dim(op, x, axis);
  auto [q, k, v] = qkv_heads(x);
  KvHistory h = append_kv(op, state, k, v, axis);
  Tensor att = dot_attention(q, h.k, h.v, key_dim_per_head, h.keys, attention_options(gen));
  return {merge_heads(att), h.state};
}

}  // namespace dimx::nn

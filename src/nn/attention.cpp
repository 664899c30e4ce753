#include <dimx/attention.h>
#include <dimx/elementwise.h>
#include <dimx/nn/attention.h>
#include <dimx/shape.h>

#include <cmath>
#include <string>

#include "tensor_impl.h"

namespace dimx::nn {

Dim causal_key_dim(const Dim& query, const Dim& axis) {
  if (query.extent() != axis.extent())
    fail("causal_key_dim: query '" + query.str() + "' and axis '" + axis.str() + "' must have the same extent");
  return causal_key_dim(range_over_dim(query, DType::i32).with_sparse_dim(std::nullopt), axis);
}

Dim causal_key_dim(const Tensor& query_pos, const Dim& axis) {
  check_defined("causal_key_dim", query_pos);
  if (!is_integer(query_pos.dtype())) fail("causal_key_dim: query_pos must be an integer tensor, got " + query_pos.str());
  // len[p] = p + 1, capped by the key sequence's own length.
  Tensor lens = minimum(query_pos.astype(DType::i32).to(Device::cpu()) + 1.0, axis.lengths(), /*allow_broadcast_all=*/true);
  return Dim(lens, axis.name() + "_causal");
}

const Dim& single_step_dim() {
  static const Dim d(1, "single_step");
  return d;
}

Dim decoding_step(const Tensor& active, const std::string& name) {
  check_defined("decoding_step", active);
  if (active.dtype() != DType::boolean)
    fail("decoding_step: active must be bool (true = the sequence takes the step), got " + active.str());
  if (active.ndim() == 0) fail("decoding_step: active must be over the batch Dims, got a scalar");
  return Dim(active.astype(DType::i32).to(Device::cpu()), name);
}

Tensor dot_attention(const Tensor& q, const Tensor& k0, const Tensor& v0, const Dim& key_dim, const Dim& axis,
                     const DotAttentionOptions& o) {
  const char* op = "dot_attention";
  check_defined(op, q);
  check_defined(op, k0);
  check_defined(op, v0);
  check_has_dim(op, q, key_dim, "q");
  check_has_dim(op, k0, key_dim, "k");
  check_has_dim(op, k0, axis, "k");
  check_has_dim(op, v0, axis, "v");
  if (!(o.att_dropout >= 0 && o.att_dropout < 1))
    fail("dot_attention: att_dropout must be in [0, 1), got " + std::to_string(o.att_dropout));
  if (o.att_dropout > 0 && o.training && !o.gen) fail("dot_attention: att_dropout in training needs a Generator");
  if (key_dim.is_dynamic()) fail("dot_attention: key_dim '" + key_dim.str() + "' must be static");
  // The keys' Dim: causal (indexed by the query), or in self-attention a copy of axis.
  Tensor k = k0, v = v0;
  Dim kv_axis = axis;
  if (o.causal_query_dim) {
    check_has_dim(op, q, *o.causal_query_dim, "q");
    kv_axis = causal_key_dim(*o.causal_query_dim, axis);
  } else if (q.has_dim(axis)) {
    kv_axis = axis.copy(axis.name() + "_kv");
  }
  if (kv_axis != axis) {
    k = replace_dim(k, axis, kv_axis).first;
    v = replace_dim(v, axis, kv_axis).first;
  }
  AttentionOptions a;
  // The bias over q's Dims and the keys (axis, or bias_key_dim), moved onto the key Dim.
  if (o.bias) {
    Tensor bias = *o.bias;
    check_defined(op, bias);
    const Dim bias_key = o.bias_key_dim ? *o.bias_key_dim : axis;
    if (o.bias_key_dim) {
      check_has_dim(op, bias, bias_key, "bias");
      if (bias_key.extent() != axis.extent() || bias_key.is_dynamic())
        fail("dot_attention: bias_key_dim '" + bias_key.str() + "' must be static with the extent of axis '" +
             axis.str() + "'");
    }
    const bool keyed = bias.has_dim(bias_key) && (o.bias_key_dim || !q.has_dim(axis));
    if (keyed && bias_key != kv_axis) bias = replace_dim(bias, bias_key, kv_axis).first;
    a.bias = bias;
  }
  a.relative_bias = o.relative_bias;
  a.scale = o.scale.value_or(1.0 / std::sqrt(double(key_dim.size())));
  if (o.training) {
    a.dropout = o.att_dropout;
    a.dropout_broadcast = o.att_dropout_broadcast;
    a.gen = o.gen;
  }
  a.fused = o.fused;
  return dimx::dot_attention(q, k, v, key_dim, kv_axis, a);
}

}  // namespace dimx::nn

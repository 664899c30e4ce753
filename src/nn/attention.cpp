#include <dimx/elementwise.h>
#include <dimx/matmul.h>
#include <dimx/nn/attention.h>
#include <dimx/shape.h>
#include <dimx/softmax.h>

#include <cmath>

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
  if (o.att_dropout > 0 && o.training && !o.gen) fail("dot_attention: att_dropout in training needs a Generator");
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
  if (key_dim.is_dynamic()) fail("dot_attention: key_dim '" + key_dim.str() + "' must be static");
  const double scale = o.scale.value_or(1.0 / std::sqrt(double(key_dim.size())));
  Tensor energy = matmul(q * scale, k, key_dim);
  Tensor weights = softmax(energy, kv_axis);
  if (o.att_dropout > 0 && o.training) {
    Dims broadcast = o.att_dropout_broadcast ? minus_dims(weights.dims(), {kv_axis}) : Dims{};
    weights = dropout(weights, o.att_dropout, *o.gen, true, broadcast);
  }
  // Padded keys have weight 0 already: no second masking inside matmul.
  return matmul(weights, v, kv_axis, /*use_mask=*/false);
}

}  // namespace dimx::nn

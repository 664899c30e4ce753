#include <dimx/elementwise.h>
#include <dimx/matmul.h>
#include <dimx/nn/attention.h>
#include <dimx/shape.h>
#include <dimx/softmax.h>

#include <cmath>
#include <map>
#include <mutex>

#include "tensor_impl.h"

namespace dimx::nn {

Dim causal_key_dim(const Dim& query, const Dim& axis) {
  if (query.extent() != axis.extent())
    fail("causal_key_dim: query '" + query.str() + "' and axis '" + axis.str() + "' must have the same extent");
  static std::mutex mu;
  static std::map<std::pair<uint64_t, uint64_t>, Dim> cache;
  std::lock_guard<std::mutex> lk(mu);
  auto key = std::make_pair(query.id(), axis.id());
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  // len[i] = i + 1, capped by the key sequence's own length.
  Tensor lens = range_over_dim(query, DType::i32).with_sparse_dim(std::nullopt) + 1.0;
  lens = minimum(lens, axis.lengths(), /*allow_broadcast_all=*/true);
  Dim d(lens, axis.name() + "_causal");
  cache.emplace(key, d);
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

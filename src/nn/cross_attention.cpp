#include <dimx/elementwise.h>
#include <dimx/nn/cross_attention.h>
#include <dimx/shape.h>

#include "attention_common.h"
#include "tensor_impl.h"

namespace dimx::nn {

CrossAttention::CrossAttention(Dim enc, Dim qin, std::optional<Dim> proj_dim, Dim kt, Dim vt, int64_t num_heads,
                               Generator& gen, bool with_bias, double dropout, bool dropout_broadcast, DType dtype)
    : encoder_dim(enc),
      query_in_dim(qin),
      key_dim_total(kt),
      value_dim_total(vt),
      heads(positive_heads("CrossAttention", num_heads), "heads"),
      key_dim_per_head(size_per_head("CrossAttention", "key_dim_total", kt, num_heads), kt.name() + "_per_head"),
      value_dim_per_head(size_per_head("CrossAttention", "value_dim_total", vt, num_heads), vt.name() + "_per_head"),
      kv_dim(kt.size() + vt.size(), "kv"),
      att_dropout(dropout),
      att_dropout_broadcast(dropout_broadcast),
      query(qin, kt, gen, with_bias, dtype),
      key_value(enc, kv_dim, gen, with_bias, dtype) {
  if (proj_dim) proj.emplace(vt, *proj_dim, gen, with_bias, dtype);
  reset_parameters(gen);
}

void CrossAttention::reset_parameters(Generator& gen) {
  glorot_linear(query, gen);
  glorot_linear(key_value, gen);
}

CrossAttentionState CrossAttention::transform_encoder(const Tensor& encoder, const Dim& axis) const {
  const char* op = "CrossAttention.transform_encoder";
  check_defined(op, encoder);
  check_has_dim(op, encoder, axis, "encoder");
  check_has_dim(op, encoder, encoder_dim, "encoder");
  Tensor kv = key_value(encoder);
  const int64_t kt = key_dim_total.size();
  Tensor k = slice(kv, kv_dim, 0, kt, 1, key_dim_total).first;
  Tensor v = slice(kv, kv_dim, kt, kt + value_dim_total.size(), 1, value_dim_total).first;
  return {split_dims(k, key_dim_total, {heads, key_dim_per_head}),
          split_dims(v, value_dim_total, {heads, value_dim_per_head}), axis};
}

Tensor CrossAttention::operator()(const Tensor& x, const CrossAttentionState& enc, Generator* gen) const {
  const char* op = "CrossAttention";
  check_defined(op, x);
  check_has_dim(op, x, query_in_dim);
  check_has_dim(op, enc.k, enc.axis, "encoder k");
  check_has_dim(op, enc.v, enc.axis, "encoder v");
  if (x.has_dim(enc.axis)) fail("CrossAttention: x " + x.str() + " has the encoder axis '" + enc.axis.str() + "'");
  Tensor q = split_dims(query(x), key_dim_total, {heads, key_dim_per_head});
  DotAttentionOptions o;
  o.att_dropout = att_dropout;
  o.att_dropout_broadcast = att_dropout_broadcast;
  o.gen = gen;
  o.training = training;
  Tensor att = dot_attention(q, enc.k, enc.v, key_dim_per_head, enc.axis, o);
  Tensor out = merge_dims(att, {heads, value_dim_per_head}, value_dim_total).first;
  return proj ? (*proj)(out) : out;
}

}  // namespace dimx::nn

#include <dimx/elementwise.h>
#include <dimx/matmul.h>
#include <dimx/nn/self_attention.h>
#include <dimx/shape.h>
#include <dimx/softmax.h>

#include <cmath>

#include "attention_common.h"
#include "tensor_impl.h"

namespace dimx::nn {

SelfAttention::SelfAttention(Dim in, std::optional<Dim> proj_dim, Dim kt, Dim vt, int64_t num_heads, Generator& gen,
                             bool with_bias, double dropout, bool dropout_broadcast, DType dtype)
    : in_dim(in),
      key_dim_total(kt),
      value_dim_total(vt),
      heads(positive_heads("SelfAttention", num_heads), "heads"),
      key_dim_per_head(size_per_head("SelfAttention", "key_dim_total", kt, num_heads), kt.name() + "_per_head"),
      value_dim_per_head(size_per_head("SelfAttention", "value_dim_total", vt, num_heads), vt.name() + "_per_head"),
      qkv_dim(2 * kt.size() + vt.size(), "qkv"),
      qkv_per_head(2 * key_dim_per_head.size() + value_dim_per_head.size(), "qkv_per_head"),
      att_dropout(dropout),
      att_dropout_broadcast(dropout_broadcast),
      qkv(in, qkv_dim, gen, with_bias, dtype) {
  if (proj_dim) proj.emplace(vt, *proj_dim, gen, with_bias, dtype);
  reset_parameters(gen);
}

void SelfAttention::reset_parameters(Generator& gen) { glorot_linear(qkv, gen); }

std::array<Tensor, 3> SelfAttention::qkv_heads(const Tensor& x) const {
  return split_qkv(split_dims(qkv(x), qkv_dim, {heads, qkv_per_head}), qkv_per_head, key_dim_per_head,
                   value_dim_per_head);
}

Tensor SelfAttention::merge_heads(const Tensor& att) const {
  Tensor out = merge_dims(att, {heads, value_dim_per_head}, value_dim_total).first;
  return proj ? (*proj)(out) : out;
}

DotAttentionOptions SelfAttention::attention_options(Generator* gen) const {
  DotAttentionOptions o;
  o.att_dropout = att_dropout;
  o.att_dropout_broadcast = att_dropout_broadcast;
  o.gen = gen;
  o.training = training;
  return o;
}

Tensor SelfAttention::operator()(const Tensor& x, const Dim& axis, Generator* gen) const {
  check_defined("SelfAttention", x);
  check_has_dim("SelfAttention", x, axis);
  check_has_dim("SelfAttention", x, in_dim);
  auto [q, k, v] = qkv_heads(x);
  return merge_heads(dot_attention(q, k, v, key_dim_per_head, axis, attention_options(gen)));
}

std::pair<Tensor, Dim> SelfAttention::attention_weights(const Tensor& x, const Dim& axis, bool causal) const {
  check_defined("SelfAttention::attention_weights", x);
  check_has_dim("SelfAttention::attention_weights", x, axis);
  check_has_dim("SelfAttention::attention_weights", x, in_dim);
  auto [q, k, v] = qkv_heads(x);
  const Dim kv = axis.copy(axis.name() + "_kv");
  const Dim keys = causal ? causal_key_dim(axis, kv) : kv;
  const Tensor kk = replace_dim(replace_dim(k, axis, kv).first, kv, keys).first;
  const Tensor e = matmul(q * (1.0 / std::sqrt(double(key_dim_per_head.size()))), kk, {key_dim_per_head});
  return {softmax(e, keys), keys};
}

}  // namespace dimx::nn

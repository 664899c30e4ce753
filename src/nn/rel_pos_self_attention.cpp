#include <dimx/elementwise.h>
#include <dimx/matmul.h>
#include <dimx/nn/attention.h>
#include <dimx/nn/rel_pos_self_attention.h>
#include <dimx/shape.h>
#include <dimx/softmax.h>

#include <cmath>

#include "attention_common.h"
#include "kv_history.h"
#include "tensor_impl.h"

namespace dimx::nn {

namespace {

const char* kOp = "RelPosSelfAttention";

Dim pos_feature_dim(const RelPosSelfAttentionOptions& o, const Dim& in, const Dim& kt, const Dim& dk) {
  if (o.with_linear_pos) return in;
  return o.separate_pos_emb_per_head ? kt : dk;
}

}  // namespace

RelPosSelfAttention::RelPosSelfAttention(Dim in, std::optional<Dim> proj_dim, Dim kt, Dim vt, int64_t num_heads,
                                         Generator& gen, const RelPosSelfAttentionOptions& o)
    : in_dim(in),
      key_dim_total(kt),
      value_dim_total(vt),
      heads(positive_heads(kOp, num_heads), "heads"),
      key_dim_per_head(size_per_head(kOp, "key_dim_total", kt, num_heads), kt.name() + "_per_head"),
      value_dim_per_head(size_per_head(kOp, "value_dim_total", vt, num_heads), vt.name() + "_per_head"),
      qkv_dim(2 * kt.size() + vt.size(), "qkv"),
      qkv_per_head(2 * key_dim_per_head.size() + value_dim_per_head.size(), "qkv_per_head"),
      pos_feat_dim(pos_feature_dim(o, in, kt, key_dim_per_head)),
      options(o),
      qkv(in, qkv_dim, gen, o.with_bias, o.dtype) {
  if (proj_dim) proj.emplace(vt, *proj_dim, gen, o.with_bias, o.dtype);
  if (o.with_linear_pos) linear_pos.emplace(in, kt, gen, /*bias=*/false, o.dtype);
  if (o.with_pos_bias) {
    pos_bias_u = Tensor::zeros({heads, key_dim_per_head}, o.dtype).with_requires_grad();
    pos_bias_v = Tensor::zeros({heads, key_dim_per_head}, o.dtype).with_requires_grad();
  }
  if (o.learnable_pos_emb)
    learned_pos_emb.emplace(pos_feat_dim, gen, o.learnable_pos_emb_clipping, /*causal=*/false, o.dtype);
  else if (pos_feat_dim.size() % 2 != 0)
    fail(std::string(kOp) + ": the sinusoidal encoding needs an even feature Dim, got '" + pos_feat_dim.str() + "'");
  reset_parameters(gen);
}

void RelPosSelfAttention::reset_parameters(Generator& gen) {
  glorot_linear(qkv, gen);
  const int64_t h = heads.size(), dk = key_dim_per_head.size();
  if (pos_bias_u) glorot_uniform(*pos_bias_u, dk, h, gen);
  if (pos_bias_v) glorot_uniform(*pos_bias_v, dk, h, gen);
}

std::pair<Tensor, Tensor> RelPosSelfAttention::score_terms(const Tensor& q, const Dim& keys, const Tensor& query_pos,
                                                           const Dim& query_frames, Generator* gen) const {
  const bool train = training;
  // Encodings of positions -(Q-1) .. K-1 over `rel`.
  auto [pos, rel] = learned_pos_emb ? (*learned_pos_emb)(query_frames, keys)
                                    : relative_positional_encoding(query_frames, keys, pos_feat_dim, 0, options.dtype,
                                                                   q.device());
  if (train && options.pos_emb_dropout > 0 && gen) pos = dropout(pos, options.pos_emb_dropout, *gen, true);
  if (linear_pos) pos = (*linear_pos)(pos);
  if (pos_feat_dim != key_dim_per_head) pos = split_dims(pos, key_dim_total, {heads, key_dim_per_head});

  Tensor qu = pos_bias_u ? q + *pos_bias_u : q;
  Tensor qv = pos_bias_v ? q + *pos_bias_v : q;
  Tensor by_rel = matmul(qv, pos, key_dim_per_head);
  // The rel-shift: key j of a query at position p reads rel row j - p + (Q - 1).
  Tensor idx = sub(range_over_dim(keys, DType::i32).with_sparse_dim(std::nullopt) + double(query_frames.extent() - 1),
                   query_pos.astype(DType::i32), true);
  return {qu, gather(by_rel, idx.with_sparse_dim(rel).to(q.device()), rel)};
}

Tensor RelPosSelfAttention::weights(const Tensor& q, const Tensor& k, const Dim& keys, const Tensor& query_pos,
                                    const Dim& query_frames, Generator* gen) const {
  auto [qu, position] = score_terms(q, keys, query_pos, query_frames, gen);
  Tensor scores = (matmul(qu, k, key_dim_per_head) + position) * (1.0 / std::sqrt(double(key_dim_per_head.size())));
  return softmax(scores, keys);
}

Tensor RelPosSelfAttention::attend(const Tensor& q, const Tensor& k, const Tensor& v, const Dim& keys,
                                   const Tensor& query_pos, const Dim& query_frames, Generator* gen) const {
  if (training && (options.att_dropout > 0 || options.pos_emb_dropout > 0) && !gen)
    fail(std::string(kOp) + ": dropout in training needs a Generator");
  Tensor out;
  if (training && options.att_dropout > 0) {
    Tensor w = weights(q, k, keys, query_pos, query_frames, gen);
    Dims broadcast = options.att_dropout_broadcast ? minus_dims(w.dims(), {keys}) : Dims{};
    w = dropout(w, options.att_dropout, *gen, true, broadcast);
    out = matmul(w, v, keys);  // masks padded values (select): their content never matters
  } else {
    // The content term is dot_attention's own product (of q + u with k); the position term,
    // which depends on q, is its additive bias.
    auto [qu, position] = score_terms(q, keys, query_pos, query_frames, gen);
    const double scale = 1.0 / std::sqrt(double(key_dim_per_head.size()));
    DotAttentionOptions o;
    o.scale = scale;
    o.bias = position * scale;
    out = dot_attention(qu, k, v, key_dim_per_head, keys, o);
  }
  out = merge_dims(out, {heads, value_dim_per_head}, value_dim_total).first;
  return proj ? (*proj)(out) : out;
}

std::pair<Tensor, Dim> RelPosSelfAttention::attention_weights(const Tensor& x, const Dim& axis, bool causal) const {
  check_defined(kOp, x);
  check_has_dim(kOp, x, axis);
  check_has_dim(kOp, x, in_dim);
  auto [q, k, v] = split_qkv(split_dims(qkv(x), qkv_dim, {heads, qkv_per_head}), qkv_per_head, key_dim_per_head,
                             value_dim_per_head);
  const Dim kv = axis.copy(axis.name() + "_kv");
  const Tensor query_pos = range_over_dim(axis, DType::i32).with_sparse_dim(std::nullopt);
  const Dim keys = causal ? causal_key_dim(query_pos, kv) : kv;
  Tensor kk = replace_dim(replace_dim(k, axis, kv).first, kv, keys).first;
  return {weights(q, kk, keys, query_pos, axis, nullptr), keys};
}

Tensor RelPosSelfAttention::operator()(const Tensor& x, const Dim& axis, Generator* gen) const {
  check_defined(kOp, x);
  check_has_dim(kOp, x, axis);
  check_has_dim(kOp, x, in_dim);
  auto [q, k, v] = split_qkv(split_dims(qkv(x), qkv_dim, {heads, qkv_per_head}), qkv_per_head, key_dim_per_head,
                             value_dim_per_head);
  Dim keys = axis.copy(axis.name() + "_kv");
  Tensor query_pos = range_over_dim(axis, DType::i32).with_sparse_dim(std::nullopt);
  return attend(q, replace_dim(k, axis, keys).first, replace_dim(v, axis, keys).first, keys, query_pos, axis, gen);
}

CausalSelfAttentionState RelPosCausalSelfAttention::default_initial_state(const Dims& batch_dims) const {
  return empty_kv(batch_dims, heads, key_dim_per_head, value_dim_per_head, qkv.weight.dtype(), qkv.weight.device());
}

std::pair<Tensor, CausalSelfAttentionState> RelPosCausalSelfAttention::operator()(const Tensor& x, const Dim& axis,
                                                                                  const CausalSelfAttentionState& state,
                                                                                  Generator* gen) const {
  const char* op = "RelPosCausalSelfAttention";
  check_defined(op, x);
  check_has_dim(op, x, in_dim);
  if (axis != single_step_dim()) check_has_dim(op, x, axis);
  auto [q, k, v] = split_qkv(split_dims(qkv(x), qkv_dim, {heads, qkv_per_head}), qkv_per_head, key_dim_per_head,
                             value_dim_per_head);
  KvHistory h = append_kv(op, state, k, v, axis);
  return {attend(q, h.k, h.v, h.keys, h.query_pos, h.state.accum_axis, gen), h.state};
}

}  // namespace dimx::nn

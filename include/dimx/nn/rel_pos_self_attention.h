#pragma once
/// \file
/// Self-attention with relative positions (RETURNN's RelPosSelfAttention): Transformer-XL
/// (Dai et al. 2019) and Shaw et al. (2018) in one module.
///
///   q, k, v  as SelfAttention (qkv, head-major)
///   P        = relative_positional_encoding(T, T, pos_feat) or learned_pos_emb(T, T), dropout,
///              then linear_pos (pos_feat = in_dim -> Kt, no bias) if with_linear_pos;
///              split into (heads, dk) unless one embedding is shared by all heads
///   score    = ((q_i + pos_bias_u) . k_j + (q_i + pos_bias_v) . P[j - i]) * dk^-0.5
///   out      = softmax over valid keys, dropout, sum_j w_ij v_j; heads merged, optional proj
///
/// P[j - i] is P's row at the relative position: a gather of the {query, rel} scores (the
/// "rel-shift"). Parameters: qkv.*, proj.*, linear_pos.weight {Kt, in_dim}, pos_bias_u and
/// pos_bias_v {heads, dk} (Glorot-uniform), learned_pos_emb.pos_emb.
/// Settings: Transformer-XL = the defaults (learnable_pos_emb = false uses the sinusoids);
/// Shaw 2018 = with_bias, with_linear_pos and with_pos_bias false, learnable_pos_emb true,
/// separate_pos_emb_per_head false.
/// ESPnet's RelPositionMultiHeadedAttention loads by mapping linear_q/k/v onto qkv (rows per
/// head (q_h, k_h, v_h)), linear_out onto proj, and linear_pos's input columns: ESPnet encodes
/// i - j with interleaved (sin, cos) pairs, dimx encodes j - i as all sines then all cosines,
/// so dimx column k (sine k) = -ESPnet column 2k and column F/2 + k = ESPnet column 2k + 1.
#include <dimx/nn/causal_self_attention.h>
#include <dimx/nn/positional_encoding.h>

namespace dimx::nn {

struct RelPosSelfAttentionOptions {
  bool with_bias = true;
  bool with_linear_pos = true;
  bool with_pos_bias = true;
  bool learnable_pos_emb = false;
  int64_t learnable_pos_emb_clipping = 16;
  bool separate_pos_emb_per_head = true;
  double pos_emb_dropout = 0;
  double att_dropout = 0.1;
  bool att_dropout_broadcast = false;
  DType dtype = DType::f32;
};

struct RelPosSelfAttention : Module {
  Dim in_dim, key_dim_total, value_dim_total;
  Dim heads, key_dim_per_head, value_dim_per_head, qkv_dim, qkv_per_head;
  Dim pos_feat_dim;  ///< in_dim with linear_pos, else Kt (per head) or dk (shared)
  RelPosSelfAttentionOptions options;
  BOOST_HANA_DEFINE_STRUCT(RelPosSelfAttention, (Linear, qkv), (std::optional<Linear>, proj),
                           (std::optional<Linear>, linear_pos), (std::optional<Tensor>, pos_bias_u),
                           (std::optional<Tensor>, pos_bias_v),
                           (std::optional<LearnedRelativePositionalEncoding>, learned_pos_emb));

  RelPosSelfAttention(Dim in_dim, std::optional<Dim> proj_dim, Dim key_dim_total, Dim value_dim_total,
                      int64_t num_heads, Generator& gen, const RelPosSelfAttentionOptions& options = {});
  void reset_parameters(Generator& gen);
  /// Self-attention of x {..., axis, in_dim} over `axis` (padded frames masked).
  Tensor operator()(const Tensor& x, const Dim& axis, Generator* gen = nullptr) const;

  /// Attention of q {..., heads, dk} over k, v {..., keys, heads, dk|dv}, where key frame j sits
  /// at position j and the queries at `query_pos` (integer) < query_frames.extent().
  Tensor attend(const Tensor& q, const Tensor& k, const Tensor& v, const Dim& keys, const Tensor& query_pos,
                const Dim& query_frames, Generator* gen) const;
};

/// The causal variant with a decoding state, as CausalSelfAttention: a whole sequence, a single
/// step (axis = single_step_dim()) or a chunk continuing a state; positions count from the
/// start of the history.
struct RelPosCausalSelfAttention : RelPosSelfAttention {
  using RelPosSelfAttention::RelPosSelfAttention;

  CausalSelfAttentionState default_initial_state(const Dims& batch_dims) const;
  std::pair<Tensor, CausalSelfAttentionState> operator()(const Tensor& x, const Dim& axis,
                                                         const CausalSelfAttentionState& state,
                                                         Generator* gen = nullptr) const;
};

}  // namespace dimx::nn

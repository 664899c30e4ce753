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

/// Options of RelPosSelfAttention; the defaults are Transformer-XL's.
struct RelPosSelfAttentionOptions {
  bool with_bias = true;                    ///< biases in qkv and proj
  bool with_linear_pos = true;              ///< project the encoding by linear_pos (in_dim -> Kt, no bias)
  bool with_pos_bias = true;                ///< learned pos_bias_u and pos_bias_v {heads, dk}
  bool learnable_pos_emb = false;           ///< learned_pos_emb instead of the fixed sinusoids
  int64_t learnable_pos_emb_clipping = 16;  ///< learned_pos_emb's clipping distance
  bool separate_pos_emb_per_head = true;    ///< without linear_pos: encoding of width Kt split per head, else dk shared
  double pos_emb_dropout = 0;               ///< dropout rate on the position encoding (training only)
  double att_dropout = 0.1;                 ///< dropout rate on the attention weights (training only)
  bool att_dropout_broadcast = false;       ///< share the attention-dropout mask over all Dims but the keys
  DType dtype = DType::f32;                 ///< the parameters' dtype
};

/// Multi-head self-attention with relative position scores (see the file comment).
struct RelPosSelfAttention : Module {
  Dim in_dim, key_dim_total, value_dim_total;
  Dim heads, key_dim_per_head, value_dim_per_head, qkv_dim, qkv_per_head;
  /// \var in_dim
  /// the input features
  /// \var key_dim_total
  /// Kt: the keys' (and queries') width over all heads
  /// \var value_dim_total
  /// Vt: the values' width over all heads
  /// \var heads
  /// the attention heads (num_heads)
  /// \var key_dim_per_head
  /// dk = Kt / heads
  /// \var value_dim_per_head
  /// dv = Vt / heads
  /// \var qkv_dim
  /// qkv's output: 2*Kt + Vt
  /// \var qkv_per_head
  /// one head's part of qkv_dim: 2*dk + dv (q, k, v)
  Dim pos_feat_dim;  ///< in_dim with linear_pos, else Kt (per head) or dk (shared)
  RelPosSelfAttentionOptions options;  ///< the options given to the constructor
  /// Parameters: qkv, proj (if proj_dim), linear_pos (if with_linear_pos), pos_bias_u and
  /// pos_bias_v (if with_pos_bias), learned_pos_emb (if learnable_pos_emb).
  BOOST_HANA_DEFINE_STRUCT(RelPosSelfAttention, (Linear, qkv), (std::optional<Linear>, proj),
                           (std::optional<Linear>, linear_pos), (std::optional<Tensor>, pos_bias_u),
                           (std::optional<Tensor>, pos_bias_v),
                           (std::optional<LearnedRelativePositionalEncoding>, learned_pos_emb));

  /// num_heads must divide key_dim_total and value_dim_total; proj_dim adds proj (Vt -> proj_dim).
  /// The sinusoidal encoding needs an even pos_feat_dim.
  RelPosSelfAttention(Dim in_dim, std::optional<Dim> proj_dim, Dim key_dim_total, Dim value_dim_total,
                      int64_t num_heads, Generator& gen, const RelPosSelfAttentionOptions& options = {});
  /// Glorot-uniform qkv weight, pos_bias_u and pos_bias_v, zero qkv bias.
  void reset_parameters(Generator& gen);
  /// Self-attention of x {..., axis, in_dim} over `axis` (padded frames masked).
  Tensor operator()(const Tensor& x, const Dim& axis, Generator* gen = nullptr) const;

  /// Attention of q {..., heads, dk} over k, v {..., keys, heads, dk|dv}, where key frame j sits
  /// at position j and the queries at `query_pos` (integer) < query_frames.extent().
  Tensor attend(const Tensor& q, const Tensor& k, const Tensor& v, const Dim& keys, const Tensor& query_pos,
                const Dim& query_frames, Generator* gen) const;
  /// The softmax weights attend() uses (before attention dropout): {..., heads, query, keys};
  /// without a Generator, no positional-encoding dropout either.
  Tensor weights(const Tensor& q, const Tensor& k, const Dim& keys, const Tensor& query_pos, const Dim& query_frames,
                 Generator* gen) const;
  /// The attention weights of x {..., axis, in_dim} (for inspection; no dropout):
  /// {..., heads, axis, keys} over a new key Dim `keys`, returned with it. causal: query i
  /// sees keys j <= i (as RelPosCausalSelfAttention on a whole sequence).
  std::pair<Tensor, Dim> attention_weights(const Tensor& x, const Dim& axis, bool causal = false) const;

 private:
  // q + pos_bias_u, and the position term (q + pos_bias_v) . P[j - p] gathered over the keys.
  std::pair<Tensor, Tensor> score_terms(const Tensor& q, const Dim& keys, const Tensor& query_pos,
                                        const Dim& query_frames, Generator* gen) const;
};

/// The causal variant with a decoding state, as CausalSelfAttention: a whole sequence, a single
/// step (axis = single_step_dim()) or a chunk continuing a state; positions count from the
/// start of the history.
struct RelPosCausalSelfAttention : RelPosSelfAttention {
  /// The constructor of RelPosSelfAttention.
  using RelPosSelfAttention::RelPosSelfAttention;

  /// Empty history (length 0) for every entry of `batch_dims`.
  CausalSelfAttentionState default_initial_state(const Dims& batch_dims) const;
  /// x {..., axis, in_dim} (or {..., in_dim} with axis = single_step_dim()) continuing `state`:
  /// the output and the state with x's keys and values appended.
  std::pair<Tensor, CausalSelfAttentionState> operator()(const Tensor& x, const Dim& axis,
                                                         const CausalSelfAttentionState& state,
                                                         Generator* gen = nullptr) const;
};

}  // namespace dimx::nn

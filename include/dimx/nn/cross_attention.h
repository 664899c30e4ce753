#pragma once
/// \file
/// Multi-head cross-attention from queries to an encoder sequence (RETURNN's CrossAttention).
///
///   q    = query(x)              Linear(query_in_dim -> Kt), split into (heads, dk)
///   k|v  = key_value(encoder)    Linear(encoder_dim -> Kt + Vt): rows [k; v], each head-major
///   out  = dot_attention over the encoder axis (padded encoder frames masked), heads merged,
///          then the optional proj = Linear(Vt -> proj_dim)
///
/// transform_encoder computes the keys and values once; every decoder call (a sequence, a
/// chunk or a single step) reuses them. Parameters: query.*, key_value.*, proj.* ([out, in]).
/// torch.nn.MultiheadAttention weights map as query = in_proj rows [0, E), key_value = rows
/// [E, 3E) (or q_proj_weight and cat(k_proj_weight, v_proj_weight) when kdim != embed_dim).
#include <dimx/nn/attention.h>
#include <dimx/nn/linear.h>
#include <dimx/nn/module.h>

namespace dimx::nn {

/// The encoder's keys and values, split into heads (CrossAttention::transform_encoder).
struct CrossAttentionState {
  Tensor k;  ///< {batch..., axis, heads, key_dim_per_head}
  Tensor v;  ///< {batch..., axis, heads, value_dim_per_head}
  Dim axis;  ///< the encoder's time Dim
};

/// Multi-head attention from queries to an encoder sequence (see the file comment).
struct CrossAttention : Module {
  Dim encoder_dim, query_in_dim, key_dim_total, value_dim_total;
  Dim heads, key_dim_per_head, value_dim_per_head, kv_dim;
  /// \var encoder_dim
  /// the encoder's features
  /// \var query_in_dim
  /// the queries' input features
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
  /// \var kv_dim
  /// key_value's output: Kt + Vt (rows [k; v])
  double att_dropout = 0.1;             ///< dropout rate on the attention weights (training only)
  bool att_dropout_broadcast = false;   ///< share the dropout mask over all Dims but the encoder axis
  /// Parameters: query (query_in_dim -> Kt), key_value (encoder_dim -> kv_dim) and, if proj_dim
  /// is given, proj (Vt -> proj_dim).
  BOOST_HANA_DEFINE_STRUCT(CrossAttention, (Linear, query), (Linear, key_value), (std::optional<Linear>, proj));

  /// num_heads must divide key_dim_total and value_dim_total; with_bias gives every Linear a bias.
  CrossAttention(Dim encoder_dim, Dim query_in_dim, std::optional<Dim> proj_dim, Dim key_dim_total,
                 Dim value_dim_total, int64_t num_heads, Generator& gen, bool with_bias = true,
                 double att_dropout = 0.1, bool att_dropout_broadcast = false, DType dtype = DType::f32);
  /// Glorot-uniform query and key_value weights, zero biases.
  void reset_parameters(Generator& gen);
  /// Keys and values of encoder {..., axis, encoder_dim}.
  CrossAttentionState transform_encoder(const Tensor& encoder, const Dim& axis) const;
  /// x {..., query_in_dim} (any time Dims, or none for a single step) attends over the encoder.
  Tensor operator()(const Tensor& x, const CrossAttentionState& encoder, Generator* gen = nullptr) const;
};

}  // namespace dimx::nn

#pragma once
/// \file
/// Multi-head self-attention (RETURNN's SelfAttention).
///
///   qkv = Linear(in_dim -> 2*Kt + Vt)   split head-major: (heads, 2*dk + dv), per head q|k|v
///   out = dot_attention(q, k, v) over `axis`, merged head-major to Vt, then Linear(Vt -> proj_dim)
///
/// Parameters: qkv.weight {qkv, in_dim} (Glorot-uniform), qkv.bias (zeros), and if proj_dim is
/// given proj.weight {proj_dim, Vt}, proj.bias. Weights use PyTorch's [out, in] layout. To load
/// torch.nn.MultiheadAttention weights, interleave its in_proj rows per head: dimx's qkv rows
/// are (q_h, k_h, v_h) for each head h, torch's are [q; k; v].
#include <dimx/nn/attention.h>
#include <dimx/nn/linear.h>
#include <dimx/nn/module.h>

#include <array>

namespace dimx::nn {

/// Multi-head self-attention over one axis (see the file comment).
struct SelfAttention : Module {
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
  double att_dropout = 0.1;             ///< dropout rate on the attention weights (training only)
  bool att_dropout_broadcast = false;   ///< share the dropout mask over all Dims but the key axis
  /// Parameters: qkv (in_dim -> qkv_dim) and, if proj_dim is given, proj (Vt -> proj_dim).
  BOOST_HANA_DEFINE_STRUCT(SelfAttention, (Linear, qkv), (std::optional<Linear>, proj));

  /// num_heads must divide key_dim_total and value_dim_total; with_bias gives qkv and proj biases.
  SelfAttention(Dim in_dim, std::optional<Dim> proj_dim, Dim key_dim_total, Dim value_dim_total, int64_t num_heads,
                Generator& gen, bool with_bias = true, double att_dropout = 0.1, bool att_dropout_broadcast = false,
                DType dtype = DType::f32);
  /// Glorot-uniform qkv weight, zero qkv bias (proj keeps Linear's init).
  void reset_parameters(Generator& gen);
  /// Self-attention of x {..., axis, in_dim} over `axis` (padded frames masked). `gen` is
  /// needed for attention dropout in training.
  Tensor operator()(const Tensor& x, const Dim& axis, Generator* gen = nullptr) const;
  /// The attention weights of x {..., axis, in_dim} (for inspection; no dropout):
  /// {..., heads, axis, keys} over a new key Dim `keys`, returned with it. causal: query i
  /// sees keys j <= i (as CausalSelfAttention on a whole sequence).
  std::pair<Tensor, Dim> attention_weights(const Tensor& x, const Dim& axis, bool causal = false) const;

  /// The pieces shared by the attention variants built on this one:
  /// q, k, v of x per head: {..., heads, key_dim_per_head} (q, k) and {..., heads, value_dim_per_head}.
  std::array<Tensor, 3> qkv_heads(const Tensor& x) const;
  /// Heads merged back to value_dim_total, then the optional projection.
  Tensor merge_heads(const Tensor& att) const;
  /// dot_attention's options: att_dropout, att_dropout_broadcast, `gen` and `training`.
  DotAttentionOptions attention_options(Generator* gen) const;
};

}  // namespace dimx::nn

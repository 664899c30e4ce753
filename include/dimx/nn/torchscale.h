#pragma once
/// \file
/// torchscale's (and zeta's) multi-head attention: XPOS rotary positions with decay, sub-LN,
/// multiway routing.
///
///   q = q_proj(query) * d^-0.5, k = k_proj(key), v = v_proj(value)   split into heads
///       (key defaults to the query, value to the key; self_attention: keys over the query's frames)
///   XPOS (xpos_rel_pos, self-attention): k = xpos(k, downscale), q = xpos(q, offset = history)
///   w = q . k (+ attn_mask after nan_to_num) + rel_pos, padded keys masked
///   attn = out_proj(inner_attn_ln(merge_heads(dropout(softmax(w)) . v)))   (inner_attn_ln: subln)
///
/// Parameters (the originals' state_dict names, PyTorch [out, in] shapes):
///   q_proj, k_proj, v_proj, out_proj .weight {proj, embed} / {embed, proj} [E,E], .bias [E]
///   inner_attn_ln.weight, .bias [E]  (subln, self-attention only)
///   xpos.scale [d/2]                 a buffer (no grad): zeta_i = (2i + 0.4 d) / (1.4 d)
/// With multiway, every wrapped module (the four projections and inner_attn_ln) is there twice,
/// as `<name>.A.*` and `<name>.B.*` (zeta's names): positions before the split position use A,
/// the others B (-1: all A, 0: all B). reset_parameters: q/k/v Xavier-uniform with gain
/// 1/sqrt(2), out_proj Xavier-uniform with bias 0, on both branches (zeta's crashes there).
///
/// dimx's choices where the originals differ (docs/tutorials/08-torchscale-attention.md): the
/// query offset of XPOS is the number of cached keys, so chunks of several tokens decode right
/// (the original is right for single tokens only); rel_pos without a batch Dim is broadcast;
/// both the output and the weights are returned; a row with no visible key gets zero weights.
#include <dimx/nn/causal_self_attention.h>
#include <dimx/nn/layer_norm.h>
#include <dimx/nn/linear.h>
#include <dimx/nn/module.h>

#include <optional>
#include <variant>

namespace dimx::nn::torchscale {

/// XPOS on x {..., axis, feature} (feature even, read as interleaved pairs (2i, 2i + 1)):
///   n = L + offset (L: each sequence's length along axis; offset: an integer scalar or tensor
///   over batch Dims), row r = offset + l, m = floor(-n / 2) + r,
///   s = zeta_i ^ (m / scale_base) (1 / s when downscale), theta = r * 10000^(-i / (d/2)),
///   out[2i] = s (x[2i] cos - x[2i+1] sin), out[2i+1] = s (x[2i+1] cos + x[2i] sin).
/// Differentiable in x (the gradient is the inverse rotation, -theta with the same s). The
/// angles and scales are computed in f64, the rotation in f64 for f64 inputs and in f32
/// otherwise (bf16/f16 stored in their dtype); one fused primitive each way, reading x in place
/// where its feature Dim is contiguous. Queries and keys of one sequence share n (keys: offset 0
/// over all keys; queries: offset = the keys before them), so the scores depend on relative
/// positions only.
Tensor xpos(const Tensor& x, const Dim& axis, const Dim& feature, const Tensor& offset = {}, bool downscale = false,
            double scale_base = 512);
/// The same with a constant integer offset (>= 0).
Tensor xpos(const Tensor& x, const Dim& axis, const Dim& feature, int64_t offset, bool downscale = false,
            double scale_base = 512);

/// Two copies of a module: positions before the split position use A, the rest B.
template <class M>
struct Multiway : Module {
  /// The two copies: A (positions before the split) and B (the rest).
  BOOST_HANA_DEFINE_STRUCT(Multiway, (M, A), (M, B));
  /// Takes the two copies a and b.
  Multiway(M a, M b) : A(std::move(a)), B(std::move(b)) {}
};
/// A wrapped module: plain (torchscale's names) or multiway (`.A.` / `.B.`).
template <class M>
using Wrapped = std::variant<M, Multiway<M>>;

/// The XPOS buffer, named xpos.scale.
struct XPos : Module {
  double scale_base = 512;  ///< xpos()'s scale_base (Options::xpos_scale_base)
  /// The buffer scale {head_dim / 2} (f32, no grad): zeta_i = (2i + 0.4 d) / (1.4 d).
  BOOST_HANA_DEFINE_STRUCT(XPos, (Tensor, scale));
};

/// Options of MultiheadAttention (the originals' constructor arguments).
struct Options {
  double dropout = 0;               ///< on the attention probabilities, training only
  bool self_attention = false;      ///< self-attention (needed by subln and xpos_rel_pos)
  bool encoder_decoder_attention = false;  ///< cross-attention flag (not with self_attention)
  bool subln = false;               ///< inner_attn_ln: a LayerNorm on the merged heads before out_proj
  double layernorm_eps = 1e-5;      ///< inner_attn_ln's epsilon
  bool xpos_rel_pos = false;        ///< XPOS on queries and keys (needs an even head size)
  double xpos_scale_base = 512;     ///< XPOS's scale_base (positive)
  bool multiway = false;            ///< two copies (A, B) of each projection and inner_attn_ln
  std::optional<Dim> heads;  ///< the heads Dim (default: a new one)
  DType dtype = DType::f32;  ///< the parameters' dtype
};

/// The un-rotated keys and values seen so far over a dynamic accum_axis (per-sequence counts).
using State = CausalSelfAttentionState;

/// The inputs besides the query.
struct Inputs {
  /// \var key
  /// {batch..., key_axis, embed}; default: the query
  Tensor key, value;             ///< {batch..., key_axis, embed}; key defaults to the query, value to key
  std::optional<Dim> key_axis;   ///< needed when a key is given
  std::optional<State> incremental_state;  ///< decoding state (initial_state() to start); the new one is in Output::state
  Tensor key_padding_mask;       ///< bool {batch..., key_axis}, true = pad (or the key Dim's lengths)
  Tensor attn_mask;              ///< additive over {query_axis, key_axis}; the scores go through
                                 /// nan_to_num before it is added (as the original)
  Tensor rel_pos;                ///< added to the scores: {heads, query_axis, K} (+ batch Dims)
  bool is_first_step = false;    ///< accepted for the original's signature: the history decides
  int64_t split_position = -1;   ///< multiway: -1 all A, 0 all B, p: positions < p use A
  bool causal = false;           ///< self-attention: query i sees keys j <= i (+ a state's history)
  bool need_weights = true;      ///< return Output::weights
  Generator* gen = nullptr;      ///< dropout in training
};

/// The result of MultiheadAttention::operator().
struct Output {
  Tensor attn;                 ///< {batch..., query_axis, embed}
  Tensor weights;              ///< {heads, batch..., query_axis, keys} (pre-dropout)
  Dim keys{0, "keys"};         ///< the key Dim of weights
  std::optional<State> state;  ///< with incremental_state: the keys and values after this call
};

/// torchscale's multi-head attention (see the file comment).
struct MultiheadAttention : Module {
  /// \var embed
  /// the model width E (query, key, value and output features)
  /// \var heads
  /// the heads Dim (num_heads; Options::heads if given)
  /// \var head_dim
  /// features per head d = E / num_heads
  /// \var proj
  /// the projected features (size E), split into {heads, head_dim}
  Dim embed, heads, head_dim, proj, half;  ///< size d / 2: the XPOS pairs (xpos.scale's Dim)
  Options options;  ///< the options it was built with
  /// The parameters: k_proj, v_proj, q_proj, out_proj, inner_attn_ln (subln) and the xpos buffer
  /// (xpos_rel_pos); each Wrapped one is a Multiway pair with Options::multiway.
  BOOST_HANA_DEFINE_STRUCT(MultiheadAttention, (Wrapped<Linear>, k_proj), (Wrapped<Linear>, v_proj),
                           (Wrapped<Linear>, q_proj), (Wrapped<Linear>, out_proj),
                           (std::optional<Wrapped<LayerNorm>>, inner_attn_ln), (std::optional<XPos>, xpos));

  /// Builds the module with embed_dim features and num_heads heads, initialized from gen.
  MultiheadAttention(Dim embed_dim, int64_t num_heads, Generator& gen, const Options& options = {});
  /// Re-initializes the parameters as described in the file comment.
  void reset_parameters(Generator& gen);

  /// query {batch..., query_axis, embed}; query_axis = single_step_dim() (no time Dim) for one step.
  Output operator()(const Tensor& query, const Dim& query_axis, const Inputs& in = {}) const;
  /// The empty state over `batch` Dims.
  State initial_state(const Dims& batch) const;
  /// The sizes and enabled options, for printing the module.
  std::string extra_repr() const;
};

}  // namespace dimx::nn::torchscale

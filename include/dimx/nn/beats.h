#pragma once
/// \file
/// BEATs' (fairseq's) multi-head attention, with T5 relative-position buckets and the GRU gate.
///
///   q = q_proj(query) * d^-0.5;  k = k_proj(key), v = v_proj(value)       split into heads
///       (self_attention: key = value = query; encoder_decoder_attention: v from key as well)
///   extra keys: bias_k / bias_v (add_bias_kv), then a zero key/value (add_zero_attn)
///   w = q . k + attn_mask + gate * position_bias       padded keys (the key Dim's lengths) masked
///       position_bias[h, i, j] = relative_attention_bias[bucket(j - i), h]   ({heads, query, key})
///       gate = a * (b * grep_a - 1) + 2, (a, b) = sigmoid(sum of 4) of grep_linear(q_proj(query))
///       (gru_rel_pos; else gate = 1); extra keys get mask 0 and bias 0
///   attn = out_proj(merge_heads(dropout(softmax(w)) . v))
/// The original's (w - max) * 32 shift of the scores is a no-op for the softmax; dimx applies it
/// only where the scores are returned (before_softmax), with the max over the visible keys.
///
/// Parameters (the original's state_dict names and [out, in] shapes, so a BEATs checkpoint's
/// `self_attn.*` tensors load by name):
///   q_proj.weight {proj, embed} [E,E], .bias [E] (if bias)   out_proj.weight {embed, proj} [E,E], .bias
///   k_proj.weight {proj, kdim} [E,kdim], .bias [E] (unless rescale_init: `bias` keeps it)
///   v_proj.weight {proj, vdim} [E,vdim], .bias [E] (if bias)
///   bias_k, bias_v {kv_1, kv_2, proj} [1,1,E] (add_bias_kv)
///   relative_attention_bias.weight {buckets, heads} [num_buckets,H] (has_relative_attention_bias)
///   grep_linear.weight {grep, head_dim} [8,d], .bias [8], grep_a {a_1, heads, a_2, a_3} [1,H,1,1]
/// reset_parameters: q/k/v weights Xavier-uniform with gain 1/sqrt(2) when kdim == vdim == E
/// (else 1), out_proj Xavier-uniform with bias 0, bias_k/bias_v and relative_attention_bias
/// Xavier-normal, grep_a = 1; other biases keep Linear's U(+-1/sqrt(fan_in)).
///
/// Where the original is broken, dimx does what it meant (docs/tutorials/07-beats-attention.md):
/// incremental decoding works (a State, appended per step or kept with static_kv); the key
/// length counts the extra bias/zero keys; relative bias with extra keys works (bias 0 there);
/// a query row with no visible key gives zero weights and a zero output row (no NaN, and no
/// out_proj.bias); q_noise never overwrites the stored weights; the returned position_bias is
/// the ungated {heads, query, key} tensor, and a passed one may have batch Dims or not.
///
/// The bias by relative position stays in relative form, a table over {positions, heads} with
/// the gate as its row scale, wherever it can (no history, no extra keys): the fused
/// attention reads it in place and nothing of size {query, key} is formed for it
/// (Inputs::relative_position_bias passes it between layers).
///
/// Padding is one mechanism: the key Dim's lengths. A bool key_padding_mask (true = pad) is
/// turned into lengths where it pads each sequence's end, else into an additive -inf term.
#include <dimx/attention.h>
#include <dimx/nn/causal_self_attention.h>
#include <dimx/nn/embedding.h>
#include <dimx/nn/linear.h>
#include <dimx/nn/module.h>

#include <optional>

namespace dimx::nn::beats {

/// T5's bidirectional bucket of rel = key position - query position (any integer tensor; the
/// result is i64 over its Dims): nb = num_buckets / 2, max_exact = nb / 2,
///   bucket = nb * [rel > 0] + (|rel| < max_exact ? |rel| :
///            min(nb - 1, max_exact + trunc(log(|rel| / max_exact) / log(max_distance / max_exact)
///                                              * (nb - max_exact))))      (the log in float32)
Tensor relative_position_bucket(const Tensor& rel, int64_t num_buckets, int64_t max_distance);

/// Options of MultiheadAttention (fairseq's constructor arguments).
struct Options {
  /// \var kdim
  /// input size of the key (default: embed)
  std::optional<Dim> kdim, vdim;  ///< input sizes of key and value (default: embed)
  /// The heads Dim (size num_heads; default: a new one). Layers that pass one position bias
  /// along, as BEATs' encoder does, share it: the bias is over it.
  std::optional<Dim> heads;
  double dropout = 0;             ///< on the attention probabilities, training only
  bool bias = true;               ///< biases on q_proj, v_proj and out_proj (k_proj: see rescale_init)
  bool add_bias_kv = false;       ///< learned extra key/value frames bias_k, bias_v
  bool add_zero_attn = false;     ///< an extra all-zero key/value frame
  bool self_attention = false;    ///< keys and values from the query (needs kdim == vdim == embed)
  bool encoder_decoder_attention = false;  ///< values projected from the key (vdim = kdim)
  double q_noise = 0;  ///< training only: drops blocks of qn_block_size input columns
  int64_t qn_block_size = 8;      ///< q_noise block size (must divide each projection's input size)
  bool has_relative_attention_bias = false;  ///< add the T5 relative position bias (relative_attention_bias)
  int64_t num_buckets = 32;       ///< relative position buckets (>= 4)
  int64_t max_distance = 128;     ///< distance where the buckets stop growing (> num_buckets / 4)
  bool gru_rel_pos = false;       ///< gate the position bias per query and head (grep_linear, grep_a)
  bool rescale_init = false;      ///< k_proj without bias
  DType dtype = DType::f32;       ///< the parameters' dtype
};

/// The keys and values seen so far (fairseq's prev_key, prev_value, prev_key_padding_mask):
/// `accum_axis` holds each sequence's key count. Self-attention appends each step's keys;
/// encoder-decoder attention with static_kv keeps the encoder's.
using State = CausalSelfAttentionState;

/// The inputs besides the query. Key Dims: `key_axis` of key/value (not needed for
/// self_attention, whose keys are the query's frames).
struct Inputs {
  /// \var key
  /// {batch..., key_axis, kdim}; unused with self_attention
  Tensor key, value;             ///< {batch..., key_axis, kdim} / {..., vdim}; value unused with
                                 /// self_attention or encoder_decoder_attention
  std::optional<Dim> key_axis;   ///< the keys' time Dim (dynamic: its lengths pad)
  Tensor key_padding_mask;       ///< bool {batch..., key_axis}, true = pad (or use the lengths)
  Tensor attn_mask;              ///< additive over {query_axis, key_axis} (bool: true = -inf)
  Tensor position_bias;          ///< {heads, query_axis, K} (+ batch Dims): a previous layer's
  /// A previous layer's bias in relative form (Output::relative_position_bias; instead of
  /// position_bias): its table over {positions, heads}, read in place by the fused attention.
  /// Not with a decoding state or a single step (the positions are per-sequence there).
  std::optional<RelativeBias> relative_position_bias;
  bool need_position_bias = true;  ///< form Output::position_bias from a relative bias ({heads, query, keys})
  std::optional<State> incremental_state;  ///< decoding state (initial_state() to start); the new one is in Output::state
  bool need_weights = true;      ///< return Output::weights (averaged over heads)
  bool static_kv = false;        ///< with a state: keep its keys (encoder_decoder_attention)
  bool before_softmax = false;   ///< return the scores Output::w and values Output::v instead of attn
  bool need_head_weights = false;  ///< return Output::weights per head (implies need_weights)
  bool causal = false;           ///< query i sees keys j <= i (+ the history of a state)
  Generator* gen = nullptr;      ///< dropout and q_noise in training
};

/// The result of MultiheadAttention::operator().
struct Output {
  Tensor attn;           ///< {batch..., query_axis, embed}
  Tensor weights;        ///< {batch..., query_axis, keys}, + heads with need_head_weights
  Tensor position_bias;  ///< ungated {heads, query_axis, keys} (or as passed); undefined if none
                         ///< (or if it is relative and Inputs::need_position_bias is false)
  /// The ungated bias in relative form where it has one (computed by this layer without a
  /// decoding state or continuing an empty one, or passed so): pass it on as
  /// Inputs::relative_position_bias.
  std::optional<RelativeBias> relative_position_bias;
  /// \var w
  /// before_softmax: the scores {..., heads, query_axis, keys}, padded keys -inf
  Tensor w, v;           ///< before_softmax: scores {..., heads, query_axis, keys}, values
  Dim keys{0, "keys"};   ///< the key Dim of weights, w, v and position_bias
  std::optional<State> state;  ///< with incremental_state: the keys and values after this call
};

/// BEATs' multi-head attention (see the file comment).
struct MultiheadAttention : Module {
  /// \var embed
  /// the model width E (query and output features)
  /// \var kdim
  /// the key's input features (Options::kdim, default embed)
  /// \var vdim
  /// the value's input features (Options::vdim, default embed; kdim with encoder_decoder_attention)
  /// \var heads
  /// the heads Dim (num_heads; Options::heads if given)
  /// \var head_dim
  /// features per head d = E / num_heads
  /// \var proj
  /// the projected features (size E), split into {heads, head_dim}
  /// \var grep
  /// grep_linear's 8 outputs, split into {grep_pair, grep_four}
  /// \var grep_pair
  /// size 2: the gate's (a, b)
  /// \var grep_four
  /// size 4: summed into each of a and b
  Dim embed, kdim, vdim, heads, head_dim, proj, grep{8, "grep"}, grep_pair{2, "grep_pair"}, grep_four{4, "grep_4"};
  /// \var kv_1
  /// first size-1 Dim of bias_k / bias_v
  /// \var kv_2
  /// second size-1 Dim of bias_k / bias_v
  /// \var a_1
  /// first size-1 Dim of grep_a
  /// \var a_2
  /// second size-1 Dim of grep_a
  /// \var a_3
  /// third size-1 Dim of grep_a
  /// \var buckets
  /// the relative position buckets (size num_buckets)
  Dim kv_1{1, "kv_1"}, kv_2{1, "kv_2"}, a_1{1, "a_1"}, a_2{1, "a_2"}, a_3{1, "a_3"}, buckets;
  Options options;  ///< the options it was built with
  /// The parameters: relative_attention_bias, k_proj, v_proj, q_proj, out_proj, bias_k, bias_v,
  /// grep_linear, grep_a (see the file comment; the optional ones exist per Options).
  BOOST_HANA_DEFINE_STRUCT(MultiheadAttention, (std::optional<Embedding>, relative_attention_bias),
                           (Linear, k_proj), (Linear, v_proj), (Linear, q_proj), (Linear, out_proj),
                           (std::optional<Tensor>, bias_k), (std::optional<Tensor>, bias_v),
                           (std::optional<Linear>, grep_linear), (std::optional<Tensor>, grep_a));

  /// Builds the module with embed_dim features and num_heads heads, initialized from gen.
  MultiheadAttention(Dim embed_dim, int64_t num_heads, Generator& gen, const Options& options = {});
  /// Re-initializes the parameters as described in the file comment.
  void reset_parameters(Generator& gen);

  /// query {batch..., query_axis, embed} (query_axis = single_step_dim() with a state: no time Dim).
  Output operator()(const Tensor& query, const Dim& query_axis, const Inputs& in = {}) const;

  /// relative_attention_bias[bucket(j - i - query_offset)] as {heads, query, key} (query_offset:
  /// an integer tensor, e.g. over {batch}, or 0).
  Tensor compute_bias(const Dim& query, const Dim& key, const Tensor& query_offset = {}) const;
  /// The empty state of self-attention over `batch` Dims.
  State initial_state(const Dims& batch) const;
  /// The sizes and enabled options, for printing the module.
  std::string extra_repr() const;
};

}  // namespace dimx::nn::beats

#pragma once
/// \file
/// Scaled dot-product attention as one op, which the devices lower to a fused primitive.
///
///   out = matmul(dropout(softmax(scale * matmul(q, k, key_dim) + bias, kv_axis)), v, kv_axis)
///
/// q: {..., key_dim} without kv_axis; k: {..., kv_axis, key_dim}; v: {..., kv_axis}. Keys past
/// kv_axis's lengths get weight 0; those lengths may run over q's Dims (a query-indexed key Dim
/// is causal attention: nn::causal_key_dim). The bias, optional, is over any of q's Dims but
/// key_dim, and kv_axis; it broadcasts over the Dims it lacks and is never expanded. Dropout
/// (options.dropout > 0) drops each weight where dropout() of the weights would, drawing from
/// options.gen: the weights' Dims in creation order (only kv_axis with dropout_broadcast).
/// Returns v's Dims without kv_axis, plus q's other Dims. nn::dot_attention is the same op with
/// RETURNN's conventions on top (self-attention over one time Dim, the causal key Dim, the
/// bias's own key Dim, dropout only in training).
///
/// Lowering: where q is {batch..., query..., key_dim}, k {batch..., kv_axis, key_dim} and v
/// {batch..., kv_axis, value...} (batch: Dims q shares with k or v; k and v may broadcast over
/// some), and kv_axis's lengths live on batch and query Dims, the device's fused primitive
/// computes the op without materializing the weights, bias and dropout included, and its fused
/// backward the gradients of q, k, v and the bias (deterministic, nothing of size [query, key]
/// in memory either); the dropout mask is regenerated from the Generator's state, never
/// stored. An operand that broadcasts over a batch Dim gets its gradient from an unfused
/// recomputation. attention_path_counts() tells which paths ran; with DIMX_STRICT_FUSED=1 in
/// the environment, a call that asks for the fused path (options.fused unset or true) and
/// cannot take it, forward or backward, is a dimx::Error saying why instead of a silent
/// fallback.
///
/// Under autocast (dimx/autocast.h) q, k, v and the bias are cast to the low dtype first; the
/// result is in the low dtype (bf16/f16 run on the GPU's tensor-core kernels with f32
/// accumulation and f32 row statistics, and on the CPU in f32).
#include <dimx/random.h>
#include <dimx/tensor.h>

#include <optional>

namespace dimx {

/// A bias by relative position: the term of query frame i and key frame j is `table` at index
/// j - i + (query.extent() - 1) of `positions`, i.e. `positions` runs over the relative positions
/// -(tq - 1) .. tk - 1 in order (as relative_positional_encoding numbers them). The table is over
/// `positions` and any of q's Dims but key_dim and `query`; it is never expanded over
/// {query, key} where the device's fused primitive reads it in place (the CPU's and CUDA's, in
/// every dtype), and its gradient is the table's (summed per position, in a fixed order).
struct RelativeBias {
  Tensor table;   ///< over `positions` and q's Dims but key_dim and `query`; q's dtype
  Dim query;      ///< the Dim of q whose frames the positions are relative to
  Dim positions;  ///< extent query.extent() + kv_axis.extent() - 1
  /// Undefined, or a factor of each query row's terms (BEATs's gru_rel_pos gate): the term of
  /// (i, j) is then scale[..., i] * table[..., j - i + T_q - 1]. Over q's Dims but key_dim
  /// (usually `query` and the batch and head Dims); q's dtype; differentiable like the table.
  /// Read in place where the device's primitive takes it (the CPU's and CUDA's, every dtype);
  /// elsewhere the scaled term is gathered (AttentionPathCounts::relative_bias_gathered).
  Tensor scale;
};

/// The term `rel` adds over {rel.query, kv_axis} (times its scale where set): what dot_attention
/// gathers where no fused primitive reads the table in place. Differentiable in the table and
/// the scale. Errors name the mismatched Dims (positions' extent, a table over the query or keys).
Tensor relative_bias_term(const RelativeBias& rel, const Dim& kv_axis);

/// Options of dot_attention().
struct AttentionOptions {
  double scale = 1;                ///< the energies' factor (finite)
  Tensor bias;                     ///< undefined: none; q's dtype
  /// A bias by relative position, added to `bias` where both are set (see RelativeBias).
  std::optional<RelativeBias> relative_bias;
  double dropout = 0;              ///< drop probability of each weight, in [0, 1); > 0 needs gen
  bool dropout_broadcast = false;  ///< one mask over kv_axis, shared by all other Dims
  Generator* gen = nullptr;        ///< where the dropout mask is drawn from
  /// The fused primitive where the Dims map onto it. Unset: as DIMX_FUSED_ATTENTION (0 / 1)
  /// says, else fused; true / false: prefer it / never (results agree within rounding).
  std::optional<bool> fused;
};

/// The op of the file comment.
Tensor dot_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Dim& key_dim, const Dim& kv_axis,
                     const AttentionOptions& options);

/// How many dot_attention forwards and backwards took the fused primitive and how many the
/// unfused matmul / softmax path, since the program started or the last reset (all threads).
struct AttentionPathCounts {
  int64_t fused_forward = 0;     ///< forwards on the fused primitive
  int64_t unfused_forward = 0;   ///< forwards on matmul / softmax / matmul
  int64_t fused_backward = 0;    ///< backwards of fused forwards on the fused primitive
  int64_t unfused_backward = 0;  ///< backwards of fused forwards that recomputed the weights with dimx ops
  /// Forwards whose relative_bias was gathered over {query, key} first (the unfused path, a
  /// device or dtype whose kernels read no table in place, or a call that also has a bias);
  /// the others read it in place, forward and backward.
  int64_t relative_bias_gathered = 0;
  /// Of the fused forwards, those a vendor library ran (cuDNN's flash attention, CUDA bf16/f16
  /// without bias or dropout; DIMX_CUDNN_ATTENTION=0 keeps them on dimx's own kernels).
  int64_t library_forward = 0;
  /// Of the fused f32 forwards, those that ran on TF32 tensor cores (CUDA, with
  /// set_allow_tf32(true), head sizes up to 128 and 16-byte aligned rows); the others are exact.
  int64_t tf32_forward = 0;
  /// Of the fused f32 backwards, those that ran on TF32 tensor cores (as tf32_forward).
  int64_t tf32_backward = 0;
  /// Of the fused forwards on dimx's own kernels, those whose products ran on Hopper's
  /// warpgroup instructions (wgmma: CUDA bf16/f16 without a bias or dropout, head sizes up to
  /// 64, compute capability 9.0).
  int64_t wgmma_forward = 0;
  /// Of the fused backwards, those whose products ran on Hopper's warpgroup instructions
  /// (wgmma: CUDA bf16/f16 without a bias or with a relative one, head sizes up to 64,
  /// compute capability 9.0).
  int64_t wgmma_backward = 0;
};
/// The counts so far.
AttentionPathCounts attention_path_counts();
/// Sets every count to 0.
void reset_attention_path_counts();

}  // namespace dimx

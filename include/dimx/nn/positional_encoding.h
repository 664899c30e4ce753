#pragma once
/// \file
/// Position encodings: fixed sinusoids (no parameters) and learned relative embeddings.
///
/// relative_positional_encoding (Transformer-XL style, RETURNN): positions r = j - i of key j
/// and query i run from -(Tq-1) to Tk-1 (minus query_offset) over a new static Dim of size
/// Tq - 1 + Tk; emb[r] = [sin(r w_0), ..., sin(r w_{F/2-1}), cos(r w_0), ..., cos(r w_{F/2-1})]
/// with w_k = 10000^(-2k/F) (all sines, then all cosines). The Dim is cached per (Tq, Tk,
/// offset), so repeated calls return the same Dim; recent tables are cached too, per device.
///
/// sinusoidal_positional_encoding (tensor2tensor style): emb[t] = [sin(t w_k)]_{k<F/2} ++
/// [cos(t w_k)]_{k<F/2}, t = offset + frame, w_k = base^(-k/(F/2-1)).
///
/// Dynamic Dims use their extent. F must be even (and >= 4 for the sinusoidal one).
#include <dimx/nn/module.h>
#include <dimx/tensor.h>

#include <utility>

namespace dimx::nn {

/// The sinusoidal table {rel, feat_dim} of the positions j - i of kv_dim's frames j relative to
/// query_dim's frames i (see above), on `device`, with its Dim `rel`.
std::pair<Tensor, Dim> relative_positional_encoding(const Dim& query_dim, const Dim& kv_dim, const Dim& feat_dim,
                                                    int64_t query_offset = 0, DType dtype = DType::f32,
                                                    Device device = Device::cpu());

/// The single-step form: the query is the last valid frame of each sequence of kv_dim, so key j
/// gets emb[j - (len - 1)]. Returns {kv_dim's length Dims..., kv_dim, feat_dim}.
Tensor relative_positional_encoding_step(const Dim& kv_dim, const Dim& feat_dim, DType dtype = DType::f32);

/// The table {spatial_dim, feat_dim} of positions offset, ..., offset + T - 1 (see above).
Tensor sinusoidal_positional_encoding(const Dim& spatial_dim, const Dim& feat_dim, int64_t offset = 0,
                                      double base = 1e4, DType dtype = DType::f32);

/// Learned relative position embeddings (Shaw et al. 2018; RETURNN's
/// LearnedRelativePositionalEncoding). Parameter pos_emb {2c+1, feat} ({c+1, feat} if causal),
/// Glorot-uniform. Position r = j - i maps to row clip(r, -c, c) + c (clip(r, -c, 0) + c if
/// causal): every distance beyond c shares the first (or last) row.
struct LearnedRelativePositionalEncoding : Module {
  Dim feat_dim, clipped_dim;
  /// \var feat_dim
  /// the embedding's features
  /// \var clipped_dim
  /// pos_emb's rows: 2c+1, or c+1 if causal
  int64_t clipping = 16;  ///< c: the largest distance |j - i| with a row of its own
  bool causal = false;    ///< rows only for r <= 0 (keys not after the query)
  /// Parameter: pos_emb {clipped_dim, feat_dim}.
  BOOST_HANA_DEFINE_STRUCT(LearnedRelativePositionalEncoding, (Tensor, pos_emb));

  /// clipping must be >= 0, feat_dim static and dtype floating.
  LearnedRelativePositionalEncoding(Dim feat_dim, Generator& gen, int64_t clipping = 16, bool causal = false,
                                    DType dtype = DType::f32);
  /// Glorot-uniform pos_emb.
  void reset_parameters(Generator& gen);
  /// Over the same positions and Dim as relative_positional_encoding: {rel, feat_dim}.
  std::pair<Tensor, Dim> operator()(const Dim& query_dim, const Dim& kv_dim, int64_t query_offset = 0) const;
  /// {query_dim, kv_dim, feat_dim} with r = j - (i + query_offset).
  Tensor full_matrix(const Dim& query_dim, const Dim& kv_dim, int64_t query_offset = 0) const;
  /// "feat=..., clipping=c" (", causal" if causal), for describe().
  std::string extra_repr() const;
};

}  // namespace dimx::nn

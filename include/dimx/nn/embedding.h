#pragma once
/// \file
/// Embedding: a lookup table (torch.nn.Embedding).
///
/// Parameter: weight {vocab, feature} ~ N(0, 1) (PyTorch's default init), row-major
/// [num_embeddings, embedding_dim] as in a PyTorch state_dict.
/// Forward: integer indices (i32 or i64) with any Dims; their sparse_dim must be `vocab` or
/// unset (untagged indices are read as indexing `vocab`). The result has the indices' Dims plus
/// `feature`. An index outside [0, vocab) is an error, except in padded frames of a dynamic
/// Dim, which are never read (gather's rule). Gradients flow to weight (scatter-add) from the
/// valid frames only.
#include <dimx/nn/module.h>

namespace dimx::nn {

/// A lookup table of `feature` vectors, one per entry of `vocab` (see the file comment).
struct Embedding : Module {
  Dim vocab;    ///< the entries (num_embeddings)
  Dim feature;  ///< each entry's features (embedding_dim)
  /// Parameter: weight {vocab, feature}.
  BOOST_HANA_DEFINE_STRUCT(Embedding, (Tensor, weight));

  /// vocab and feature must be static and distinct, dtype floating.
  Embedding(Dim vocab, Dim feature, Generator& gen, DType dtype = DType::f32);

  /// Redraws weight ~ N(0, 1) in place.
  void reset_parameters(Generator& gen);
  /// The rows of weight at `indices`: {indices' Dims..., feature}.
  Tensor operator()(const Tensor& indices) const;
  /// "vocab=..., feature=...", for describe().
  std::string extra_repr() const;
};

}  // namespace dimx::nn

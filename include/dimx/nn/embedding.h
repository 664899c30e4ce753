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

struct Embedding : Module {
  Dim vocab;
  Dim feature;
  BOOST_HANA_DEFINE_STRUCT(Embedding, (Tensor, weight));

  Embedding(Dim vocab, Dim feature, Generator& gen, DType dtype = DType::f32);

  void reset_parameters(Generator& gen);
  Tensor operator()(const Tensor& indices) const;
  std::string extra_repr() const;
};

}  // namespace dimx::nn

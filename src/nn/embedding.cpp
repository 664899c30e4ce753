#include <dimx/autograd.h>
#include <dimx/nn/embedding.h>
#include <dimx/shape.h>

namespace dimx::nn {

Embedding::Embedding(Dim v, Dim f, Generator& gen, DType dtype) : vocab(std::move(v)), feature(std::move(f)) {
  if (vocab.is_dynamic() || feature.is_dynamic())
    throw Error("Embedding: vocab and feature must be static, got vocab " + vocab.str() + ", feature " + feature.str());
  if (vocab == feature) throw Error("Embedding: vocab and feature must be distinct Dims, got " + vocab.str());
  if (!is_floating(dtype)) throw Error(std::string("Embedding: parameters must be f32 or f64 (bf16 / f16 compute comes from autocast), got ") + dtype_name(dtype));
  weight = Tensor::zeros({vocab, feature}, dtype).with_requires_grad();
  reset_parameters(gen);
}

void Embedding::reset_parameters(Generator& gen) {
  NoGradGuard no_grad;
  weight.copy_from(random_normal({vocab, feature}, gen, 0.0, 1.0, weight.dtype()));
}

Tensor Embedding::operator()(const Tensor& indices) const {
  if (!indices.defined()) throw Error("Embedding: undefined indices (vocab " + vocab.str() + ")");
  if (!is_integer(indices.dtype()))
    throw Error("Embedding: indices must be integer, got " + indices.str() + " (vocab " + vocab.str() + ")");
  if (indices.sparse_dim() && *indices.sparse_dim() != vocab)
    throw Error("Embedding: indices " + indices.str() + " index '" + indices.sparse_dim()->str() +
                "', not the vocab Dim '" + vocab.str() + "'");
  if (indices.has_dim(vocab) || indices.has_dim(feature))
    throw Error("Embedding: indices " + dims_str(indices.dims()) + " must not have vocab '" + vocab.str() +
                "' or feature '" + feature.str() + "'");
  return gather(weight, indices, vocab);
}

std::string Embedding::extra_repr() const { return "vocab=" + vocab.str() + ", feature=" + feature.str(); }

}  // namespace dimx::nn

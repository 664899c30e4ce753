#pragma once
/// \file
/// Dropout (torch.nn.Dropout): in training mode zeroes each element with probability p and
/// scales the rest by 1 / (1 - p); in eval mode (or p = 0) returns x unchanged. Randomness
/// comes from the Generator passed to each call, never from hidden state. `broadcast_over`
/// shares one mask along those Dims (e.g. {time} for variational dropout). No parameters.
#include <dimx/nn/module.h>

namespace dimx::nn {

/// Dropout with an explicit Generator (see the file comment).
struct Dropout : Module {
  double p;             ///< the probability of zeroing an element, in [0, 1]
  Dims broadcast_over;  ///< Dims along which one mask is shared

  /// p must be in [0, 1].
  explicit Dropout(double p = 0.5, Dims broadcast_over = {});

  /// x with dropout drawn from `gen` in training mode; x itself in eval mode or if p = 0.
  Tensor operator()(const Tensor& x, Generator& gen) const;
  /// "p=..." (and ", broadcast_over=..." if set), for describe().
  std::string extra_repr() const;
};

}  // namespace dimx::nn

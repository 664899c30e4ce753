#pragma once
/// \file
/// Dropout (torch.nn.Dropout): in training mode zeroes each element with probability p and
/// scales the rest by 1 / (1 - p); in eval mode (or p = 0) returns x unchanged. Randomness
/// comes from the Generator passed to each call, never from hidden state. `broadcast_over`
/// shares one mask along those Dims (e.g. {time} for variational dropout). No parameters.
#include <dimx/nn/module.h>

namespace dimx::nn {

struct Dropout : Module {
  double p;
  Dims broadcast_over;

  explicit Dropout(double p = 0.5, Dims broadcast_over = {});

  Tensor operator()(const Tensor& x, Generator& gen) const;
  std::string extra_repr() const;
};

}  // namespace dimx::nn

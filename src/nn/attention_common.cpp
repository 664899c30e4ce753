#include "attention_common.h"
#include <dimx/autograd.h>

#include <dimx/shape.h>

#include <cmath>

#include "tensor_impl.h"

namespace dimx::nn {

int64_t positive_heads(const char* op, int64_t heads) {
  if (heads <= 0) fail(std::string(op) + ": num_heads must be positive, got " + std::to_string(heads));
  return heads;
}

int64_t size_per_head(const char* op, const char* what, const Dim& total, int64_t heads) {
  positive_heads(op, heads);
  if (total.is_dynamic() || total.size() % heads != 0)
    fail(std::string(op) + ": " + what + " '" + total.str() + "' is not a multiple of num_heads " +
         std::to_string(heads));
  return total.size() / heads;
}

void glorot_uniform(Tensor& t, int64_t fan_in, int64_t fan_out, Generator& gen) {
  NoGradGuard ng;
  const double bound = std::sqrt(6.0 / double(fan_in + fan_out));
  t.copy_from(random_uniform(t.dims(), gen, -bound, bound, t.dtype()));
}

void glorot_linear(Linear& l, Generator& gen) {
  glorot_uniform(l.weight, l.in_dim.size(), l.out_dim.size(), gen);
  NoGradGuard ng;
  if (l.bias) l.bias->copy_from(Tensor::zeros(l.bias->dims(), l.bias->dtype()).to(l.bias->device()));
}

std::array<Tensor, 3> split_qkv(const Tensor& h, const Dim& per_head, const Dim& dk, const Dim& dv) {
  const int64_t k = dk.size(), v = dv.size();
  return {slice(h, per_head, 0, k, 1, dk).first, slice(h, per_head, k, 2 * k, 1, dk).first,
          slice(h, per_head, 2 * k, 2 * k + v, 1, dv).first};
}

}  // namespace dimx::nn

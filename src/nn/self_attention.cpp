#include <dimx/elementwise.h>
#include <dimx/nn/self_attention.h>
#include <dimx/shape.h>

#include <cmath>

#include "tensor_impl.h"

namespace dimx::nn {

namespace {

int64_t per_head(const char* what, const Dim& total, int64_t heads) {
  if (heads <= 0) fail("SelfAttention: num_heads must be positive, got " + std::to_string(heads));
  if (total.is_dynamic() || total.size() % heads != 0)
    fail(std::string("SelfAttention: ") + what + " '" + total.str() + "' is not a multiple of num_heads " +
         std::to_string(heads));
  return total.size() / heads;
}

}  // namespace

SelfAttention::SelfAttention(Dim in, std::optional<Dim> proj_dim, Dim kt, Dim vt, int64_t num_heads, Generator& gen,
                             bool with_bias, double dropout, bool dropout_broadcast, DType dtype)
    : in_dim(in),
      key_dim_total(kt),
      value_dim_total(vt),
      heads(num_heads, "heads"),
      key_dim_per_head(per_head("key_dim_total", kt, num_heads), kt.name() + "_per_head"),
      value_dim_per_head(per_head("value_dim_total", vt, num_heads), vt.name() + "_per_head"),
      qkv_dim(2 * kt.size() + vt.size(), "qkv"),
      qkv_per_head(2 * key_dim_per_head.size() + value_dim_per_head.size(), "qkv_per_head"),
      att_dropout(dropout),
      att_dropout_broadcast(dropout_broadcast),
      qkv(in, qkv_dim, gen, with_bias, dtype) {
  if (proj_dim) proj.emplace(vt, *proj_dim, gen, with_bias, dtype);
  reset_parameters(gen);
}

void SelfAttention::reset_parameters(Generator& gen) {
  // Glorot-uniform qkv weight, zero bias (proj keeps Linear's default).
  double bound = std::sqrt(6.0 / double(in_dim.size() + qkv_dim.size()));
  qkv.weight.copy_from(random_uniform(qkv.weight.dims(), gen, -bound, bound, qkv.weight.dtype()));
  if (qkv.bias) qkv.bias->copy_from(Tensor::zeros(qkv.bias->dims(), qkv.bias->dtype()));
}

Tensor SelfAttention::operator()(const Tensor& x, const Dim& axis, Generator* gen) const {
  check_defined("SelfAttention", x);
  check_has_dim("SelfAttention", x, axis);
  check_has_dim("SelfAttention", x, in_dim);
  Tensor h = split_dims(qkv(x), qkv_dim, {heads, qkv_per_head});
  const int64_t dk = key_dim_per_head.size(), dv = value_dim_per_head.size();
  Tensor q = slice(h, qkv_per_head, 0, dk, 1, key_dim_per_head).first;
  Tensor k = slice(h, qkv_per_head, dk, 2 * dk, 1, key_dim_per_head).first;
  Tensor v = slice(h, qkv_per_head, 2 * dk, 2 * dk + dv, 1, value_dim_per_head).first;
  DotAttentionOptions o;
  o.att_dropout = att_dropout;
  o.att_dropout_broadcast = att_dropout_broadcast;
  o.gen = gen;
  o.training = training;
  Tensor out = dot_attention(q, k, v, key_dim_per_head, axis, o);
  out = merge_dims(out, {heads, value_dim_per_head}, value_dim_total).first;
  return proj ? (*proj)(out) : out;
}

}  // namespace dimx::nn

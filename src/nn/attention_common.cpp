#include "attention_common.h"
#include <dimx/autograd.h>

#include <dimx/elementwise.h>
#include <dimx/shape.h>

#include <cmath>
#include <limits>

#include <dimx/nn/attention.h>

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

void glorot_uniform(Tensor& t, int64_t fan_in, int64_t fan_out, Generator& gen, double gain) {
  NoGradGuard ng;
  const double bound = gain * std::sqrt(6.0 / double(fan_in + fan_out));
  t.copy_from(random_uniform(t.dims(), gen, -bound, bound, t.dtype()).to(t.device()));
}

void glorot_normal(Tensor& t, int64_t fan_in, int64_t fan_out, Generator& gen, double gain) {
  NoGradGuard ng;
  const double std = gain * std::sqrt(2.0 / double(fan_in + fan_out));
  t.copy_from(random_normal(t.dims(), gen, 0.0, std, t.dtype()).to(t.device()));
}

KeyPadding key_padding(const char* op, const Tensor& mask, const Dim& axis, DType dtype) {
  check_defined(op, mask);
  if (mask.dtype() != DType::boolean)
    fail(std::string(op) + ": key_padding_mask must be bool (true = pad), got " + mask.str());
  check_has_dim(op, mask, axis, "key_padding_mask");
  const Dims rest = minus_dims(mask.dims(), {axis});
  Dims order = rest;
  order.push_back(axis);
  const std::vector<int32_t> m = mask.astype(DType::i32).to_vector<int32_t>(order);
  const int64_t n = axis.extent();
  std::vector<int32_t> len(m.size() / size_t(std::max<int64_t>(n, 1)));
  bool suffix = true;
  for (size_t r = 0; r < len.size() && suffix; ++r) {
    int64_t first = n;
    for (int64_t j = 0; j < n; ++j)
      if (m[r * size_t(n) + size_t(j)]) {
        first = j;
        break;
      }
    for (int64_t j = first; j < n; ++j) suffix = suffix && m[r * size_t(n) + size_t(j)];
    len[r] = int32_t(first);
  }
  if (!suffix) return {axis, where(mask, -std::numeric_limits<double>::infinity(), Tensor::scalar(0, dtype, mask.device()))};
  Tensor lengths = Tensor::from_vector<int32_t>(rest, len);
  if (axis.is_dynamic()) lengths = minimum(lengths, axis.lengths(), /*allow_broadcast_all=*/true);
  return {Dim(lengths, axis.name()), Tensor()};
}

Tensor onto_keys(const char* op, const char* what, Tensor t, const Dim& keys, const Dims& known, int64_t full_extent) {
  if (!t.defined()) return t;
  Dim from = keys;
  for (const Dim& d : t.dims())
    if (d != keys && !contains(known, d)) from = d;
  if (from != keys && from.extent() == full_extent && keys.extent() < full_extent) {
    auto [ts, td] = slice(t, from, 0, keys.extent());
    t = ts;
    from = td;
  }
  if (from != keys) {
    if (from.extent() != keys.extent())
      fail(std::string(op) + ": " + what + " " + t.str() + " has key Dim '" + from.str() + "', but the keys are '" +
           keys.str() + "'");
    t = replace_dim(t, from, keys).first;
  }
  for (const Dim& d : t.dims())
    if (d != keys && !contains(known, d))
      fail(std::string(op) + ": " + what + " " + t.str() + " has a Dim '" + d.str() + "' that is not among " +
           dims_str(known) + " and the keys '" + keys.str() + "'");
  return t;
}

const Dim& frame_axis() {
  static const Dim d(1, "step");
  return d;
}

QueryFrames query_frames(const char* op, const Tensor& query, const Dim& query_axis, const Dim& embed) {
  check_defined(op, query);
  check_has_dim(op, query, embed, "query");
  if (query_axis != single_step_dim()) {
    check_has_dim(op, query, query_axis, "query");
    return {query, query_axis, false};
  }
  return {expand_dim(query, frame_axis()), frame_axis(), true};
}

PaddedKeys pad_keys(const char* op, const Tensor& mask0, Tensor& k, Tensor& v, const Dim& axis, const Dim& query_axis,
                    DType dtype, bool decoding) {
  if (!mask0.defined()) return {axis, Tensor()};
  if (decoding && axis == query_axis)
    fail(std::string(op) + ": when decoding self-attention with a state, padding is the query axis's lengths (a "
                           "dynamic Dim), not a key_padding_mask");
  Tensor mask = mask0;
  if (axis != query_axis && mask.has_dim(query_axis) && !mask.has_dim(axis))
    mask = replace_dim(mask, query_axis, axis).first;
  KeyPadding kp = key_padding(op, mask, axis, dtype);
  if (kp.additive.defined()) {
    if (decoding) fail(std::string(op) + ": with a decoding state the key_padding_mask must pad only each sequence's end");
    return {axis, kp.additive};
  }
  k = to_key_axis(k, axis, kp.axis);
  v = to_key_axis(v, axis, kp.axis);
  return {kp.axis, Tensor()};
}

Tensor score_mask(const char* op, const Tensor& mask, DType dtype, const Dim& keys, const Dims& known, int64_t full_extent) {
  if (!mask.defined()) return mask;
  Tensor t = mask.dtype() == DType::boolean
                 ? where(mask, -std::numeric_limits<double>::infinity(), Tensor::scalar(0, dtype, mask.device()))
                 : mask;
  if (t.dtype() != dtype) fail(std::string(op) + ": attn_mask " + mask.str() + " must be bool or " + dtype_name(dtype));
  return onto_keys(op, "attn_mask", t, keys, known, full_extent);
}

Tensor to_key_axis(const Tensor& t, const Dim& from, const Dim& to) {
  if (!t.defined() || !t.has_dim(from) || from == to) return t;
  return slice(t, from, 0, to.extent(), 1, to).first;
}

void glorot_linear(Linear& l, Generator& gen) {
  glorot_uniform(l.weight, l.in_dim.size(), l.out_dim.size(), gen);
  NoGradGuard ng;
  if (l.bias) l.bias->copy_from(Tensor::zeros(l.bias->dims(), l.bias->dtype(), l.bias->device()));
}

std::array<Tensor, 3> split_qkv(const Tensor& h, const Dim& per_head, const Dim& dk, const Dim& dv) {
  const int64_t k = dk.size(), v = dv.size();
  return {slice(h, per_head, 0, k, 1, dk).first, slice(h, per_head, k, 2 * k, 1, dk).first,
          slice(h, per_head, 2 * k, 2 * k + v, 1, dv).first};
}

}  // namespace dimx::nn

#include <dimx/autograd.h>
#include <dimx/elementwise.h>
#include <dimx/nn/rwkv.h>
#include <dimx/shape.h>

#include <cmath>
#include <vector>

#include "tensor_impl.h"

namespace dimx::nn::rwkv {

namespace {

constexpr const char* kName = "rwkv::SelfAttention";

Linear make_linear(const Dim& in, const Dim& out, Generator& gen, DType dtype) {
  if (in == out)
    fail(std::string(kName) + ": size and attention must be distinct Dims, got '" + in.str() +
         "' for both (use attention = size.copy())");
  return Linear(in, out, gen, true, dtype);
}

}  // namespace

SelfAttention::SelfAttention(Dim size_, Dim attention_, int64_t context, int64_t block, int64_t blocks, Generator& gen,
                             DType dtype)
    : size(size_),
      attention(attention_),
      context_size(context),
      block_id(block),
      num_blocks(blocks),
      proj_key(make_linear(size_, attention_, gen, dtype)),
      proj_value(make_linear(size_, attention_, gen, dtype)),
      proj_receptance(make_linear(size_, attention_, gen, dtype)),
      proj_output(make_linear(attention_, size_, gen, dtype)) {
  if (blocks < 1 || block < 0 || block >= blocks)
    fail(std::string(kName) + ": need 0 <= block_id < num_blocks, got block_id " + std::to_string(block) +
         ", num_blocks " + std::to_string(blocks));
  time_decay = Tensor::zeros({attention}, dtype).with_requires_grad();
  time_first = Tensor::zeros({attention}, dtype).with_requires_grad();
  for (Tensor* p : {&time_mix_key, &time_mix_value, &time_mix_receptance})
    *p = Tensor::zeros({mix_batch, mix_time, size}, dtype).with_requires_grad();
  reset_parameters(gen);
}

void SelfAttention::reset_parameters(Generator&) {
  NoGradGuard ng;
  const int64_t C = size.size(), A = attention.size();
  const double r0 = num_blocks > 1 ? double(block_id) / double(num_blocks - 1) : 0.0;
  const double r1 = 1.0 - double(block_id) / double(num_blocks);
  std::vector<double> decay(static_cast<size_t>(A)), first(static_cast<size_t>(A));
  std::vector<double> mk(static_cast<size_t>(C)), mv(static_cast<size_t>(C)), mr(static_cast<size_t>(C));
  for (int64_t h = 0; h < A; ++h) {
    const double frac = A > 1 ? double(h) / double(A - 1) : 0.0;
    decay[size_t(h)] = -5 + 8 * std::pow(frac, 0.7 + 1.3 * r0);
    first[size_t(h)] = std::log(0.3) + double((h + 1) % 3 - 1) * 0.5;
  }
  for (int64_t i = 0; i < C; ++i) {
    const double tw = double(i) / double(C);
    mk[size_t(i)] = std::pow(tw, r1);
    mv[size_t(i)] = std::pow(tw, r1) + 0.3 * r0;
    mr[size_t(i)] = std::pow(tw, 0.5 * r1);
  }
  auto set = [](const Tensor& p, const std::vector<double>& v) {
    p.copy_from(Tensor::from_vector<double>(p.dims(), v).to(p.device()));
  };
  set(time_decay, decay);
  set(time_first, first);
  set(time_mix_key, mk);
  set(time_mix_value, mv);
  set(time_mix_receptance, mr);
}

std::pair<Tensor, State> SelfAttention::operator()(const Tensor& x, const Dim& axis,
                                                   const std::optional<State>& state) const {
  check_defined(kName, x);
  check_has_dim(kName, x, axis);
  check_has_dim(kName, x, size);
  if (x.has_dim(attention))
    fail(std::string(kName) + ": x = " + dims_str(x.dims()) + " already has the attention Dim '" + attention.str() + "'");
  Dims batch = minus_dims(x.dims(), {axis, size});
  const Device dev = x.device();

  // Time shift: the previous frame, the state's last x before the first one.
  Tensor sx = shift_right(x, axis, 1);
  if (state) {
    check_defined(kName, state->x);
    Dims want = batch;
    want.push_back(size);
    if (!(state->x.ndim() == want.size() && contains_all(state->x.dims(), want)))
      fail(std::string(kName) + ": state.x must have the batch Dims plus size " + dims_str(want) + ", got " +
           dims_str(state->x.dims()));
    sx = where(equal(range_over_dim(axis, DType::i32, dev), Tensor::scalar(0, DType::i32, dev)), state->x, sx);
  }
  auto mix = [&](const Tensor& m) {
    Tensor mc = squeeze(squeeze(m, mix_batch), mix_time);
    return x * mc + sx * (1.0 - mc);
  };
  Tensor k = proj_key(mix(time_mix_key));
  Tensor v = proj_value(mix(time_mix_value));
  Tensor r = sigmoid(proj_receptance(mix(time_mix_receptance)));
  std::optional<WkvState> s_in;
  if (state) s_in = WkvState{state->num, state->den, state->max};
  WkvResult att = wkv(time_decay, time_first, k, v, axis, attention, s_in);
  Tensor out = proj_output(r * att.y);

  // The new last x: each sequence's last valid frame (the old one for an empty sequence).
  Tensor prev = state ? state->x.detach() : Tensor::zeros(minus_dims(x.dims(), {axis}), x.dtype(), dev);
  Tensor last = prev;
  if (axis.extent() > 0) {
    NoGradGuard ng;
    Tensor len = axis.lengths(dev);
    Tensor idx = clip(len - 1.0, 0, double(axis.extent() - 1)).astype(DType::i64).with_sparse_dim(axis);
    last = where(len > 0.0, gather(x.detach(), idx), prev, true);
  }
  return {out, State{last, att.state.num, att.state.den, att.state.max}};
}

State SelfAttention::initial_state(const Dims& batch, Device device) const {
  Dims bx = batch;
  bx.push_back(size);
  WkvState s = wkv_initial_state(batch, attention, time_decay.dtype(), device);
  return {Tensor::zeros(bx, time_decay.dtype(), device), s.num, s.den, s.max};
}

std::string SelfAttention::extra_repr() const {
  return "size=" + size.str() + ", attention=" + attention.str() + ", context_size=" + std::to_string(context_size) +
         ", block_id=" + std::to_string(block_id) + ", num_blocks=" + std::to_string(num_blocks);
}

}  // namespace dimx::nn::rwkv

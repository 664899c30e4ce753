#include <dimx/autograd.h>
#include <dimx/elementwise.h>
#include <dimx/nn/activation.h>
#include <dimx/nn/rwkv.h>
#include <dimx/shape.h>

#include <cmath>

#include "tensor_impl.h"

namespace dimx::nn::rwkv {

namespace {
constexpr const char* kOp = "rwkv::SelfAttention";
}

SelfAttention::SelfAttention(Dim size_, Dim attention, int64_t context, int64_t block, int64_t blocks, Generator& gen,
                             DType dtype)
    : size(size_),
      attention_size(attention),
      context_size(context),
      block_id(block),
      num_blocks(blocks),
      proj_key(size_, attention, gen, true, dtype),
      proj_value(size_, attention, gen, true, dtype),
      proj_receptance(size_, attention, gen, true, dtype),
      proj_output(attention, size_, gen, true, dtype) {
  if (blocks < 1 || block < 0 || block >= blocks)
    fail(std::string(kOp) + ": block_id " + std::to_string(block) + " must be in [0, num_blocks = " +
         std::to_string(blocks) + ")");
  time_decay = Tensor::zeros({attention}, dtype).with_requires_grad();
  time_first = Tensor::zeros({attention}, dtype).with_requires_grad();
  for (Tensor* t : {&time_mix_key, &time_mix_value, &time_mix_receptance})
    *t = Tensor::zeros({mix_outer, mix_inner, size}, dtype).with_requires_grad();
  reset_parameters(gen);
}

void SelfAttention::reset_parameters(Generator&) {
  NoGradGuard ng;
  const int64_t C = size.size(), A = attention_size.size();
  const double r0 = num_blocks > 1 ? double(block_id) / double(num_blocks - 1) : 0.0;
  const double r1 = 1.0 - double(block_id) / double(num_blocks);
  std::vector<double> decay(static_cast<size_t>(A)), first(static_cast<size_t>(A));
  std::vector<double> mk(static_cast<size_t>(C)), mv(static_cast<size_t>(C)), mr(static_cast<size_t>(C));
  for (int64_t h = 0; h < A; ++h) {
    const double frac = A > 1 ? double(h) / double(A - 1) : 0.0;
    decay[size_t(h)] = -5.0 + 8.0 * std::pow(frac, 0.7 + 1.3 * r0);
    first[size_t(h)] = std::log(0.3) + (double((h + 1) % 3) - 1.0) * 0.5;
  }
  for (int64_t i = 0; i < C; ++i) {
    const double tw = double(i) / double(C);
    mk[size_t(i)] = std::pow(tw, r1);
    mv[size_t(i)] = std::pow(tw, r1) + 0.3 * r0;
    mr[size_t(i)] = std::pow(tw, 0.5 * r1);
  }
  auto set = [](Tensor& p, const std::vector<double>& vals) {
    p.copy_from(Tensor::from_vector<double>(p.dims(), vals).astype(p.dtype()).to(p.device()));
  };
  set(time_decay, decay);
  set(time_first, first);
  set(time_mix_key, mk);
  set(time_mix_value, mv);
  set(time_mix_receptance, mr);
}

State SelfAttention::default_initial_state(const Dims& batch_dims) const {
  Dims d = batch_dims;
  d.push_back(size);
  const DType dt = time_decay.dtype();
  const Device dev = time_decay.device();
  return {Tensor::zeros(d, dt).to(dev), wkv_initial_state(batch_dims, attention_size, dt, dev)};
}

std::pair<Tensor, State> SelfAttention::operator()(const Tensor& x0, const Dim& axis0, const State& state) const {
  check_defined(kOp, x0);
  check_has_dim(kOp, x0, size);
  check_defined(kOp, state.x_prev);
  const bool step = axis0 == single_step_dim();
  static const Dim one(1, "step");
  const Dim axis = step ? one : axis0;
  const Tensor x = step ? expand_dim(x0, one) : x0;
  check_has_dim(kOp, x, axis);
  for (const Dim& d : state.x_prev.dims())
    if (d != size && !x.has_dim(d))
      fail(std::string(kOp) + ": state.x_prev " + state.x_prev.str() + " has a Dim x " + x.str() + " lacks");

  // Time shift: frame t sees frame t - 1, frame 0 the state's last x.
  Tensor first = range_over_dim(axis, DType::i32).with_sparse_dim(std::nullopt).to(x.device()) < 1.0;
  Tensor sx = where(first, state.x_prev, shift_right(x, axis), true);
  auto mix = [&](const Tensor& m) {
    Tensor mm = squeeze(squeeze(m, mix_outer), mix_inner);
    return x * mm + sx * (1.0 - mm);
  };
  Tensor k = proj_key(mix(time_mix_key));
  Tensor v = proj_value(mix(time_mix_value));
  Tensor r = sigmoid(proj_receptance(mix(time_mix_receptance)));
  WkvOutput o = wkv(time_decay, time_first, k, v, axis, attention_size, state.wkv);
  Tensor out = proj_output(r.astype(o.y.dtype()) * o.y);

  // The last valid frame of each sequence becomes x_prev (sequences without frames keep theirs).
  Tensor len = axis.lengths();
  Tensor last = gather(x, (len - 1.0).with_sparse_dim(axis).to(x.device()), axis, /*clip_to_valid=*/true).detach();
  Tensor x_prev = axis.is_dynamic() ? where(len.to(x.device()) > 0.0, last, state.x_prev.astype(last.dtype()), true)
                                    : last;
  if (step) out = squeeze(out, one);
  return {out, State{x_prev, o.state}};
}

std::string SelfAttention::extra_repr() const {
  return "size=" + size.str() + ", attention_size=" + attention_size.str() + ", block " + std::to_string(block_id) +
         " of " + std::to_string(num_blocks) + ", context_size=" + std::to_string(context_size) + " (a hint)";
}

}  // namespace dimx::nn::rwkv

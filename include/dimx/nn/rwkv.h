#pragma once
// RWKV time mixing (RWKV-4's "SelfAttention", as in RWKV-LM and ESPnet), by Dim.
//
//   sx  = x shifted one frame back in time (the state's last x before the first frame)
//   xk  = x * time_mix_key + sx * (1 - time_mix_key), likewise xv, xr
//   k   = proj_key(xk), v = proj_value(xv), r = sigmoid(proj_receptance(xr))
//   out = proj_output(r * wkv(time_decay, time_first, k, v))      (see <dimx/wkv.h>)
//
// Parameters (the original state_dict names and shapes, so PyTorch checkpoints load by name):
// time_decay, time_first {attention_size}; time_mix_key, time_mix_value, time_mix_receptance
// [1, 1, size]; proj_key, proj_value, proj_receptance (size -> attention_size) and proj_output
// (attention_size -> size) with biases. reset_parameters follows RWKV-LM with two fixes:
// r0 = block_id / (num_blocks - 1) is 0 for a single block (the original divides by zero),
// and time_first = log(0.3) + zigzag (ESPnet and HF set it to all ones by mistake).
// context_size is kept as a hint only: the scan has no length limit.
//
// One call handles a whole sequence, a chunk continuing a state, or one frame (axis =
// single_step_dim(), x without a time Dim); the returned state continues after each
// sequence's last valid frame (padded frames are never used). Step by step == whole sequence.
// A carried state passes values, not gradients (training over chunks is truncated BPTT).
#include <dimx/nn/attention.h>
#include <dimx/nn/linear.h>
#include <dimx/nn/module.h>
#include <dimx/wkv.h>

namespace dimx::nn::rwkv {

struct State {
  Tensor x_prev;  // {batch..., size}: the last frame seen, input of the time shift
  WkvState wkv;   // {batch..., attention_size}
};

struct SelfAttention : Module {
  Dim size, attention_size;
  Dim mix_outer{1, "mix_outer"}, mix_inner{1, "mix_inner"};  // the [1, 1, size] mixes' leading Dims
  int64_t context_size, block_id, num_blocks;
  BOOST_HANA_DEFINE_STRUCT(SelfAttention, (Tensor, time_decay), (Tensor, time_first), (Tensor, time_mix_key),
                           (Tensor, time_mix_value), (Tensor, time_mix_receptance), (Linear, proj_key),
                           (Linear, proj_value), (Linear, proj_receptance), (Linear, proj_output));

  SelfAttention(Dim size, Dim attention_size, int64_t context_size, int64_t block_id, int64_t num_blocks,
                Generator& gen, DType dtype = DType::f32);
  // The time parameters as above (the projections keep Linear's init).
  void reset_parameters(Generator& gen);
  State default_initial_state(const Dims& batch_dims) const;
  // x {..., axis, size} (or {..., size} with axis = single_step_dim()) -> {..., axis, size}.
  std::pair<Tensor, State> operator()(const Tensor& x, const Dim& axis, const State& state) const;
  std::string extra_repr() const;
};

}  // namespace dimx::nn::rwkv

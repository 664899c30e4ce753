#pragma once
/// \file
/// RWKV-4 time mixing (ESPnet's rwkv SelfAttention, from RWKV-LM), on the WKV scan of dimx/wkv.h.
///
///   sx_t = x_{t-1} (sx_0 = 0, or the state's last x)
///   xk = x*mk + sx*(1-mk), likewise xv (mv) and xr (mr)
///   out = proj_output(sigmoid(proj_receptance(xr)) * wkv(time_decay, time_first,
///                                                         proj_key(xk), proj_value(xv)))
///
/// Parameters, with ESPnet's state_dict names and shapes (a checkpoint exported from PyTorch
/// loads by name with load_state):
///   time_decay {attention}, time_first {attention}
///   time_mix_key, time_mix_value, time_mix_receptance {mix_batch:1, mix_time:1, size}
///   proj_key, proj_value, proj_receptance  Linear(size -> attention): weight {attention, size}
///   proj_output                            Linear(attention -> size): weight {size, attention}
/// `size` and `attention` must be distinct Dims (attention = size.copy() for equal sizes).
///
/// reset_parameters follows RWKV-LM with two corrections (docs/tutorials/06-rwkv.md): the
/// ratio block_id / (num_blocks - 1) is 0 for a single block (the original divides by zero),
/// and time_first = log(0.3) + zigzag (ESPnet and HF set it to ones by mistake). The
/// projections keep Linear's initialization. `context_size` is only a hint: the scan has no
/// length limit.
#include <dimx/nn/linear.h>
#include <dimx/nn/module.h>
#include <dimx/wkv.h>

#include <optional>
#include <utility>

namespace dimx::nn::rwkv {

/// The decoding state of one block: the last input frame (batch Dims + size) for the time
/// shift, and the WKV state (num, den, max), each over the batch Dims + attention.
struct State {
  Tensor x, num, den, max;
};

struct SelfAttention : Module {
  Dim size, attention;
  Dim mix_batch{1, "mix_batch"}, mix_time{1, "mix_time"};
  int64_t context_size, block_id, num_blocks;
  BOOST_HANA_DEFINE_STRUCT(SelfAttention, (Tensor, time_decay), (Tensor, time_first), (Tensor, time_mix_key),
                           (Tensor, time_mix_value), (Tensor, time_mix_receptance), (Linear, proj_key),
                           (Linear, proj_value), (Linear, proj_receptance), (Linear, proj_output));

  SelfAttention(Dim size, Dim attention, int64_t context_size, int64_t block_id, int64_t num_blocks, Generator& gen,
                DType dtype = DType::f32);
  /// Sets the time_* parameters (deterministic; `gen` is unused, the projections keep theirs).
  void reset_parameters(Generator& gen);

  /// x {batch..., axis, size} -> (out {batch..., axis, size}, the state after the last valid
  /// frame). With a state the sequence continues it: one frame at a time (axis of size 1) or
  /// a chunk; without, it starts empty. Padded frames of a dynamic axis are skipped.
  std::pair<Tensor, State> operator()(const Tensor& x, const Dim& axis,
                                      const std::optional<State>& state = std::nullopt) const;

  /// The empty state over `batch` Dims: x = 0, (num, den, max) = (0, 0, -1e38).
  State initial_state(const Dims& batch, Device device = Device::cpu()) const;
  std::string extra_repr() const;
};

}  // namespace dimx::nn::rwkv

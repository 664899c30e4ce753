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
  /// \var x
  /// {batch..., size}: the last valid input frame
  /// \var num
  /// {batch..., attention}: the WKV numerator (scaled by e^max)
  /// \var den
  /// {batch..., attention}: the WKV denominator (scaled by e^max)
  /// \var max
  /// {batch..., attention}: the WKV running exponent
  Tensor x, num, den, max;
};

/// RWKV-4 time mixing (see the file comment).
struct SelfAttention : Module {
  /// \var size
  /// the model width C (input and output features)
  Dim size, attention;  ///< the WKV channels (output of proj_key, proj_value, proj_receptance)
  /// \var mix_batch
  /// size-1 leading Dim of the time_mix_* parameters
  Dim mix_batch{1, "mix_batch"}, mix_time{1, "mix_time"};  ///< size-1 second Dim of the time_mix_* parameters
  /// \var context_size
  /// the maximum context length (a hint only; unused by the scan)
  /// \var block_id
  /// this block's index in the model, in [0, num_blocks) (used by reset_parameters)
  int64_t context_size, block_id, num_blocks;  ///< the number of blocks in the model (used by reset_parameters)
  /// The parameters: time_decay, time_first {attention}; time_mix_key, time_mix_value,
  /// time_mix_receptance {mix_batch, mix_time, size}; proj_key, proj_value, proj_receptance,
  /// proj_output (Linear).
  BOOST_HANA_DEFINE_STRUCT(SelfAttention, (Tensor, time_decay), (Tensor, time_first), (Tensor, time_mix_key),
                           (Tensor, time_mix_value), (Tensor, time_mix_receptance), (Linear, proj_key),
                           (Linear, proj_value), (Linear, proj_receptance), (Linear, proj_output));

  /// Builds the block (size and attention distinct Dims; 0 <= block_id < num_blocks).
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
  /// The Dims and block settings, for printing the module.
  std::string extra_repr() const;
};

}  // namespace dimx::nn::rwkv

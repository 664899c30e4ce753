#pragma once
/// \file
/// WKV: the linear-attention scan of RWKV time mixing (RWKV-4), a differentiable primitive.
///
/// For each channel c of `channel` and each sequence (every other Dim of k is a batch Dim),
/// with the decay w = -exp(time_decay) < 0 (applied inside) and the bonus u = time_first:
///
///   y_t = (sum_{i<t} e^{(t-1-i)w + k_i} v_i + e^{u+k_t} v_t) / (sum_{i<t} e^{(t-1-i)w + k_i} + e^{u+k_t})
///
/// computed by the stable recurrence over the state (num, den, max), which stands for
/// num * e^max and den * e^max (see docs/tutorials/06-rwkv.md). A state carried in makes the
/// scan continue a sequence: scanning a sequence in pieces, or one frame at a time, with the
/// state passed along gives the scan of the whole. The empty state is (0, 0, -1e38).
///
/// Dims, not positions: k and v have the same Dims (any layout, any number of batch Dims);
/// time_decay and time_first have exactly {channel}; a state's tensors have the batch Dims plus
/// channel. A dynamic `axis` is honoured per sequence: frames past a sequence's length output
/// 0, get zero gradients and leave the state alone, so the returned state is the one after
/// each sequence's own last valid frame (its incoming state when the length is 0).
///
/// Gradients flow to time_decay, time_first, k and v (first order). The state is not
/// differentiable: a state passed in is a constant, the returned one carries no gradient.
/// dtypes: f32 and f64 on the CPU, f32 on CUDA (float32 math); bf16/f16 inputs are computed in
/// f32 and y is cast back. No length limit and no constraint on the number of channels; no
/// NaN or Inf for |k| up to 1e4 and any w < 0.
#include <dimx/tensor.h>

#include <optional>

namespace dimx {

/// The scan state carried between calls (the empty one is wkv_initial_state()).
struct WkvState {
  Tensor num, den, max;  ///< each over the batch Dims + channel
};

/// \var WkvState::num
/// The numerator sum, scaled by e^-max.
/// \var WkvState::den
/// The denominator sum, scaled by e^-max.
/// \var WkvState::max
/// The log of the scale shared by num and den.

/// What wkv() returns: the output and the state after the scan.
struct WkvResult {
  Tensor y;        ///< k's Dims, layout [batch..., axis, channel]
  WkvState state;  ///< after the last (valid) frame
};

/// The WKV scan of k and v along `axis` (see the file description), optionally continuing `state`.
WkvResult wkv(const Tensor& time_decay, const Tensor& time_first, const Tensor& k, const Tensor& v, const Dim& axis,
              const Dim& channel, const std::optional<WkvState>& state = std::nullopt);

/// The empty state (0, 0, -1e38) over `batch` Dims + channel.
WkvState wkv_initial_state(const Dims& batch, const Dim& channel, DType dtype = DType::f32,
                           Device device = Device::cpu());

}  // namespace dimx

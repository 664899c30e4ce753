#pragma once
// The WKV scan of RWKV's time mixing, as a differentiable op by Dim.
//
// For every batch entry and channel c of `channel`, with w = -exp(time_decay) < 0 and
// u = time_first, over the frames t of `axis`:
//   y_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (sum_{i<t} e^{(t-1-i) w + k_i} + e^{u + k_t})
// computed in the stable form: the state (num, den, max) holds the history's numerator and
// denominator scaled by e^{-max}, so no exponential overflows (|k| up to 1e4 and beyond).
// The state is not unique (num and den scale with e^{max}); compare states by num / den and
// log(den) + max. An empty history is (0, 0, -1e38).
//
// time_decay, time_first: {channel}. k, v: {batch..., axis, channel} (any layout, any batch
// Dims). `state` continues a previous call: {batch..., channel} each. For a dynamic `axis`,
// padded frames give y = 0 and the returned state is the one after each sequence's last valid
// frame. Gradients flow to time_decay, time_first, k and v (time_decay also through the decay
// of a carried state), not into or out of the states.
// Math is float32 (float64 if any input is float64; bf16/f16 inputs are computed in float32),
// and y and the state come in that dtype.
// CPU: sequential in time, vectorized across channels; CUDA: a chunked scan over time.
#include <dimx/tensor.h>

#include <optional>

namespace dimx {

struct WkvState {
  Tensor num, den, max;  // {batch..., channel}
};

struct WkvOutput {
  Tensor y;        // k's Dims, laid out as {batch..., axis, channel}
  WkvState state;  // after the last valid frame of each sequence
};

WkvOutput wkv(const Tensor& time_decay, const Tensor& time_first, const Tensor& k, const Tensor& v, const Dim& axis,
              const Dim& channel, const std::optional<WkvState>& state = std::nullopt);

// The empty history over `batch_dims` + {channel}.
WkvState wkv_initial_state(const Dims& batch_dims, const Dim& channel, DType dtype = DType::f32,
                           Device device = Device::cpu());

}  // namespace dimx

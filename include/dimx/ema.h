#pragma once
/// \file
/// A multi-head damped EMA (MEGA's, or any diagonal linear recurrence with a readout), a
/// differentiable primitive:
///
///   s[..., t, c, h] = decay[c, h] s[..., t - 1, c, h] + gain[c, h] x[..., t, c]     s[..., -1, c, h] = state
///   y[..., t, c]    = sum_h weight[c, h] s[..., t, c, h]
///
/// Without a state (zeros) this is causal_conv(x, K) with the untruncated kernel
/// K[j, c] = sum_h weight gain decay^j, computed as a scan: O(L H) work per channel and one read
/// of x, where the convolution costs O(L log L) through transforms (on CUDA the scan is split
/// into chunks of the sequence, each continued from the state its predecessors leave).
///
/// Dims: the channels are the Dims of gain other than `heads`; gain, decay and weight have the
/// same Dims {channels..., heads}; x has the channels, `axis` and any batch Dims; a state has
/// the batch Dims, the channels and heads. A dynamic `axis` is honoured per sequence: frames
/// past a sequence's length output 0, get zero gradients and leave the state alone, so the
/// returned state is the one after each sequence's last valid frame.
///
/// Gradients flow to x, gain, decay, weight and the incoming state, from y and from the
/// returned state (detach it to cut the graph between chunks). f32 and f64 on both devices;
/// bf16 and f16 are computed in f32.
#include <dimx/tensor.h>

namespace dimx {

/// What ema() returns: the output and the state after the scan.
struct EmaResult {
  Tensor y;      ///< x's Dims, in x's layout where the channels are innermost, else [batch..., axis, channels...]
  Tensor state;  ///< {batch..., channels..., heads}: after the last valid frame
};

/// The damped EMA of x along `axis` with `heads` heads (see the file description), optionally
/// continuing `state` (undefined: zeros).
EmaResult ema(const Tensor& x, const Tensor& gain, const Tensor& decay, const Tensor& weight, const Dim& axis,
              const Dim& heads, const Tensor& state = {});

}  // namespace dimx

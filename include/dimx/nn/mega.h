#pragma once
/// \file
/// MEGA's multi-head damped EMA (ESPnet's MultiHeadDampedEMA, after fairseq's MEGA).
///
///   p = sigmoid(damping_factor), q = 1 - p * sigmoid(decay_factor)          {size, heads}
///   K[d, l] = sum_h (p * beta)[d, h] q[d, h]^l gamma[d, h] * sqrt(1 / heads)   the EMA kernel
///   y = causal_conv(x with padded frames zeroed, K truncated to truncation_length)
///   out = act(y + x * residual_weight)                                          act: relu or silu
/// with beta = ema_expansion_matrix, gamma = kernel_projection_matrix. Untruncated, the same y
/// is the recurrence h = (p * beta) x + q h_prev, y = sum_h h gamma sqrt(1 / heads), which is
/// how it runs (dimx::ema, a scan) over a whole sequence and when continuing a state; with a
/// truncation_length shorter than the sequence, as the convolution. Decoding is always the
/// exact, untruncated EMA (as the original: truncation applies to the full-sequence path only).
///
/// Parameters (the original's names and shapes):
///   damping_factor, decay_factor, ema_expansion_matrix  {size, heads, one} [D, H, 1]
///   kernel_projection_matrix {size, heads} [D, H], residual_weight {size} [D]
/// reset_parameters(gen, val = 0, std1 = 0.2, std2 = 1): damping and decay ~ N(val, std1);
/// expansion ~ N(val, 0.02) + (1, -1, 1, ...) over heads; projection and residual ~ N(val, std2).
///
/// dimx's choices (docs/tutorials/09-mega-ema.md): the Dims make the original's output layout
/// ([L, B, D], documented as [B, L, D]) moot; the coefficients are never stale (the original
/// caches them across parameter updates); a state continues by one frame or by a chunk, and
/// after a padded sequence it is the state after its last valid frame.
#include <dimx/nn/module.h>

#include <optional>
#include <utility>

namespace dimx::nn::mega {

/// The activation applied to the output.
enum class Activation { relu, silu };

/// Options of MultiHeadDampedEMA.
struct Options {
  int64_t num_heads = 4;                      ///< EMA heads H per feature (> 0)
  Activation activation = Activation::relu;  ///< act of the output
  std::optional<int64_t> truncation_length;  ///< >= 1; the full-sequence kernel's length cap
  DType dtype = DType::f32;                   ///< the parameters' dtype (f32 or f64)
};

/// The EMA coefficients of compute_ema_coefficients().
struct Coefficients {
  /// \var p
  /// {size, heads}: the damping p = sigmoid(damping_factor)
  Tensor p, q;  ///< {size, heads}: the damping (p) and the previous step's weight (q)
};

/// MEGA's multi-head damped EMA (see the file comment).
struct MultiHeadDampedEMA : Module {
  /// \var size
  /// the features D of the input and output
  /// \var heads
  /// the EMA heads H (Options::num_heads)
  Dim size, heads, one{1, "one"};  ///< the size-1 last Dim of damping_factor, decay_factor, ema_expansion_matrix
  Options options;  ///< the options it was built with
  double scaling;   ///< sqrt(1 / heads), the kernel's scale
  /// The parameters: damping_factor, decay_factor, ema_expansion_matrix {size, heads, one},
  /// kernel_projection_matrix {size, heads}, residual_weight {size}.
  BOOST_HANA_DEFINE_STRUCT(MultiHeadDampedEMA, (Tensor, damping_factor), (Tensor, decay_factor),
                           (Tensor, ema_expansion_matrix), (Tensor, kernel_projection_matrix),
                           (Tensor, residual_weight));

  /// Builds the module over `size` features, initialized from gen.
  MultiHeadDampedEMA(Dim size, Generator& gen, const Options& options = {});
  /// Re-initializes the parameters as described in the file comment.
  void reset_parameters(Generator& gen, double val = 0, double std1 = 0.2, double std2 = 1);

  /// p = sigmoid(damping_factor), q = 1 - p * sigmoid(decay_factor), from the current parameters.
  Coefficients compute_ema_coefficients() const;
  /// The same (computed from the current parameters on every call: never stale).
  Coefficients get_ema_coefficients() const { return compute_ema_coefficients(); }
  /// The kernel over `length` taps: {size, length}.
  Tensor compute_ema_kernel(const Dim& length) const;
  /// One step: x {batch..., size}, state {batch..., size, heads} (undefined: zeros) ->
  /// (y {batch..., size} before the residual and the activation, the new state).
  std::pair<Tensor, Tensor> ema_one_step(const Tensor& x, const Tensor& state = {}) const;

  /// x {batch..., axis, size} (axis = single_step_dim(): one frame, no time Dim). Padding: the
  /// axis's lengths, or `mask` (bool {batch..., axis}, true = pad) whose frames are zeroed for
  /// the EMA (the residual reads x as given). With a state (from a previous call, or zeros from
  /// initial_state) the sequence continues it and the new state is returned; without, the
  /// (truncated) convolution runs and no state is returned, as the original.
  std::pair<Tensor, std::optional<Tensor>> operator()(const Tensor& x, const Dim& axis, const Tensor& mask = {},
                                                      const std::optional<Tensor>& state = std::nullopt) const;
  /// The zero state over `batch` Dims: {batch..., size, heads}.
  Tensor initial_state(const Dims& batch, Device device = Device::cpu()) const;
  /// The sizes and options, for printing the module.
  std::string extra_repr() const;
};

}  // namespace dimx::nn::mega

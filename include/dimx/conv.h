#pragma once
/// \file
/// Long causal convolution by Dim (MEGA's EMA, any causal filter):
///
///   y[..., t, c] = sum_{0 <= j < K, j <= t} kernel[j, c] x[..., t - j, c]
///
/// x {..., axis, ...}; kernel {kernel_axis, channels...}, where the channels are Dims of x other
/// than axis: each channel has its own taps, and the kernel is shared over x's other Dims (the
/// batch). K = kernel_axis's extent may be shorter than the sequence (a truncated filter) or
/// longer (taps past the sequence are unused). The result has x's Dims, laid out as
/// {batch..., axis, channels...}. Padded frames of a dynamic axis come after each sequence's
/// valid ones, so they never reach a valid output; they are zeroed first, so garbage there
/// (NaN) does not spread through an FFT either. Differentiable in x and the kernel. dtypes: f32
/// and f64; bf16 and f16 are computed in f32.
///
/// method: direct sums the taps (O(L K) per channel, best for short kernels); fft multiplies
/// transforms (FFTW on the CPU, cuFFT on CUDA: O(L log L)); automatic picks by size. Both give
/// the same result to rounding.
#include <dimx/tensor.h>

namespace dimx {

/// How causal_conv() computes: automatic, direct or fft (see the file description).
enum class ConvMethod { automatic, direct, fft };

/// The causal convolution of x along `axis` with `kernel` along `kernel_axis` (see the file description).
Tensor causal_conv(const Tensor& x, const Tensor& kernel, const Dim& axis, const Dim& kernel_axis,
                   ConvMethod method = ConvMethod::automatic);

}  // namespace dimx

#include <dimx/autograd.h>
#include <dimx/conv.h>

#include "autocast.h"
#include "autograd.h"
#include "backend.h"
#include "half_compute.h"
#include "padding.h"
#include "tensor_impl.h"

namespace dimx {

namespace {

constexpr const char* kOp = "causal_conv";

Dims cat(Dims a, const Dims& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The FFT pays off once the kernel is long: below these sizes the direct sum is as fast.
bool use_fft(ConvMethod m, int64_t L, int64_t K) {
  if (m != ConvMethod::automatic) return m == ConvMethod::fft;
  return K > 64 && L > 128;
}

}  // namespace

Tensor causal_conv(const Tensor& x0, const Tensor& kernel0, const Dim& axis, const Dim& kernel_axis, ConvMethod method) {
  if (autocast_widens({&x0, &kernel0}))
    return causal_conv(autocast_f32(x0), autocast_f32(kernel0), axis, kernel_axis, method);
  check_defined(kOp, x0);
  check_defined(kOp, kernel0);
  check_same_device(kOp, x0, kernel0);
  check_has_dim(kOp, x0, axis, "x");
  check_has_dim(kOp, kernel0, kernel_axis, "kernel");
  if (x0.has_dim(kernel_axis))
    fail(std::string(kOp) + ": kernel_axis '" + kernel_axis.str() + "' is also in x = " + x0.str());
  if (kernel0.has_dim(axis)) fail(std::string(kOp) + ": the kernel " + kernel0.str() + " has the time axis '" + axis.str() + "'");
  if (x0.dtype() != kernel0.dtype()) fail(std::string(kOp) + ": dtype mismatch, x = " + x0.str() + " vs kernel = " + kernel0.str());
  if (!is_float_like(x0.dtype())) fail(std::string(kOp) + ": needs f32, f64, bf16 or f16, got x = " + x0.str());
  if (kernel_axis.is_dynamic()) fail(std::string(kOp) + ": kernel_axis '" + kernel_axis.str() + "' must be static");
  const Dims channels = minus_dims(kernel0.dims(), {kernel_axis});
  for (const Dim& c : channels) check_has_dim(kOp, x0, c, "x");
  const Dims batch = minus_dims(x0.dims(), cat({axis}, channels));
  const Tensor axis_lengths = axis.lengths();  // named: a range-for over a temporary's member dangles
  for (const Dim& d : axis_lengths.dims())
    if (!contains(batch, d))
      fail(std::string(kOp) + ": the lengths of '" + axis.str() + "' are over " + dims_str(axis.lengths().dims()) +
           ", not batch Dims of x = " + x0.str());
  if (is_half(x0.dtype()))
    return round_to(causal_conv(widen_half(x0), widen_half(kernel0), axis, kernel_axis, method), x0.dtype());

  // Canonical operands: x [batch, L, channels], kernel [K, channels], padded frames zeroed.
  const Dims xorder = cat(cat(batch, {axis}), channels);
  const Tensor x = zero_padding(x0, axis).transpose_to(xorder).contiguous();
  const Tensor kernel = kernel0.transpose_to(cat({kernel_axis}, channels)).contiguous();
  backend::CausalConv a;
  a.B = checked_numel(kOp, batch);
  a.L = axis.extent();
  a.C = checked_numel(kOp, channels);
  a.Lk = kernel_axis.extent();
  a.fft = use_fft(method, a.L, a.Lk);
  Tensor y = empty(xorder, x.dtype(), x.device(), kOp);
  backend::backend_for(x.device()).causal_conv(x.dtype(), a, x.impl().data(), kernel.impl().data(), y.impl().data());
  if (!needs_grad({&x, &kernel})) return y;
  const bool need_x = x.requires_grad(), need_k = kernel.requires_grad();
  return record(kOp, y, {x, kernel}, [x, kernel, a, axis, xorder, need_x, need_k](const Tensor& g0) {
    // Gradients from the valid frames only: padded ones are selected out.
    const Tensor g = zero_padding(g0, axis).transpose_to(xorder).contiguous();
    backend::Backend& be = backend::backend_for(x.device());
    Tensor gx, gk;
    if (need_x) {
      backend::CausalConv adj = a;
      adj.anti_causal = true;
      gx = empty(xorder, x.dtype(), x.device(), kOp);
      be.causal_conv(x.dtype(), adj, g.impl().data(), kernel.impl().data(), gx.impl().data());
    }
    if (need_k) {
      gk = empty_like(kernel, kernel.dtype(), kOp);
      be.causal_conv_kernel_grad(x.dtype(), a, x.impl().data(), g.impl().data(), gk.impl().data());
    }
    return std::vector<Tensor>{gx, gk};
  });
}

}  // namespace dimx

// The multi-head damped EMA: resolves Dims to x's own layout (or a canonical [batch..., axis,
// channels...] one) with parameters [channels..., heads] and calls the backend's scan;
// gradients come from the backend's reverse scan.
#include <dimx/ema.h>

#include <dimx/reduce.h>

#include "autocast.h"
#include "autograd.h"
#include "backend.h"
#include "half_compute.h"
#include "tensor_impl.h"

namespace dimx {

namespace {

constexpr const char* kOp = "ema";

bool same_dim_set(const Dims& a, const Dims& b) { return a.size() == b.size() && contains_all(a, b); }

Dims cat(Dims a, const Dims& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

const void* ptr(const Tensor& t) { return t.defined() ? t.impl().data() : nullptr; }

}  // namespace

EmaResult ema(const Tensor& x0, const Tensor& gain0, const Tensor& decay0, const Tensor& weight0, const Dim& axis,
              const Dim& heads, const Tensor& state0) {
  if (autocast_widens({&x0, &gain0, &decay0, &weight0, &state0}))
    return ema(autocast_f32(x0), autocast_f32(gain0), autocast_f32(decay0), autocast_f32(weight0), axis, heads,
               autocast_f32(state0));
  for (const Tensor* t : {&x0, &gain0, &decay0, &weight0}) check_defined(kOp, *t);
  check_has_dim(kOp, x0, axis, "x");
  check_has_dim(kOp, gain0, heads, "gain");
  if (heads.is_dynamic()) fail(std::string(kOp) + ": heads '" + heads.str() + "' must be static");
  if (x0.has_dim(heads)) fail(std::string(kOp) + ": x = " + x0.str() + " has the heads Dim '" + heads.str() + "'");
  const Dims channels = minus_dims(gain0.dims(), {heads});
  const Dims params = cat(channels, {heads});  // the backend's [C, H] order
  if (contains(channels, axis)) fail(std::string(kOp) + ": gain " + gain0.str() + " has the time axis '" + axis.str() + "'");
  for (const Dim& c : channels) {
    check_has_dim(kOp, x0, c, "x");
    if (c.is_dynamic()) fail(std::string(kOp) + ": channel '" + c.str() + "' must be static");
  }
  const char* names[2] = {"decay", "weight"};
  const Tensor* others[2] = {&decay0, &weight0};
  for (int i = 0; i < 2; ++i)
    if (!same_dim_set(others[i]->dims(), params))
      fail(std::string(kOp) + ": " + names[i] + " " + others[i]->str() + " must have gain's Dims " + dims_str(params));
  const DType dt = x0.dtype();
  if (!is_float_like(dt)) fail(std::string(kOp) + ": needs f32, f64, bf16 or f16, got x = " + x0.str());
  for (const Tensor* t : {&gain0, &decay0, &weight0, &state0}) {
    if (!t->defined()) continue;
    check_same_device(kOp, x0, *t);
    if (t->dtype() != dt) fail(std::string(kOp) + ": dtype mismatch, x = " + x0.str() + " vs " + t->str());
  }
  if (is_half(dt)) {
    EmaResult r = ema(widen_half(x0), widen_half(gain0), widen_half(decay0), widen_half(weight0), axis, heads,
                      widen_half(state0));
    return {round_to(r.y, dt), round_to(r.state, dt)};
  }
  const Dims batch = minus_dims(x0.dims(), cat({axis}, channels));
  const Tensor axis_lengths = axis.lengths();  // named: a range-for over a temporary's member dangles
  for (const Dim& d : axis_lengths.dims())
    if (!contains(batch, d))
      fail(std::string(kOp) + ": the lengths of '" + axis.str() + "' are over " + dims_str(axis.lengths().dims()) +
           ", not batch Dims of x = " + x0.str());
  const Dims state_dims = cat(cat(batch, channels), {heads});
  if (state0.defined() && !same_dim_set(state0.dims(), state_dims))
    fail(std::string(kOp) + ": the state " + state0.str() + " must have x's batch Dims, the channels and heads " +
         dims_str(state_dims));

  // x as it is where its channels are innermost and contiguous (in gain's order) and its batch
  // Dims merge into one stride (y then shares its layout, so what follows y sees matching
  // layouts); else [batch..., axis, channels...]. Differentiable conversions: their own
  // gradients handle the layouts.
  int64_t ext, sc, sb, sl = x0.strides()[x0.axis_of(axis)];
  const bool as_is =
      x0.is_contiguous() && merged_stride(x0, channels, ext, sc) && (sc == 1 || ext <= 1) && merged_stride(x0, batch, ext, sb);
  const Dims xorder = as_is ? x0.dims() : cat(cat(batch, {axis}), channels);
  const Tensor x = x0.transpose_to(xorder);
  if (!as_is) {
    sl = checked_numel(kOp, channels);
    sb = sl * axis.extent();
  }
  const Tensor gain = gain0.transpose_to(params), decay = decay0.transpose_to(params), weight = weight0.transpose_to(params);
  const Tensor state = state0.defined() ? state0.transpose_to(state_dims) : Tensor();
  const Device dev = x.device();
  const Tensor lengths =
      axis.is_dynamic() ? broadcast_to_include(axis.lengths(dev).astype(DType::i64), batch).transpose_to(batch) : Tensor();

  backend::Ema a;
  a.B = checked_numel(kOp, batch);
  a.L = axis.extent();
  a.C = checked_numel(kOp, channels);
  a.H = heads.size();
  a.sb = sb;
  a.st = sl;
  a.x = ptr(x);
  a.gain = ptr(gain);
  a.decay = ptr(decay);
  a.weight = ptr(weight);
  a.state = ptr(state);
  a.lengths = static_cast<const int64_t*>(ptr(lengths));
  EmaResult r;
  r.y = empty(xorder, dt, dev, kOp);
  r.state = empty(state_dims, dt, dev, kOp);
  backend::backend_for(dev).ema_forward(dt, a, r.y.impl().data(), r.state.impl().data());
  if (!needs_grad({&x, &gain, &decay, &weight, &state})) return r;
  // Two nodes, one per output: the gradients are linear in (dL/dy, dL/dstate), so each node
  // runs the reverse scan for its own output (the other's gradient taken as zero) and the
  // engine sums them.
  const bool need_state = state.defined() && state.requires_grad();
  auto backward_for = [&](bool of_y) {
    // The closure holds every tensor `a` points into, so its pointers stay valid.
    return [of_y, a, x, gain, decay, weight, state, lengths, batch, params, state_dims, xorder,
            need_state](const Tensor& g) {
      const DType dt = x.dtype();
      const Device dev = x.device();
      const Tensor gout = of_y ? g.transpose_to(xorder) : g.transpose_to(state_dims);
      const Dims per_batch = cat(batch, params);
      Tensor gx = empty(xorder, dt, dev, kOp), ggain = empty(per_batch, dt, dev, kOp),
             gdecay = empty(per_batch, dt, dev, kOp), gweight = empty(per_batch, dt, dev, kOp);
      Tensor gstate = need_state ? empty(state_dims, dt, dev, kOp) : Tensor();
      backend::backend_for(dev).ema_backward(dt, a, of_y ? gout.impl().data() : nullptr,
                                             of_y ? nullptr : gout.impl().data(), gx.impl().data(),
                                             ggain.impl().data(), gdecay.impl().data(), gweight.impl().data(),
                                             need_state ? gstate.impl().data() : nullptr);
      if (!batch.empty()) {
        ggain = reduce(ggain, ReduceOp::sum, batch, false);
        gdecay = reduce(gdecay, ReduceOp::sum, batch, false);
        gweight = reduce(gweight, ReduceOp::sum, batch, false);
      }
      return std::vector<Tensor>{gx, ggain, gdecay, gweight, gstate};
    };
  };
  r.y = record(kOp, r.y, {x, gain, decay, weight, state}, backward_for(true));
  r.state = record("ema_state", r.state, {x, gain, decay, weight, state}, backward_for(false));
  return r;
}

}  // namespace dimx

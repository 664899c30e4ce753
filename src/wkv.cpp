#include <dimx/elementwise.h>
#include <dimx/reduce.h>
#include <dimx/wkv.h>

#include <algorithm>

#include "autograd.h"
#include "backend.h"
#include "tensor_impl.h"

namespace dimx {

namespace {

constexpr const char* kOp = "wkv";

void check_same_dims(const char* what, const Tensor& t, const Dims& want) {
  if (t.ndim() != want.size() || !contains_all(t.dims(), want))
    fail(std::string("wkv: ") + what + " " + t.str() + " must have the Dims " + dims_str(want));
}

}  // namespace

WkvState wkv_initial_state(const Dims& batch_dims, const Dim& channel, DType dtype, Device device) {
  Dims d = batch_dims;
  d.push_back(channel);
  return {Tensor::zeros(d, dtype).to(device), Tensor::zeros(d, dtype).to(device),
          Tensor::full(d, -1e38, dtype).to(device)};
}

WkvOutput wkv(const Tensor& time_decay, const Tensor& time_first, const Tensor& k0, const Tensor& v0, const Dim& axis,
              const Dim& channel, const std::optional<WkvState>& state) {
  for (const Tensor* t : {&time_decay, &time_first, &k0, &v0}) {
    check_defined(kOp, *t);
    check_same_device(kOp, k0, *t);
    if (!is_floating(t->dtype())) fail(std::string("wkv: needs floating tensors, got ") + t->str());
  }
  check_has_dim(kOp, k0, axis, "k");
  check_has_dim(kOp, k0, channel, "k");
  check_same_dims("v", v0, k0.dims());
  check_same_dims("time_decay", time_decay, {channel});
  check_same_dims("time_first", time_first, {channel});
  if (channel.is_dynamic()) fail("wkv: channel '" + channel.str() + "' must be static");
  const Dims batch = minus_dims(k0.dims(), {axis, channel});
  if (axis.is_dynamic() && !contains_all(batch, axis.lengths().dims()))
    fail("wkv: the lengths of axis '" + axis.str() + "' are over " + dims_str(axis.lengths().dims()) +
         ", not among the batch Dims " + dims_str(batch));
  Dims bc = batch;
  bc.push_back(channel);
  if (state)
    for (const Tensor* t : {&state->num, &state->den, &state->max}) {
      check_defined(kOp, *t);
      check_same_device(kOp, k0, *t);
      check_same_dims("state", *t, bc);
    }

  const bool f64 = time_decay.dtype() == DType::f64 || time_first.dtype() == DType::f64 || k0.dtype() == DType::f64 ||
                   v0.dtype() == DType::f64;
  const DType dt = f64 ? DType::f64 : DType::f32;
  const Device dev = k0.device();
  Dims order = batch;
  order.insert(order.end(), {axis, channel});
  // w = -exp(time_decay) by ops, so its gradient reaches time_decay by the chain rule.
  Tensor w = neg(exp(time_decay.astype(dt))).contiguous();
  Tensor u = time_first.astype(dt).contiguous();
  Tensor k = k0.astype(dt).transpose_to(order).contiguous();
  Tensor v = v0.astype(dt).transpose_to(order).contiguous();
  const int64_t B = numel_of(extents(batch)), T = axis.extent(), C = channel.size();
  Tensor lengths;
  if (axis.is_dynamic())
    lengths = broadcast_to_include(axis.lengths(), batch).transpose_to(batch).astype(DType::i64).contiguous().to(dev);
  std::array<Tensor, 3> in;
  if (state) {
    const Tensor* s[3] = {&state->num, &state->den, &state->max};
    for (int i = 0; i < 3; ++i) in[size_t(i)] = s[i]->detach().astype(dt).transpose_to(bc).contiguous();
  }
  const bool grad = needs_grad({&w, &u, &k, &v});
  Tensor y = empty(order, dt, dev), log_den = grad ? empty(order, dt, dev) : Tensor();
  std::array<Tensor, 3> out = {empty(bc, dt, dev), empty(bc, dt, dev), empty(bc, dt, dev)};
  backend::Wkv a{B, T, C, w.impl().data(), u.impl().data(), k.impl().data(), v.impl().data(),
                 lengths.defined() ? static_cast<const int64_t*>(lengths.data_ptr()) : nullptr,
                 {nullptr, nullptr, nullptr}, y.impl().data(), grad ? log_den.impl().data() : nullptr,
                 {out[0].impl().data(), out[1].impl().data(), out[2].impl().data()}};
  for (int i = 0; i < 3; ++i) a.state_in[i] = state ? in[size_t(i)].impl().data() : nullptr;
  if (T > 0) {
    backend::backend_for(dev).wkv_forward(dt, a);
  } else {
    WkvState s = state ? WkvState{in[0], in[1], in[2]} : wkv_initial_state(batch, channel, dt, dev);
    out = {s.num, s.den, s.max};
  }
  WkvOutput result{y, {out[0], out[1], out[2]}};
  if (!grad || T == 0) return result;
  result.y = record(kOp, y, {w, u, k, v}, [w, u, k, v, y, log_den, lengths, in, order, batch, bc, B, T, C, dt,
                                          dev](const Tensor& g0) {
    Tensor g = g0.astype(dt).transpose_to(order).contiguous();
    Tensor gk = empty(order, dt, dev), gv = empty(order, dt, dev), gw = empty(bc, dt, dev), gu = empty(bc, dt, dev);
    backend::Wkv a{B, T, C, w.impl().data(), u.impl().data(), k.impl().data(), v.impl().data(),
                   lengths.defined() ? static_cast<const int64_t*>(lengths.data_ptr()) : nullptr,
                   {nullptr, nullptr, nullptr}, y.impl().data(), log_den.impl().data(), {nullptr, nullptr, nullptr}};
    for (int i = 0; i < 3; ++i) a.state_in[i] = in[size_t(i)].defined() ? in[size_t(i)].impl().data() : nullptr;
    backend::WkvGrad gr{g.impl().data(), gk.impl().data(), gv.impl().data(), gw.impl().data(), gu.impl().data()};
    backend::backend_for(dev).wkv_backward(dt, a, gr);
    if (!batch.empty()) {
      gw = reduce_sum(gw, batch);
      gu = reduce_sum(gu, batch);
    }
    return std::vector<Tensor>{gw, gu, gk, gv};
  });
  return result;
}

}  // namespace dimx

// The WKV scan: resolves Dims to a canonical contiguous [batch..., axis, channel] layout and
// calls the backend's scan; gradients come from the backend's reverse scan.
#include <dimx/wkv.h>

#include <dimx/elementwise.h>
#include <dimx/reduce.h>

#include "autograd.h"
#include "backend.h"
#include "tensor_impl.h"

namespace dimx {

namespace {

constexpr const char* kOp = "wkv";

bool same_dim_set(const Dims& a, const Dims& b) { return a.size() == b.size() && contains_all(a, b); }

void check_param(const Tensor& p, const char* what, const Dim& channel) {
  check_defined(kOp, p);
  if (!(p.ndim() == 1 && p.has_dim(channel)))
    fail(std::string(kOp) + ": " + what + " must have exactly the channel Dim {" + channel.str() + "}, got " +
         dims_str(p.dims()));
}

void check_floating(const Tensor& t, const char* what) {
  if (!is_floating(t.dtype()) && !is_half(t.dtype()))
    fail(std::string(kOp) + ": " + what + " must be floating (f32, f64, bf16, f16), got " + t.str());
}

// t row-major in `order` (a view when it already is).
Tensor canonical(const Tensor& t, const Dims& order) { return t.transpose_to(order); }

// Per-sequence valid lengths of a dynamic axis, as contiguous i64 over `batch` on `device`.
Tensor batch_lengths(const Dim& axis, const Dims& batch, Device device) {
  Tensor l = axis.lengths();
  if (!contains_all(batch, l.dims()))
    fail(std::string(kOp) + ": the lengths of dynamic axis '" + axis.str() + "' are over " + dims_str(l.dims()) +
         ", which k lacks (k's batch Dims: " + dims_str(batch) + ")");
  l = broadcast_to_include(axis.lengths(device), batch);
  return canonical(l.astype(DType::i64), batch);
}

const void* ptr(const Tensor& t) { return t.defined() ? t.impl().data() : nullptr; }


// The scan on canonical operands: td, u {channel}; k, v [batch..., axis, channel] contiguous;
// all of one dtype. Records the gradients of td, u, k and v.
WkvResult scan(const Tensor& td, const Tensor& u, const Tensor& k, const Tensor& v, const Dims& batch, const Dim& axis,
               const Dim& channel, const std::optional<WkvState>& state) {
  const DType dt = k.dtype();
  const Device dev = k.device();
  Dims bc = batch;
  bc.push_back(channel);
  std::array<Tensor, 3> s_in;
  if (state) {
    const Tensor* parts[3] = {&state->num, &state->den, &state->max};
    const char* names[3] = {"state.num", "state.den", "state.max"};
    for (int i = 0; i < 3; ++i) {
      check_defined(kOp, *parts[i]);
      if (!same_dim_set(parts[i]->dims(), bc))
        fail(std::string(kOp) + ": " + names[i] + " must have the batch Dims plus channel " + dims_str(bc) + ", got " +
             dims_str(parts[i]->dims()));
      check_same_device(kOp, k, *parts[i]);
      check_floating(*parts[i], names[i]);
      s_in[size_t(i)] = canonical(parts[i]->detach().astype(dt), bc);
    }
  }
  Tensor lengths = axis.is_dynamic() ? batch_lengths(axis, batch, dev) : Tensor();

  backend::Wkv a;
  a.B = 1;
  for (const Dim& d : batch) a.B *= d.extent();
  a.T = axis.extent();
  a.C = channel.size();
  a.time_decay = ptr(td);
  a.u = ptr(u);
  a.k = ptr(k);
  a.v = ptr(v);
  a.lengths = static_cast<const int64_t*>(ptr(lengths));
  for (int i = 0; i < 3; ++i) a.state[i] = ptr(s_in[size_t(i)]);

  const bool grad = needs_grad({&td, &u, &k, &v});
  Tensor y = empty(k.dims(), dt, dev, "wkv");
  Tensor log_den = grad ? empty(k.dims(), dt, dev, "wkv") : Tensor();
  WkvResult r;
  // One allocation for the three state tensors.
  Dims bc3 = bc;
  bc3.insert(bc3.begin(), Dim(3, "wkv_state"));
  Tensor st = empty(bc3, dt, dev, "wkv");
  const int64_t bcn = a.B * a.C;
  Strides sst(st.strides().begin() + 1, st.strides().end());
  r.state = {make_view(st, bc, sst, 0), make_view(st, bc, sst, bcn), make_view(st, bc, sst, 2 * bcn)};
  void* so[3] = {r.state.num.impl().data(), r.state.den.impl().data(), r.state.max.impl().data()};
  backend::Backend& be = backend::backend_for(dev);
  be.wkv_forward(dt, a, y.impl().data(), grad ? log_den.impl().data() : nullptr, so);
  r.y = y;
  if (!grad) return r;
  r.y = record(kOp, y, {td, u, k, v}, [=](const Tensor& g) {
    Tensor gy = canonical(g.astype(dt), k.dims());
    Tensor gk = empty(k.dims(), dt, dev, "wkv"), gv = empty(k.dims(), dt, dev, "wkv");
    Tensor gtd = empty(bc, dt, dev, "wkv"), gu = empty(bc, dt, dev, "wkv");
    backend::Wkv b = a;
    b.lengths = static_cast<const int64_t*>(ptr(lengths));  // keeps `lengths` and `s_in` alive
    for (int i = 0; i < 3; ++i) b.state[i] = ptr(s_in[size_t(i)]);
    backend::backend_for(dev).wkv_backward(dt, b, y.impl().data(), log_den.impl().data(), gy.impl().data(),
                                           gk.impl().data(), gv.impl().data(), gtd.impl().data(), gu.impl().data());
    NoGradGuard ng;
    if (!batch.empty()) {
      gtd = reduce(gtd, ReduceOp::sum, batch, false);
      gu = reduce(gu, ReduceOp::sum, batch, false);
    }
    return std::vector<Tensor>{gtd, gu, gk, gv};
  });
  return r;
}

}  // namespace

WkvResult wkv(const Tensor& time_decay, const Tensor& time_first, const Tensor& k, const Tensor& v, const Dim& axis,
              const Dim& channel, const std::optional<WkvState>& state) {
  check_defined(kOp, k);
  check_defined(kOp, v);
  if (axis == channel) fail(std::string(kOp) + ": axis and channel are the same Dim '" + axis.str() + "'");
  check_has_dim(kOp, k, axis, "k");
  check_has_dim(kOp, k, channel, "k");
  if (!same_dim_set(k.dims(), v.dims()))
    fail(std::string(kOp) + ": k and v must have the same Dims, got k = " + dims_str(k.dims()) +
         ", v = " + dims_str(v.dims()));
  if (channel.is_dynamic()) fail(std::string(kOp) + ": channel '" + channel.str() + "' must be static");
  check_param(time_decay, "time_decay", channel);
  check_param(time_first, "time_first", channel);
  for (const Tensor* t : {&v, &time_decay, &time_first}) check_same_device(kOp, k, *t);
  check_floating(k, "k");
  check_floating(v, "v");
  check_floating(time_decay, "time_decay");
  check_floating(time_first, "time_first");
  const DType out_dt = k.dtype();
  const DType dt = k.dtype() == DType::f64 ? DType::f64 : DType::f32;
  if (dt == DType::f64 && k.device().type != Device::Type::cpu)
    fail(std::string(kOp) + ": f64 is supported on the CPU only; astype(f32) first (k = " + k.str() + ")");

  Dims batch = minus_dims(k.dims(), {axis, channel});
  Dims order = batch;
  order.push_back(axis);
  order.push_back(channel);
  // Differentiable conversions (no-ops when already in place): their gradients take care of
  // layouts and dtypes. The backends apply w = -exp(time_decay) themselves.
  Tensor td = time_decay.astype(dt).contiguous(), u = time_first.astype(dt).contiguous();
  Tensor kc = canonical(k.astype(dt), order), vc = canonical(v.astype(dt), order);
  WkvResult r = scan(td, u, kc, vc, batch, axis, channel, state);
  if (out_dt != dt) r.y = r.y.astype(out_dt);
  return r;
}

WkvState wkv_initial_state(const Dims& batch, const Dim& channel, DType dtype, Device device) {
  Dims bc = batch;
  bc.push_back(channel);
  return {Tensor::zeros(bc, dtype, device), Tensor::zeros(bc, dtype, device),
          Tensor::full(bc, -1e38, dtype, device)};
}

}  // namespace dimx

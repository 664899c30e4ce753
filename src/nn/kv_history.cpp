#include "kv_history.h"

#include <dimx/autocast.h>
#include <dimx/elementwise.h>
#include <dimx/shape.h>

#include "tensor_impl.h"

namespace dimx::nn {

CausalSelfAttentionState empty_kv(const Dims& batch_dims, const Dim& heads, const Dim& dk, const Dim& dv, DType dtype,
                                  Device device) {
  for (const Dim& d : batch_dims)
    if (d.is_dynamic()) fail("default_initial_state: batch Dim '" + d.str() + "' must be static");
  Dim accum(Tensor::zeros(batch_dims, DType::i32), "accum");
  Dims kd = batch_dims, vd = batch_dims;
  kd.insert(kd.end(), {accum, heads, dk});
  vd.insert(vd.end(), {accum, heads, dv});
  return {Tensor::zeros(kd, dtype, device), Tensor::zeros(vd, dtype, device), accum};
}

KvHistory append_kv(const char* op, const CausalSelfAttentionState& st0, const Tensor& k, const Tensor& v,
                    const Dim& axis, bool causal) {
  check_defined(op, st0.k_accum);
  check_defined(op, st0.v_accum);
  // Under autocast the new keys come in the low dtype: a floating history (the f32 initial
  // state, or frames of an earlier step) joins them in theirs.
  CausalSelfAttentionState st = st0;
  if (autocast_enabled() && is_float_like(st.k_accum.dtype()) && is_float_like(k.dtype())) {
    st.k_accum = st.k_accum.astype(k.dtype());
    st.v_accum = st.v_accum.astype(v.dtype());
  }
  check_has_dim(op, st.k_accum, st.accum_axis, "state.k_accum");
  check_has_dim(op, st.v_accum, st.accum_axis, "state.v_accum");
  const bool step = axis == single_step_dim();
  // The state must belong to this module and this batch: its Dims, without the history axis,
  // are exactly the new frames' Dims without the time axis (batch Dims, heads, head sizes).
  auto same_set = [](const Dims& a, const Dims& b) { return a.size() == b.size() && contains_all(a, b); };
  const Dims k_rest = minus_dims(k.dims(), {axis}), v_rest = minus_dims(v.dims(), {axis});
  if (!same_set(minus_dims(st.k_accum.dims(), {st.accum_axis}), k_rest) ||
      !same_set(minus_dims(st.v_accum.dims(), {st.accum_axis}), v_rest))
    fail(std::string(op) + ": the state does not fit the input: state.k_accum = " + dims_str(st.k_accum.dims()) +
         ", state.v_accum = " + dims_str(st.v_accum.dims()) + " over '" + st.accum_axis.str() + "', but the new keys are " +
         dims_str(k.dims()) + " and values " + dims_str(v.dims()) +
         " (a state of another module, or of other batch Dims; make it with default_initial_state)");
  if (!contains_all(k_rest, st.accum_axis.lengths().dims()))
    fail(std::string(op) + ": the lengths of the state's '" + st.accum_axis.str() + "' are over " +
         dims_str(st.accum_axis.lengths().dims()) + ", not among the input's batch Dims " + dims_str(k_rest));
  if (st.k_accum.dtype() != k.dtype() || st.v_accum.dtype() != v.dtype() || st.k_accum.device() != k.device())
    fail(std::string(op) + ": the state " + st.k_accum.str() + " does not have the dtype and device of the keys " + k.str());
  const Tensor prev = st.accum_axis.lengths();
  CausalSelfAttentionState next = [&]() -> CausalSelfAttentionState {
    // No history: the chunk's own frames are the state (no copy).
    if (st.accum_axis.extent() == 0 && !step) return {k, v, axis};
    static const Dim one(1, "step");
    const Dim& frames = step ? one : axis;
    auto [ka, accum] = concat({{st.k_accum, st.accum_axis}, {step ? expand_dim(k, one) : k, frames}});
    Tensor va = concat({{st.v_accum, st.accum_axis}, {step ? expand_dim(v, one) : v, frames}}, accum).first;
    return {ka, va, accum};
  }();
  // A step is the last frame of each sequence and sees the whole history; frame i of a chunk
  // sits at prev + i and sees the keys up to there.
  if (step) return {next, prev, next.accum_axis, next.k_accum, next.v_accum};
  Tensor query_pos = add(range_over_dim(axis, DType::i32).with_sparse_dim(std::nullopt), prev, true);
  if (!causal) return {next, query_pos, next.accum_axis, next.k_accum, next.v_accum};
  Dim keys = causal_key_dim(query_pos, next.accum_axis);
  Tensor kk = replace_dim(next.k_accum, next.accum_axis, keys).first;
  Tensor vv = replace_dim(next.v_accum, next.accum_axis, keys).first;
  return {next, query_pos, keys, kk, vv};
}

}  // namespace dimx::nn

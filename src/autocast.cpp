// Autocast: the per-thread state, the guard, the cast cache and the policy helpers
// (src/autocast.h states how ops call them; dimx/autocast.h the policy).
#include "autocast.h"

#include <dimx/autograd.h>

#include <map>
#include <tuple>

#include "autograd.h"
#include "tensor_impl.h"

namespace dimx {

namespace {

struct State {
  bool enabled = false;
  DType dtype = DType::f32;
  bool cache = true;
  int depth = 0;  // guards open on this thread, enabled or not
};
thread_local State t_state;

// The cast cache: (leaf, dtype, grad mode) -> the leaf (kept alive, so its address is not
// reused while the entry lives) and its cast. A cast made without recording carries no
// gradient, hence the grad mode in the key.
using CacheKey = std::tuple<const TensorImpl*, DType, bool>;
thread_local std::map<CacheKey, std::pair<Tensor, Tensor>> t_cache;

bool is_leaf_param(const Tensor& x) { return x.requires_grad() && !x.impl().autograd->grad_fn; }

bool castable_to_low(DType dt, DType low) { return (dt == DType::f32 || is_half(dt)) && dt != low; }

// f64 > f32 > bf16, f16; bf16 with f16 meet at f32.
DType wider(DType a, DType b) {
  if (a == b) return a;
  if (a == DType::f64 || b == DType::f64) return DType::f64;
  return DType::f32;
}

}  // namespace

AutocastGuard::AutocastGuard(DType dtype, bool enabled, bool cache)
    : prev_enabled_(t_state.enabled), prev_dtype_(t_state.dtype), prev_cache_(t_state.cache) {
  if (enabled && !is_half(dtype))
    fail(std::string("AutocastGuard: the low dtype must be bf16 or f16, got ") + dtype_name(dtype) +
         " (pass enabled = false to switch autocast off)");
  if (!is_float_like(dtype))
    fail(std::string("AutocastGuard: dtype must be floating (f32, f64, bf16, f16), got ") + dtype_name(dtype));
  t_state.enabled = enabled;
  t_state.dtype = dtype;
  t_state.cache = cache;
  ++t_state.depth;
}

AutocastGuard::~AutocastGuard() {
  t_state.enabled = prev_enabled_;
  t_state.dtype = prev_dtype_;
  t_state.cache = prev_cache_;
  if (--t_state.depth == 0) t_cache.clear();
}

bool autocast_enabled() { return t_state.enabled; }
DType autocast_dtype() { return t_state.dtype; }
void clear_autocast_cache() { t_cache.clear(); }

// ---- the low-precision list

bool autocast_lowers(std::initializer_list<const Tensor*> ts) {
  if (!t_state.enabled) return false;
  for (const Tensor* t : ts)
    if (t->defined() && castable_to_low(t->dtype(), t_state.dtype)) return true;
  return false;
}

Tensor autocast_low(const Tensor& x) {
  if (!t_state.enabled || !x.defined()) return x;
  const DType low = t_state.dtype;
  if (!castable_to_low(x.dtype(), low)) return x;
  if (!t_state.cache || !is_leaf_param(x)) return x.astype(low);
  CacheKey key{&x.impl(), low, grad_enabled()};
  auto it = t_cache.find(key);
  if (it != t_cache.end()) return it->second.second;
  Tensor y = x.astype(low);
  t_cache.emplace(key, std::make_pair(x, y));
  return y;
}

// ---- the f32 list

bool autocast_widens(std::initializer_list<const Tensor*> ts) {
  if (!t_state.enabled) return false;
  for (const Tensor* t : ts)
    if (t->defined() && is_half(t->dtype())) return true;
  return false;
}

bool autocast_widens(UnaryOp op, const Tensor& x) {
  if (!t_state.enabled) return false;
  switch (op) {
    case UnaryOp::exp:
    case UnaryOp::expm1:
    case UnaryOp::log:
    case UnaryOp::log1p:
    case UnaryOp::reciprocal:
    case UnaryOp::rsqrt:
    case UnaryOp::softplus: return autocast_widens({&x});
    default: return false;
  }
}

bool autocast_widens(ReduceOp op, const Tensor& x) {
  if (!t_state.enabled) return false;
  switch (op) {
    case ReduceOp::sum:
    case ReduceOp::mean:
    case ReduceOp::logsumexp: return autocast_widens({&x});
    default: return false;
  }
}

Tensor autocast_f32(const Tensor& x) {
  if (!t_state.enabled || !x.defined() || !is_half(x.dtype())) return x;
  return x.astype(DType::f32);
}

// ---- binary elementwise ops

namespace {

std::optional<std::pair<Tensor, Tensor>> promoted(const Tensor& a, const Tensor& b, bool in_f32) {
  if (!t_state.enabled || !a.defined() || !b.defined()) return std::nullopt;
  DType da = a.dtype(), db = b.dtype();
  if (in_f32) {
    if (is_half(da)) da = DType::f32;
    if (is_half(db)) db = DType::f32;
  }
  if (is_float_like(da) && is_float_like(db) && da != db) da = db = wider(da, db);
  if (da == a.dtype() && db == b.dtype()) return std::nullopt;
  return std::make_pair(a.astype(da), b.astype(db));
}

}  // namespace

std::optional<std::pair<Tensor, Tensor>> autocast_operands(BinaryOp op, const Tensor& a, const Tensor& b) {
  return promoted(a, b, op == BinaryOp::pow);
}

std::optional<std::pair<Tensor, Tensor>> autocast_operands(const Tensor& a, const Tensor& b) {
  return promoted(a, b, false);
}

}  // namespace dimx

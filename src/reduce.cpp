#include <dimx/elementwise.h>
#include <dimx/reduce.h>
#include <dimx/shape.h>

#include "autocast.h"
#include "autograd.h"
#include "backend.h"
#include "block.h"
#include "half_compute.h"
#include "padding.h"
#include "reduce_math.h"
#include "tensor_impl.h"

namespace dimx {

namespace {

const char* reduce_name(ReduceOp op) {
  static const char* names[] = {"reduce_sum", "reduce_mean", "reduce_max", "reduce_min",
                                "reduce_logsumexp", "reduce_any", "reduce_all"};
  return names[size_t(op)];
}

void check_dtype(ReduceOp op, const Tensor& x) {
  DType dt = x.dtype();
  bool ok = op == ReduceOp::any || op == ReduceOp::all ? dt == DType::boolean
            : op == ReduceOp::mean || op == ReduceOp::logsumexp ? is_float_like(dt)
                                                                : dt != DType::boolean;
  if (!ok) fail(std::string(reduce_name(op)) + ": dtype not supported for x = " + x.str());
}

// One backend call over `dims`, masked along `masked` (a dynamic Dim among dims) if given.
Tensor reduce_block(const Tensor& x0, ReduceOp op, const Dims& dims, const std::optional<Dim>& masked) {
  Tensor x = masked ? broadcast_to_include(x0, masked->lengths().dims()) : x0;
  Block b = as_block(x, dims);
  Tensor len = masked ? block_lengths(b, *masked) : Tensor();
  // bf16/f16 sums accumulate and come out in f32 (rounded once by the caller).
  Tensor y = empty(b.outer(), is_half(x.dtype()) ? DType::f32 : x.dtype(), x.device(), reduce_name(op));
  backend::backend_for(x.device())
      .reduce(op, x.dtype(), b.A, b.N, b.B, b.x.impl().data(),
              masked ? static_cast<const int64_t*>(len.data_ptr()) : nullptr, y.impl().data());
  auto f = x.feature_dim();
  return f && y.has_dim(*f) ? y.with_feature_dim(f) : y;
}

void check_dims(const char* op, const Tensor& x, const Dims& dims) {
  check_defined(op, x);
  check_unique(op, dims);
  for (const Dim& d : dims) check_has_dim(op, x, d);
}

Tensor arg_reduce(bool is_max, const Tensor& x0, const Dim& axis, bool use_mask) {
  const char* op = is_max ? "reduce_argmax" : "reduce_argmin";
  check_dims(op, x0, {axis});
  if (x0.dtype() == DType::boolean) fail(std::string(op) + ": dtype not supported for x = " + x0.str());
  if (is_half(x0.dtype())) return arg_reduce(is_max, widen_half(x0), axis, use_mask);
  bool masked = use_mask && axis.is_dynamic();
  Tensor x = masked ? broadcast_to_include(x0, axis.lengths().dims()) : x0;
  Block b = as_block(x, axis);
  Tensor len = masked ? block_lengths(b, axis) : Tensor();
  Tensor y = empty(b.outer(), DType::i64, x.device(), op);
  backend::backend_for(x.device())
      .arg_reduce(is_max, x.dtype(), b.A, b.N, b.B, b.x.impl().data(),
                  masked ? static_cast<const int64_t*>(len.data_ptr()) : nullptr,
                  reinterpret_cast<int64_t*>(y.impl().data()));
  return y.with_sparse_dim(axis);
}

// The dynamic Dims whose padded frames a masked reduction over `dims` leaves out: the
// reduced ones, and those that stay but whose sequences are reduced over (padded_across).
Dims masked_dims(const Tensor& x, const Dims& dims, bool use_mask) {
  Dims dyn;
  if (!use_mask) return dyn;
  for (const Dim& d : dims)
    if (d.is_dynamic()) dyn.push_back(d);
  for (const Dim& d : padded_across(x, dims)) dyn.push_back(d);
  return dyn;
}

// x with the padded frames of `across` (Dims that stay) set to op's identity, so reducing
// over their sequences leaves them out.
Tensor mask_across(const Tensor& x, ReduceOp op, const Dims& across) {
  if (across.empty()) return x;
  const Tensor valid = sequence_mask(across, x.device());
  const ReduceOp id_op = op == ReduceOp::logsumexp ? ReduceOp::max : op;
  Tensor id;
  switch (x.dtype()) {
    case DType::f32: id = Tensor::from_vector<float>({}, std::vector<float>{reduce_math::identity<float>(id_op)}); break;
    case DType::f64: id = Tensor::from_vector<double>({}, std::vector<double>{reduce_math::identity<double>(id_op)}); break;
    case DType::i32: id = Tensor::from_vector<int32_t>({}, std::vector<int32_t>{reduce_math::identity<int32_t>(id_op)}); break;
    case DType::i64: id = Tensor::from_vector<int64_t>({}, std::vector<int64_t>{reduce_math::identity<int64_t>(id_op)}); break;
    case DType::boolean: id = Tensor::scalar(id_op == ReduceOp::all ? 1 : 0, DType::boolean); break;
    case DType::bf16:
    case DType::f16: id = Tensor::scalar(reduce_math::identity<float>(id_op), x.dtype()); break;
    default: fail(std::string(reduce_name(op)) + ": dtype not supported for x = " + x.str());
  }
  return where(valid, x, id.to(x.device()), true);
}

// Number of valid frames over `dims` for each remaining position (a small tensor).
Tensor valid_count(const Tensor& x, const Dims& dims, bool use_mask) {
  const Dims dyn = masked_dims(x, dims, use_mask);
  // Counted from the mask, so Dims whose lengths depend on each other (a causal key Dim
  // indexed by the query) are counted right.
  Tensor mask = broadcast_to_include(sequence_mask(dyn), dyn);
  double static_count = 1;
  Dims in_mask;
  for (const Dim& d : dims) {
    if (mask.has_dim(d)) in_mask.push_back(d);
    else static_count *= double(d.extent());
  }
  Tensor count = Tensor::scalar(static_count, x.dtype(), x.device());
  if (!dyn.empty())
    count = mul(reduce(mask.astype(x.dtype()).to(x.device()), ReduceOp::sum, in_mask, false), count);
  return count;
}

Tensor reduce_forward(const Tensor& x, ReduceOp op, const Dims& dims, bool use_mask) {
  if (op == ReduceOp::mean) {
    Tensor sum = reduce_forward(x, ReduceOp::sum, dims, use_mask);
    // An all-padding row has sum 0 and count 0: its mean is 0, not NaN.
    Tensor count = valid_count(x, dims, use_mask);
    return div(sum, maximum(count, Tensor::scalar(1, x.dtype(), x.device())));
  }
  Dims dyn, rest;
  for (const Dim& d : dims) (use_mask && d.is_dynamic() ? dyn : rest).push_back(d);
  // One masked pass per dynamic Dim; a Dim whose lengths are indexed by another reduced Dim
  // (causal key by query) goes before that Dim.
  Tensor cur = use_mask ? mask_across(x, op, padded_across(x, dims)) : x;
  while (!dyn.empty()) {
    size_t pick = 0;
    for (size_t i = 0; i < dyn.size(); ++i) {
      bool needed = false;
      for (size_t j = 0; j < dyn.size(); ++j)
        if (j != i && contains(dyn[j].lengths().dims(), dyn[i])) needed = true;
      if (!needed) {
        pick = i;
        break;
      }
    }
    cur = reduce_block(cur, op, {dyn[pick]}, dyn[pick]);
    dyn.erase(dyn.begin() + long(pick));
  }
  return rest.empty() ? cur : reduce_block(cur, op, rest, std::nullopt);
}

std::vector<Tensor> reduce_backward(ReduceOp op, const Tensor& x, const Dims& dims, bool use_mask, const Tensor& y,
                                    const Tensor& g) {
  const Dims dyn = masked_dims(x, dims, use_mask);
  Tensor valid = dyn.empty() ? Tensor() : sequence_mask(dyn, x.device());
  Tensor zero = Tensor::scalar(0, x.dtype(), x.device());
  auto masked = [&](const Tensor& t) { return valid.defined() ? where(valid, t, zero, true) : t; };
  Tensor gx = broadcast_to_include(g, x.dims());
  switch (op) {
    case ReduceOp::sum: gx = masked(gx); break;
    case ReduceOp::mean:
      gx = masked(div(gx, maximum(valid_count(x, dims, use_mask), Tensor::scalar(1, x.dtype(), x.device())), true));
      break;
    case ReduceOp::max:
    case ReduceOp::min: {
      // Ties share the gradient equally.
      Tensor hit = equal(x, y, true);
      if (valid.defined()) hit = logical_and(hit, valid, true);
      Tensor n = reduce(hit.astype(x.dtype()), ReduceOp::sum, dims, false);
      gx = where(hit, div(g, n, true), zero, true);
      break;
    }
    case ReduceOp::logsumexp: gx = masked(mul(g, exp(sub(x, y, true)), true)); break;
    default: return {Tensor()};
  }
  return {sum_to(gx, x)};
}

}  // namespace

Tensor reduce(const Tensor& x, ReduceOp op, const Dims& dims, bool use_mask) {
  if (autocast_widens(op, x)) return reduce(autocast_f32(x), op, dims, use_mask);
  const char* name = reduce_name(op);
  check_dims(name, x, dims);
  check_dtype(op, x);
  if (dims.empty()) return x;
  // A half sum reads its 16-bit input in the kernel (f32 accumulation, one rounding); the other
  // reductions widen first (their backward computes in f32 too).
  if (is_half(x.dtype()) && op != ReduceOp::sum) return round_to(reduce(widen_half(x), op, dims, use_mask), x.dtype());
  // Static Dims of extent 1 are dropped as views: reducing one element is that element (a
  // padded Dim whose lengths may say 0 is reduced as usual). Their sequences are nobody's. A
  // Dim that the lengths of a reduced dynamic Dim run over stays: without it, the masked pass
  // would give the result that Dim back.
  auto indexes_lengths = [&](const Dim& d) {
    return std::any_of(dims.begin(), dims.end(),
                       [&](const Dim& o) { return o.is_dynamic() && contains(o.lengths().dims(), d); });
  };
  if (std::any_of(dims.begin(), dims.end(), [](const Dim& d) { return d.is_static() && d.extent() == 1; })) {
    Dims rest;
    Tensor v = x;
    for (const Dim& d : dims) {
      if (d.is_static() && d.extent() == 1 && padded_across(v, {d}).empty() && !indexes_lengths(d)) v = squeeze(v, d);
      else rest.push_back(d);
    }
    if (rest.size() != dims.size()) return rest.empty() ? v : reduce(v, op, rest, use_mask);
  }
  Tensor y;
  {
    NoGradGuard no_grad;
    y = round_to(reduce_forward(x, op, dims, use_mask), x.dtype());
  }
  if (!is_float_like(x.dtype()) || !needs_grad({&x})) return y;
  return record(name, y, {x}, [op, x, dims, use_mask, y](const Tensor& g) {
    return reduce_backward(op, x, dims, use_mask, y, g);
  });
}

Tensor reduce_argmax(const Tensor& x, const Dim& axis, bool use_mask) { return arg_reduce(true, x, axis, use_mask); }
Tensor reduce_argmin(const Tensor& x, const Dim& axis, bool use_mask) { return arg_reduce(false, x, axis, use_mask); }

}  // namespace dimx

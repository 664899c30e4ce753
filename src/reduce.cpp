#include <dimx/elementwise.h>
#include <dimx/reduce.h>

#include "backend.h"
#include "block.h"
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
            : op == ReduceOp::mean || op == ReduceOp::logsumexp ? is_floating(dt)
                                                                : dt != DType::boolean;
  if (!ok) fail(std::string(reduce_name(op)) + ": dtype not supported for x = " + x.str());
}

// One backend call over `dims`, masked along `masked` (a dynamic Dim among dims) if given.
Tensor reduce_block(const Tensor& x0, ReduceOp op, const Dims& dims, const std::optional<Dim>& masked) {
  Tensor x = masked ? broadcast_to_include(x0, masked->lengths().dims()) : x0;
  Block b = as_block(x, dims);
  Tensor len = masked ? block_lengths(b, *masked) : Tensor();
  Tensor y = empty(b.outer(), x.dtype(), x.device());
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
  bool masked = use_mask && axis.is_dynamic();
  Tensor x = masked ? broadcast_to_include(x0, axis.lengths().dims()) : x0;
  Block b = as_block(x, {axis});
  Tensor len = masked ? block_lengths(b, axis) : Tensor();
  Tensor y = empty(b.outer(), DType::i64, x.device());
  backend::backend_for(x.device())
      .arg_reduce(is_max, x.dtype(), b.A, b.N, b.B, b.x.impl().data(),
                  masked ? static_cast<const int64_t*>(len.data_ptr()) : nullptr,
                  reinterpret_cast<int64_t*>(y.impl().data()));
  return y.with_sparse_dim(axis);
}

}  // namespace

Tensor reduce(const Tensor& x, ReduceOp op, const Dims& dims, bool use_mask) {
  const char* name = reduce_name(op);
  check_dims(name, x, dims);
  check_dtype(op, x);
  if (dims.empty()) return x;
  if (op == ReduceOp::mean) {
    Tensor sum = reduce(x, ReduceOp::sum, dims, use_mask);
    Tensor count = Tensor::scalar(1, x.dtype()).to(x.device());
    for (const Dim& d : dims)
      count = mul(count, use_mask && d.is_dynamic() ? d.lengths().astype(x.dtype()).to(x.device())
                                                    : Tensor::scalar(double(d.extent()), x.dtype()).to(x.device()),
                  true);
    // An all-padding row has sum 0 and count 0: its mean is 0, not NaN.
    return div(sum, maximum(count, Tensor::scalar(1, x.dtype()).to(x.device())));
  }
  Tensor cur = x;
  Dims rest;
  for (const Dim& d : dims) {
    if (use_mask && d.is_dynamic()) cur = reduce_block(cur, op, {d}, d);
    else rest.push_back(d);
  }
  return rest.empty() ? cur : reduce_block(cur, op, rest, std::nullopt);
}

Tensor reduce_argmax(const Tensor& x, const Dim& axis, bool use_mask) { return arg_reduce(true, x, axis, use_mask); }
Tensor reduce_argmin(const Tensor& x, const Dim& axis, bool use_mask) { return arg_reduce(false, x, axis, use_mask); }

}  // namespace dimx

#pragma once
/// \file
/// Reductions over Dims. Padded frames of dynamic Dims never count: they are masked to the
/// reduction's identity (sum 0, max -inf, ...), mean divides by the true lengths, and an
/// all-padding row gives a finite identity value (0 for sum/mean/any, -inf for max and
/// logsumexp, +inf for min, true for all), never NaN. If a reduced Dim's lengths live on Dims
/// the input lacks (e.g. {batch}), the result gains those Dims.
#include <dimx/op_codes.h>
#include <dimx/tensor.h>

namespace dimx {


/// Reduces x over `dims` with `op`; the result has x's other Dims. use_mask=false reduces the
/// padded frames as stored.
Tensor reduce(const Tensor& x, ReduceOp op, const Dims& dims, bool use_mask = true);

/// Sum over `dims`.
inline Tensor reduce_sum(const Tensor& x, const Dims& dims) { return reduce(x, ReduceOp::sum, dims); }
/// Mean over `dims` (divided by the valid element count).
inline Tensor reduce_mean(const Tensor& x, const Dims& dims) { return reduce(x, ReduceOp::mean, dims); }
/// Maximum over `dims`.
inline Tensor reduce_max(const Tensor& x, const Dims& dims) { return reduce(x, ReduceOp::max, dims); }
/// Minimum over `dims`.
inline Tensor reduce_min(const Tensor& x, const Dims& dims) { return reduce(x, ReduceOp::min, dims); }
/// log(sum(exp(x))) over `dims`.
inline Tensor reduce_logsumexp(const Tensor& x, const Dims& dims) { return reduce(x, ReduceOp::logsumexp, dims); }
/// True where any element over `dims` is true (bool x).
inline Tensor reduce_any(const Tensor& x, const Dims& dims) { return reduce(x, ReduceOp::any, dims); }
/// True where every element over `dims` is true (bool x).
inline Tensor reduce_all(const Tensor& x, const Dims& dims) { return reduce(x, ReduceOp::all, dims); }

/// Index (i64) of the max/min along `axis`, masked like reduce; sparse_dim of the result = axis.
/// Ties give the first index; an all-padding row gives 0.
Tensor reduce_argmax(const Tensor& x, const Dim& axis, bool use_mask = true);
/// Index of the min along `axis`; see reduce_argmax().
Tensor reduce_argmin(const Tensor& x, const Dim& axis, bool use_mask = true);

}  // namespace dimx

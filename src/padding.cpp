#include "padding.h"

#include <dimx/elementwise.h>
#include <dimx/reduce.h>
#include <dimx/shape.h>

#include "autograd.h"

namespace dimx {

Tensor zero_padding(const Tensor& t, const Dim& d) {
  if (!d.is_padded()) return t;
  Tensor len = d.lengths(t.device());
  const Dims missing = minus_dims(len.dims(), t.dims());
  Tensor valid;
  if (missing.empty()) {
    valid = valid_frames(d, t.device());
  } else {
    NoGradGuard ng;
    len = reduce(len, ReduceOp::max, missing);
    valid = less(range_over_dim(d, DType::i32, t.device()).with_sparse_dim(std::nullopt), len, true);
  }
  Tensor r = where(valid, t, 0.0);
  return t.sparse_dim() && is_integer(r.dtype()) ? r.with_sparse_dim(t.sparse_dim()) : r;
}

Dims padded_across(const Tensor& x, const Dims& dims) {
  Dims out;
  for (const Dim& d : x.dims()) {
    if (!d.is_padded() || contains(dims, d) || !contains_all(x.dims(), d.lengths().dims())) continue;
    const Tensor lens = d.lengths();  // named: a range-for over a temporary's member dangles
    for (const Dim& l : lens.dims())
      if (contains(dims, l)) {
        out.push_back(d);
        break;
      }
  }
  return out;
}

Tensor sum_over(const Tensor& g, const Dims& dims) {
  if (dims.empty()) return g;
  // A padded Dim whose lengths g lacks cannot be masked here (g has no sequences for it).
  Dims unmaskable, rest;
  for (const Dim& d : dims)
    (d.is_padded() && !contains_all(g.dims(), d.lengths().dims()) ? unmaskable : rest).push_back(d);
  Tensor r = g;
  if (!rest.empty()) r = reduce(r, ReduceOp::sum, rest, /*use_mask=*/true);
  if (!unmaskable.empty()) r = reduce(r, ReduceOp::sum, unmaskable, /*use_mask=*/false);
  return r;
}

}  // namespace dimx

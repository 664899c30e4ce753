#include <dimx/matmul.h>
#include <dimx/shape.h>

#include <atomic>

#include "autocast.h"
#include "autograd.h"
#include "backend.h"
#include "padding.h"
#include "tensor_impl.h"

namespace dimx {

namespace {
std::atomic<bool> g_allow_tf32{false};
}  // namespace

void set_allow_tf32(bool on) { g_allow_tf32 = on; }
bool allow_tf32() { return g_allow_tf32; }

namespace {

// matmul(a, b, reduce)'s Dims in groups: batch (a's, shared with b), a's own, b's own; the
// output has them in that order.
struct MatmulDims {
  Dims batch, m, n;
  Dims out() const {
    Dims o = batch;
    o.insert(o.end(), m.begin(), m.end());
    o.insert(o.end(), n.begin(), n.end());
    return o;
  }
};

MatmulDims matmul_dims(const Tensor& a, const Tensor& b, const Dims& reduce) {
  MatmulDims r;
  for (const Dim& d : a.dims()) {
    if (contains(reduce, d)) continue;
    (b.has_dim(d) ? r.batch : r.m).push_back(d);
  }
  for (const Dim& d : b.dims())
    if (!contains(reduce, d) && !a.has_dim(d)) r.n.push_back(d);
  return r;
}

struct Operand {
  int64_t batch_stride, rows, cols, ld;
  bool trans;
};

// Describes t as batch-strided matrices [rows, cols]; false if a copy is needed.
bool as_matrix(const Tensor& t, const Dims& batch, const Dims& rows, const Dims& cols, Operand& o) {
  int64_t nb, sr, sc;
  if (!merged_stride(t, batch, nb, o.batch_stride) || !merged_stride(t, rows, o.rows, sr) ||
      !merged_stride(t, cols, o.cols, sc))
    return false;
  if (o.cols <= 1 || sc == 1) {
    o.trans = false;
    o.ld = o.rows <= 1 ? std::max<int64_t>(1, o.cols) : sr;
    return o.ld >= std::max<int64_t>(1, o.cols);
  }
  if (o.rows <= 1 || sr == 1) {
    o.trans = true;
    o.ld = sc;
    return o.ld >= std::max<int64_t>(1, o.rows);
  }
  return false;
}

Operand prepare(Tensor& t, const Dims& batch, const Dims& rows, const Dims& cols) {
  Operand o{};
  if (as_matrix(t, batch, rows, cols, o)) return o;
  Dims order = batch;
  order.insert(order.end(), rows.begin(), rows.end());
  order.insert(order.end(), cols.begin(), cols.end());
  t = t.transpose_to(order);
  if (!as_matrix(t, batch, rows, cols, o)) fail("matmul: internal error: contiguous operand not a matrix");
  return o;
}

}  // namespace

Tensor matmul(const Tensor& a0, const Tensor& b0, const Dims& reduce, bool use_mask) {
  if (autocast_lowers({&a0, &b0})) return matmul(autocast_low(a0), autocast_low(b0), reduce, use_mask);
  check_defined("matmul", a0);
  check_defined("matmul", b0);
  check_same_device("matmul", a0, b0);
  check_unique("matmul", reduce);
  for (const Dim& d : reduce) {
    check_has_dim("matmul", a0, d, "a");
    check_has_dim("matmul", b0, d, "b");
  }
  if (a0.dtype() != b0.dtype()) fail("matmul: dtype mismatch, a = " + a0.str() + " vs b = " + b0.str());
  if (!is_floating(a0.dtype()) && !is_half(a0.dtype()))
    fail("matmul: needs f32, f64, bf16 or f16, got a = " + a0.str());

  // Padded frames of a contracted Dim are selected out of both operands (0 * NaN would be
  // NaN): their content never reaches the result or the gradients.
  // The same for padded Dims that stay but whose sequences are summed over (time, with
  // lengths over batch, when batch is contracted).
  Tensor a = a0, b = b0;
  if (use_mask) {
    Dims masked = reduce;
    for (const Dim& d : union_dims(padded_across(a0, reduce), padded_across(b0, reduce)))
      if (!contains(masked, d)) masked.push_back(d);
    for (const Dim& d : masked) {
      if (a.has_dim(d) || contains(reduce, d)) a = zero_padding(a, d);
      if (b.has_dim(d) || contains(reduce, d)) b = zero_padding(b, d);
    }
  }

  if (needs_grad({&a, &b})) {
    // Record on the masked operands: their own nodes carry the gradient back to a0 and b0.
    Tensor y;
    {
      NoGradGuard no_grad;
      y = matmul(a, b, reduce, false);
    }
    Dims a_own = minus_dims(a.dims(), b.dims()), b_own = minus_dims(b.dims(), a.dims());
    // Only the gradients asked for: an operand that does not require grad costs no GEMM.
    const bool need_a = a.requires_grad(), need_b = b.requires_grad();
    return record("matmul", y, {a, b}, [a, b, a_own, b_own, need_a, need_b](const Tensor& g) {
      // Each gradient with its operand's Dims in the operand's order where the order of the two
      // factors decides it (a weight {out, in} gets {out, in}, not {in, out}), so that an
      // optimizer reads it in place instead of copying it.
      auto grad = [](const Tensor& other, const Tensor& gy, const Dims& reduce, const Tensor& like) {
        return sum_to(matmul_dims(gy, other, reduce).out() == like.dims() ? matmul(gy, other, reduce)
                                                                    : matmul(other, gy, reduce),
                      like);
      };
      return std::vector<Tensor>{need_a ? grad(b, g, b_own, a) : Tensor(), need_b ? grad(a, g, a_own, b) : Tensor()};
    });
  }

  const MatmulDims md = matmul_dims(a, b, reduce);
  const Dims &batch = md.batch, &m_dims = md.m, &n_dims = md.n;
  const Dims out = md.out();
  Tensor y = empty(out, a.dtype(), a.device(), "matmul");
  if (y.numel() == 0) return y;
  if (numel_of(extents(reduce)) == 0) {
    backend::backend_for(a.device()).fill(a.dtype(), y.numel(), y.impl().data(), 0);
    return y;
  }

  Operand oa = prepare(a, batch, m_dims, reduce);
  Operand ob = prepare(b, batch, reduce, n_dims);
  backend::Gemm g{};
  g.batch = numel_of(extents(batch));
  g.m = oa.rows;
  g.k = oa.cols;
  g.n = ob.cols;
  g.trans_a = oa.trans;
  g.trans_b = ob.trans;
  g.a = a.impl().data();
  g.lda = oa.ld;
  g.stride_a = oa.batch_stride;
  g.b = b.impl().data();
  g.ldb = ob.ld;
  g.stride_b = ob.batch_stride;
  g.c = y.impl().data();
  g.ldc = std::max<int64_t>(1, g.n);
  g.stride_c = g.m * g.n;
  backend::backend_for(a.device()).gemm(a.dtype(), g);
  if (auto f = b0.feature_dim(); f && y.has_dim(*f)) return y.with_feature_dim(f);
  return y;
}

}  // namespace dimx

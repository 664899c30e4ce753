#include <dimx/matmul.h>
#include <dimx/shape.h>

#include <algorithm>
#include <atomic>
#include <span>
#include <vector>

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

// matmul(a, b, reduce)'s output Dims in three groups: batch (a's, shared with b), a's own,
// b's own.
struct MatmulDims {
  Dims out;
  size_t nb = 0, nm = 0;  // how many are batch Dims, how many a's own
};

using DimSpan = std::span<const Dim>;
DimSpan batch_of(const Dims& out, const MatmulDims& md) { return {out.data(), md.nb}; }
DimSpan m_of(const Dims& out, const MatmulDims& md) { return {out.data() + md.nb, md.nm}; }
DimSpan n_of(const Dims& out, const MatmulDims& md) { return {out.data() + md.nb + md.nm, out.size() - md.nb - md.nm}; }
DimSpan span_of(const Dims& ds) { return {ds.data(), ds.size()}; }

MatmulDims matmul_dims(const Tensor& a, const Tensor& b, const Dims& reduce) {
  MatmulDims r;
  boost::container::small_vector<const Dim*, 6> own;
  for (const Dim& d : a.dims()) {
    if (contains(reduce, d)) continue;
    if (b.has_dim(d)) r.out.push_back(d);
    else own.push_back(&d);
  }
  r.nb = r.out.size();
  r.nm = own.size();
  for (const Dim* d : own) r.out.push_back(*d);
  for (const Dim& d : b.dims())
    if (!contains(reduce, d) && !a.has_dim(d)) r.out.push_back(d);
  return r;
}

struct Operand {
  int64_t batch_stride, rows, cols, ld;
  bool trans;
};

// Describes t as batch-strided matrices [rows, cols]; false if a copy is needed.
bool as_matrix(const Tensor& t, DimSpan batch, DimSpan rows, DimSpan cols, Operand& o) {
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

// t as batch-strided matrices, or a copy of it in `copy` (batch, rows, cols) where t is not one.
Operand prepare(const Tensor& t, Tensor& copy, DimSpan batch, DimSpan rows, DimSpan cols) {
  Operand o{};
  if (as_matrix(t, batch, rows, cols, o)) return o;
  Dims order(batch.begin(), batch.end());
  order.insert(order.end(), rows.begin(), rows.end());
  order.insert(order.end(), cols.begin(), cols.end());
  copy = t.transpose_to(order);
  if (!as_matrix(copy, batch, rows, cols, o)) fail("matmul: internal error: contiguous operand not a matrix");
  return o;
}

// The product of the extents of `dims`.
int64_t numel_over(DimSpan dims) {
  int64_t n = 1;
  for (const Dim& d : dims) n *= d.extent();
  return n;
}

// The padded frames of a contracted Dim left out by the GEMM itself instead of selected out of
// copies of both operands: where the one padded Dim d to mask is contracted together with
// every Dim its lengths run over, and both operands lay K out as (those and any other
// contracted Dims..., d) without a copy, K is groups of d's frames of which each group's first
// len take part. Sets `order` (the contracted Dims in that order) and the lengths per group.
// Not for recorded products: their gradients need the masked operands.
bool k_groups(const Tensor& a, const Tensor& b, const Dims& reduce, const Dims& masked, Dims& order,
              std::vector<int64_t>& lens) {
  if (masked.size() != 1 || !contains(reduce, masked[0])) return false;
  const Dim& d = masked[0];
  const Tensor l = d.lengths();
  for (const Dim& x : l.dims())
    if (!contains(reduce, x)) return false;
  Dims outer;
  for (const Dim& x : a.dims())
    if (x != d && contains(reduce, x)) outer.push_back(x);
  order = outer;
  order.push_back(d);
  const MatmulDims md = matmul_dims(a, b, order);
  Operand oa, ob;
  if (!as_matrix(a, batch_of(md.out, md), m_of(md.out, md), span_of(order), oa) ||
      !as_matrix(b, batch_of(md.out, md), span_of(order), n_of(md.out, md), ob))
    return false;
  lens = broadcast_to_include(l.astype(DType::i64), outer).transpose_to(outer).contiguous().to_vector<int64_t>();
  // Few long groups: the CPU takes one product per group, CUDA packs the valid frames first;
  // many short groups are cheaper selected out.
  int64_t total = 0;
  for (int64_t x : lens) total += std::clamp<int64_t>(x, 0, d.extent());
  const int64_t groups = int64_t(lens.size());
  return groups > 0 && groups <= 256 && (groups <= 4 || total >= 32 * groups);
}

// y = a b (+ bias, a contiguous vector over the n Dims) on the backend, the contracted Dims
// in the order `reduce`, K groups as k_groups() found them (lens empty: none).
Tensor product(const Tensor& a, const Tensor& b, const Dims& reduce, const Tensor& bias,
               const std::vector<int64_t>& lens) {
  MatmulDims md = matmul_dims(a, b, reduce);
  Tensor y = empty(std::move(md.out), a.dtype(), a.device(), "matmul");
  if (y.numel() == 0) return y;
  const Dims& out = y.dims();
  backend::Backend& be = backend::backend_for(a.device());
  if (numel_over(span_of(reduce)) == 0) {  // nothing contracted: zeros, or the bias in every row
    const int64_t n = numel_over(n_of(out, md));
    if (bias.defined())
      be.copy(Shape{y.numel() / n, n}, a.dtype(), {bias.impl().data(), Strides{0, 1}}, a.dtype(),
              {y.impl().data(), Strides{n, 1}});
    else
      be.fill(a.dtype(), y.numel(), y.impl().data(), 0);
    return y;
  }
  Tensor ac, bc;  // copies of a and b where they are not matrices as they lie
  const Operand oa = prepare(a, ac, batch_of(out, md), m_of(out, md), span_of(reduce));
  const Operand ob = prepare(b, bc, batch_of(out, md), span_of(reduce), n_of(out, md));
  backend::Gemm g{};
  g.batch = numel_over(batch_of(out, md));
  g.m = oa.rows;
  g.k = oa.cols;
  g.n = ob.cols;
  g.trans_a = oa.trans;
  g.trans_b = ob.trans;
  g.a = (ac.defined() ? ac : a).impl().data();
  g.lda = oa.ld;
  g.stride_a = oa.batch_stride;
  g.b = (bc.defined() ? bc : b).impl().data();
  g.ldb = ob.ld;
  g.stride_b = ob.batch_stride;
  g.c = y.impl().data();
  g.ldc = std::max<int64_t>(1, g.n);
  g.stride_c = g.m * g.n;
  if (bias.defined()) g.bias = bias.impl().data();
  if (!lens.empty()) {
    g.k_lengths = lens.data();
    g.k_groups = int64_t(lens.size());
  }
  be.gemm(a.dtype(), g);
  return y;
}

// matmul's gradients for y = a b (a and b as recorded), given dy: each in its operand's Dim
// order where the order of the two factors decides it (a weight {out, in} gets {out, in}, not
// {in, out}), so that an optimizer reads it in place instead of copying it. Only those asked for.
std::vector<Tensor> product_grads(const Tensor& a, const Tensor& b, const Tensor& g, bool need_a, bool need_b) {
  auto grad = [](const Tensor& other, const Tensor& gy, const Dims& reduce, const Tensor& like) {
    return sum_to(matmul_dims(gy, other, reduce).out == like.dims() ? matmul(gy, other, reduce)
                                                                : matmul(other, gy, reduce),
                  like);
  };
  return {need_a ? grad(b, g, minus_dims(b.dims(), a.dims()), a) : Tensor(),
          need_b ? grad(a, g, minus_dims(a.dims(), b.dims()), b) : Tensor()};
}

void check_operands(const char* op, const Tensor& a0, const Tensor& b0, const Dims& reduce) {
  check_defined(op, a0);
  check_defined(op, b0);
  check_same_device(op, a0, b0);
  check_unique(op, reduce);
  for (const Dim& d : reduce) {
    check_has_dim(op, a0, d, "a");
    check_has_dim(op, b0, d, "b");
  }
  if (a0.dtype() != b0.dtype()) fail(std::string(op) + ": dtype mismatch, a = " + a0.str() + " vs b = " + b0.str());
  if (!is_floating(a0.dtype()) && !is_half(a0.dtype()))
    fail(std::string(op) + ": needs f32, f64, bf16 or f16, got a = " + a0.str());
}

// The Dims whose padded frames must not reach a product over `reduce`: the padded reduced
// Dims, and padded Dims that stay but whose sequences are summed over (time, with lengths over
// batch, when batch is contracted).
Dims masked_dims(const Tensor& a0, const Tensor& b0, const Dims& reduce) {
  Dims masked;
  auto any_padded = [](const Dims& ds) { return std::any_of(ds.begin(), ds.end(), [](const Dim& d) { return d.is_padded(); }); };
  if (!any_padded(a0.dims()) && !any_padded(b0.dims())) return masked;  // reduce's Dims are among a0's
  for (const Dim& d : reduce)
    if (d.is_padded()) masked.push_back(d);
  for (const Dim& d : union_dims(padded_across(a0, reduce), padded_across(b0, reduce)))
    if (!contains(masked, d)) masked.push_back(d);
  return masked;
}

Tensor with_feature_dim_of(const Tensor& y, const Tensor& b0) {
  if (auto f = b0.feature_dim(); f && y.has_dim(*f)) return y.with_feature_dim(f);
  return y;
}

}  // namespace

Tensor matmul(const Tensor& a0, const Tensor& b0, const Dims& reduce, bool use_mask) {
  if (autocast_lowers({&a0, &b0})) return matmul(autocast_low(a0), autocast_low(b0), reduce, use_mask);
  check_operands("matmul", a0, b0, reduce);

  // Padded frames of a masked Dim (masked_dims) never reach the result or the gradients: the
  // GEMM leaves them out (k_groups), or they are selected out of both operands (0 * NaN would
  // be NaN).
  Tensor am, bm;  // the operands with padded frames selected out, where there are any
  Dims order;     // the contracted Dims in K-group order, where the GEMM groups them
  std::vector<int64_t> lens;
  if (use_mask) {
    const Dims masked = masked_dims(a0, b0, reduce);
    const bool grouped = !masked.empty() && !needs_grad({&a0, &b0}) && k_groups(a0, b0, reduce, masked, order, lens);
    if (!grouped) {
      order.clear();
      lens.clear();
      for (const Dim& d : masked) {
        const Tensor& a1 = am.defined() ? am : a0;
        if (a1.has_dim(d) || contains(reduce, d)) am = zero_padding(a1, d);
        const Tensor& b1 = bm.defined() ? bm : b0;
        if (b1.has_dim(d) || contains(reduce, d)) bm = zero_padding(b1, d);
      }
    }
  }
  const Tensor& a = am.defined() ? am : a0;
  const Tensor& b = bm.defined() ? bm : b0;

  if (needs_grad({&a, &b})) {
    // Record on the masked operands: their own nodes carry the gradient back to a0 and b0.
    Tensor y;
    {
      NoGradGuard no_grad;
      y = matmul(a, b, reduce, false);
    }
    const bool need_a = a.requires_grad(), need_b = b.requires_grad();
    return record("matmul", y, {a, b}, [a, b, need_a, need_b](const Tensor& g) {
      return product_grads(a, b, g, need_a, need_b);
    });
  }
  return with_feature_dim_of(product(a, b, order.empty() ? reduce : order, Tensor(), lens), b0);
}

Tensor matmul_add(const Tensor& a0, const Tensor& b0, const Dims& reduce, const Tensor& bias0, bool use_mask) {
  if (autocast_lowers({&a0, &b0, &bias0}))
    return matmul_add(autocast_low(a0), autocast_low(b0), reduce, autocast_low(bias0), use_mask);
  check_operands("matmul_add", a0, b0, reduce);
  check_defined("matmul_add", bias0);
  check_same_device("matmul_add", a0, bias0);
  const MatmulDims md = matmul_dims(a0, b0, reduce);
  const DimSpan ns = n_of(md.out, md);
  const Dims n(ns.begin(), ns.end());
  // In the GEMM where the bias lies along b's own Dims (a Linear's bias) and nothing is masked;
  // otherwise the same sum in two passes.
  const bool fused = bias0.dtype() == a0.dtype() && contains_all(n, bias0.dims()) &&
                     (!use_mask || masked_dims(a0, b0, reduce).empty());
  if (!fused) return add(matmul(a0, b0, reduce, use_mask), bias0);
  if (needs_grad({&a0, &b0, &bias0})) {
    Tensor y;
    {
      NoGradGuard no_grad;
      y = matmul_add(a0, b0, reduce, bias0, use_mask);
    }
    const bool need_a = a0.requires_grad(), need_b = b0.requires_grad(), need_bias = bias0.requires_grad();
    return record("matmul_add", y, {a0, b0, bias0}, [a0, b0, bias0, need_a, need_b, need_bias](const Tensor& g) {
      std::vector<Tensor> r = product_grads(a0, b0, g, need_a, need_b);
      r.push_back(need_bias ? sum_to(g, bias0) : Tensor());
      return r;
    });
  }
  // The bias as one contiguous vector over the n Dims in the output's order (n elements).
  const Tensor bias = broadcast_to_include(bias0, n).transpose_to(n).contiguous();
  return with_feature_dim_of(product(a0, b0, reduce, bias, {}), b0);
}

}  // namespace dimx

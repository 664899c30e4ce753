#include <dimx/matmul.h>
#include <dimx/shape.h>

#include <algorithm>
#include <atomic>
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
  if (!as_matrix(a, md.batch, md.m, order, oa) || !as_matrix(b, md.batch, order, md.n, ob)) return false;
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
Tensor product(Tensor a, Tensor b, const Dims& reduce, const Tensor& bias, const std::vector<int64_t>& lens) {
  const MatmulDims md = matmul_dims(a, b, reduce);
  Tensor y = empty(md.out(), a.dtype(), a.device(), "matmul");
  if (y.numel() == 0) return y;
  backend::Backend& be = backend::backend_for(a.device());
  if (numel_of(extents(reduce)) == 0) {  // nothing contracted: zeros, or the bias in every row
    const int64_t n = numel_of(extents(md.n));
    if (bias.defined())
      be.copy(Shape{y.numel() / n, n}, a.dtype(), {bias.impl().data(), Strides{0, 1}}, a.dtype(),
              {y.impl().data(), Strides{n, 1}});
    else
      be.fill(a.dtype(), y.numel(), y.impl().data(), 0);
    return y;
  }
  Operand oa = prepare(a, md.batch, md.m, reduce);
  Operand ob = prepare(b, md.batch, reduce, md.n);
  backend::Gemm g{};
  g.batch = numel_of(extents(md.batch));
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
    return sum_to(matmul_dims(gy, other, reduce).out() == like.dims() ? matmul(gy, other, reduce)
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
  Tensor a = a0, b = b0;
  Dims order = reduce;
  std::vector<int64_t> lens;
  if (use_mask) {
    const Dims masked = masked_dims(a0, b0, reduce);
    const bool grouped = !masked.empty() && !needs_grad({&a0, &b0}) && k_groups(a0, b0, reduce, masked, order, lens);
    if (!grouped) {
      order = reduce;
      lens.clear();
      for (const Dim& d : masked) {
        if (a.has_dim(d) || contains(reduce, d)) a = zero_padding(a, d);
        if (b.has_dim(d) || contains(reduce, d)) b = zero_padding(b, d);
      }
    }
  }

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
  return with_feature_dim_of(product(a, b, order, Tensor(), lens), b0);
}

Tensor matmul_add(const Tensor& a0, const Tensor& b0, const Dims& reduce, const Tensor& bias0, bool use_mask) {
  if (autocast_lowers({&a0, &b0, &bias0}))
    return matmul_add(autocast_low(a0), autocast_low(b0), reduce, autocast_low(bias0), use_mask);
  check_operands("matmul_add", a0, b0, reduce);
  check_defined("matmul_add", bias0);
  check_same_device("matmul_add", a0, bias0);
  const MatmulDims md = matmul_dims(a0, b0, reduce);
  // In the GEMM where the bias lies along b's own Dims (a Linear's bias) and nothing is masked;
  // otherwise the same sum in two passes.
  const bool fused = bias0.dtype() == a0.dtype() && contains_all(md.n, bias0.dims()) &&
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
  const Tensor bias = broadcast_to_include(bias0, md.n).transpose_to(md.n).contiguous();
  return with_feature_dim_of(product(a0, b0, reduce, bias, {}), b0);
}

}  // namespace dimx

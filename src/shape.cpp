#include <dimx/elementwise.h>
#include <dimx/reduce.h>
#include <dimx/shape.h>

#include <algorithm>

#include "autocast.h"
#include "autograd.h"
#include "backend.h"
#include "block.h"
#include "half_compute.h"
#include "padding.h"
#include "tensor_impl.h"

namespace dimx {

namespace {

std::string join_names(const Dims& dims, const char* sep) {
  std::string s;
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? sep : "") + dims[i].name();
  return s;
}

void check_new_dim(const char* op, const Tensor& x, const Dim& d) {
  if (x.has_dim(d)) fail(std::string(op) + ": dim '" + d.str() + "' is already in x = " + x.str());
}

Dims replace_in(const Dims& dims, const Dim& from, const Dims& to) {
  Dims out;
  for (const Dim& d : dims) {
    if (d == from) out.insert(out.end(), to.begin(), to.end());
    else out.push_back(d);
  }
  return out;
}

Tensor index_tensor(const Tensor& t) { return t.astype(DType::i64); }

// Frames of [start, min(end, length)) taken every `step`-th, per sequence (exact in int64).
Tensor slice_lengths(const Dim& axis, int64_t start, int64_t end, int64_t step) {
  const Tensor l = axis.lengths();
  std::vector<int64_t> v = l.to_vector<int64_t>();
  for (int64_t& x : v) {
    const int64_t n = std::max<int64_t>(0, std::min(x, end) - start);
    x = n / step + (n % step != 0);
  }
  return Tensor::from_vector<int64_t>(l.dims(), v);
}

}  // namespace

Tensor split_dims(const Tensor& x, const Dim& axis, const Dims& dims) {
  check_defined("split_dims", x);
  check_has_dim("split_dims", x, axis);
  check_unique("split_dims", dims);
  if (needs_grad({&x})) {
    Tensor y;
    {
      NoGradGuard no_grad;
      y = split_dims(x, axis, dims);
    }
    return record("split_dims", y, {x}, [axis, dims](const Tensor& g) {
      return std::vector<Tensor>{merge_dims(g, dims, axis).first};
    });
  }
  int64_t prod = 1;
  for (const Dim& d : dims) {
    if (d.is_dynamic()) fail("split_dims: target dim '" + d.str() + "' must be static");
    if (d != axis) check_new_dim("split_dims", x, d);
  }
  prod = checked_numel("split_dims", dims);
  if (prod != axis.extent())
    fail("split_dims: " + dims_str(dims) + " has " + std::to_string(prod) + " elements but axis '" + axis.str() +
         "' of x = " + x.str() + " has " + std::to_string(axis.extent()));
  size_t ax = x.axis_of(axis);
  Dims nd;
  Strides ns;
  for (size_t i = 0; i < x.ndim(); ++i) {
    if (i != ax) {
      nd.push_back(x.dims()[i]);
      ns.push_back(x.strides()[i]);
      continue;
    }
    int64_t inner = x.strides()[i];
    Strides st(dims.size());
    for (size_t j = dims.size(); j-- > 0;) {
      st[j] = inner;
      inner *= dims[j].extent();
    }
    nd.insert(nd.end(), dims.begin(), dims.end());
    ns.insert(ns.end(), st.begin(), st.end());
  }
  return make_view(x, nd, ns, x.impl().offset);
}

std::pair<Tensor, Dim> merge_dims(const Tensor& x0, const Dims& dims, std::optional<Dim> out_dim) {
  check_defined("merge_dims", x0);
  check_unique("merge_dims", dims);
  if (dims.empty()) fail("merge_dims: no dims given for x = " + x0.str());
  int64_t prod = 1;
  for (const Dim& d : dims) {
    check_has_dim("merge_dims", x0, d);
    if (d.is_dynamic()) fail("merge_dims: dim '" + d.str() + "' is dynamic; only static dims can be merged");
  }
  prod = checked_numel("merge_dims", dims);
  Dim out = out_dim ? *out_dim : Dim(prod, join_names(dims, "*"));
  if (out.extent() != prod)
    fail("merge_dims: out_dim '" + out.str() + "' does not have the " + std::to_string(prod) + " elements of " +
         dims_str(dims));
  if (!contains(dims, out)) check_new_dim("merge_dims", x0, out);
  if (needs_grad({&x0})) {
    Tensor y;
    {
      NoGradGuard no_grad;
      y = merge_dims(x0, dims, out).first;
    }
    return {record("merge_dims", y, {x0}, [out, dims](const Tensor& g) {
              return std::vector<Tensor>{split_dims(g, out, dims)};
            }),
            out};
  }
  // The merged Dim goes where the first of `dims` sits in x's layout.
  size_t first = x0.ndim();
  for (const Dim& d : dims) first = std::min(first, x0.axis_of(d));
  Dims order;
  for (size_t i = 0; i < x0.ndim(); ++i) {
    if (i == first) order.insert(order.end(), dims.begin(), dims.end());
    if (!contains(dims, x0.dims()[i])) order.push_back(x0.dims()[i]);
  }
  // A view when the group is already row-major in the given order, else one copy.
  Tensor x = x0;
  int64_t stride = 0, expect = -1;
  bool ok = true;
  for (size_t i = dims.size(); i-- > 0 && ok;) {
    if (dims[i].extent() == 1) continue;
    int64_t s = x.strides()[x.axis_of(dims[i])];
    if (expect >= 0 && s != expect) ok = false;
    if (expect < 0) stride = s;
    expect = s * dims[i].extent();
  }
  if (!ok) {
    x = x0.transpose_to(order);
    stride = numel_of(extents(Dims(order.begin() + long(first) + long(dims.size()), order.end())));
  }
  Dims nd;
  Strides ns;
  for (const Dim& d : order) {
    if (d == dims.front()) {
      nd.push_back(out);
      ns.push_back(stride);
    } else if (!contains(dims, d)) {
      nd.push_back(d);
      ns.push_back(x.strides()[x.axis_of(d)]);
    }
  }
  return {make_view(x, nd, ns, x.impl().offset), out};
}

std::pair<Tensor, Dim> replace_dim(const Tensor& x, const Dim& in_dim, std::optional<Dim> out_dim) {
  check_defined("replace_dim", x);
  check_has_dim("replace_dim", x, in_dim);
  Dim out = out_dim ? *out_dim : in_dim.copy();
  if (out == in_dim) return {x, out};
  check_new_dim("replace_dim", x, out);
  if (out.extent() != in_dim.extent())
    fail("replace_dim: out_dim '" + out.str() + "' has another extent than '" + in_dim.str() + "' in x = " + x.str());
  Tensor y = make_view(x, replace_in(x.dims(), in_dim, {out}), x.impl().strides, x.impl().offset);
  if (x.feature_dim() == in_dim) y = y.with_feature_dim(out);
  if (x.sparse_dim() == in_dim) y = y.with_sparse_dim(out);
  y = record("replace_dim", y, {x}, [in_dim, out](const Tensor& g) {
    return std::vector<Tensor>{replace_dim(g, out, in_dim).first};
  });
  return {y, out};
}

std::pair<Tensor, Dim> concat(const std::vector<std::pair<Tensor, Dim>>& parts, std::optional<Dim> out_dim) {
  if (parts.empty()) fail("concat: no parts given");
  const Tensor& first = parts.front().first;
  Dims others;
  bool all_static = true;
  std::optional<Dim> sum;
  for (const auto& [t, d] : parts) {
    check_defined("concat", t);
    check_has_dim("concat", t, d);
    check_same_device("concat", first, t);
    if (t.dtype() != first.dtype()) fail("concat: dtype mismatch, " + first.str() + " vs " + t.str());
    others = union_dims(others, minus_dims(t.dims(), {d}));
    all_static = all_static && d.is_static();
    sum = sum ? *sum + d : d;
  }
  Dim out = out_dim ? *out_dim : *sum;
  if (out.extent() != sum->extent())
    fail("concat: out_dim '" + out.str() + "' does not have the extent " + std::to_string(sum->extent()) +
         " of the parts");
  for (const auto& [t, d] : parts)
    if (t.has_dim(out) && out != d) fail("concat: out_dim '" + out.str() + "' already in part " + t.str());
  // Output layout: that of the first part holding all other Dims (else the first part), with
  // the concat Dim replaced, then any remaining Dims.
  const std::pair<Tensor, Dim>* main = &parts.front();
  for (const auto& p : parts)
    if (contains_all(p.first.dims(), others)) {
      main = &p;
      break;
    }
  Dims layout = union_dims(replace_in(main->first.dims(), main->second, {out}), others);

  if (all_static) {
    Tensor y = empty(layout, first.dtype(), first.device(), "concat");
    const TensorImpl& yi = y.impl();
    size_t ax = y.axis_of(out);
    int64_t pos = 0;
    for (const auto& [t, d] : parts) {
      Dims target = replace_in(layout, out, {d});
      Tensor src = broadcast_to_include(t, target);
      backend::backend_for(t.device())
          .copy(extents(target), t.dtype(), {src.impl().data(), aligned_strides(src.impl(), target)}, t.dtype(),
                {yi.data() + pos * yi.strides[ax] * int64_t(dtype_size(t.dtype())), yi.strides});
      pos += d.extent();
    }
    std::vector<Tensor> inputs;
    Dims part_dims;
    for (const auto& [t, d] : parts) {
      inputs.push_back(t);
      part_dims.push_back(d);
    }
    y = record("concat", y, inputs, [inputs, part_dims, out](const Tensor& g) {
      std::vector<Tensor> grads;
      int64_t pos = 0;
      for (size_t i = 0; i < inputs.size(); ++i) {
        int64_t e = part_dims[i].extent();
        auto [gs, sd] = slice(g, out, pos, pos + e);
        grads.push_back(sum_to(replace_dim(gs, sd, part_dims[i]).first, inputs[i]));
        pos += e;
      }
      return grads;
    });
    return {y, out};
  }
  // Dynamic: out frame t of a sequence comes from the part whose offset range holds t.
  const Device dev = first.device();
  Tensor pos = range_over_dim(out, DType::i64, dev);
  Tensor offset = Tensor::scalar(0, DType::i64, dev);
  Tensor y = Tensor::scalar(0, first.dtype(), first.device());
  for (const auto& [t, d] : parts) {
    Tensor len = index_tensor(d.lengths(t.device()));
    if (d.extent() > 0) {
      Tensor local = sub(pos, offset, true);
      Tensor valid = logical_and(local >= 0.0, less(local, len, true), true);
      Tensor g = gather(t, clip(local, 0, double(d.extent() - 1)).with_sparse_dim(d), d);
      y = where(valid, g, y, true);
    }
    offset = add(offset, len, true);
  }
  // The lengths' Dims of the parts (say {batch}) are the output's too, even where no part had them
  // (and where every part is empty, so that y never met them).
  layout = union_dims(layout, y.dims());
  for (const auto& [t, d] : parts) {
    const Tensor len = d.lengths();  // named: its Dims outlive the call
    layout = union_dims(layout, len.dims());
  }
  return {broadcast_to_include(y, layout).transpose_to(layout), out};
}

std::pair<Tensor, Dims> pad(const Tensor& x, const Dims& axes, const std::vector<std::pair<int64_t, int64_t>>& padding,
                            double value) {
  check_defined("pad", x);
  if (axes.size() != padding.size())
    fail("pad: " + std::to_string(axes.size()) + " axes " + dims_str(axes) + " but " + std::to_string(padding.size()) + " paddings for x = " + x.str());
  check_unique("pad", axes);
  Tensor y = x;
  Dims outs;
  for (size_t i = 0; i < axes.size(); ++i) {
    const Dim& d = axes[i];
    auto [l, r] = padding[i];
    check_has_dim("pad", x, d);
    if (l < 0 || r < 0) fail("pad: negative padding for dim '" + d.str() + "' of x = " + x.str());
    Dim out = (d + l) + r;  // the cached expression left + d + right
    if (out == d) {
      outs.push_back(d);
      continue;
    }
    std::vector<std::pair<Tensor, Dim>> parts;
    if (l) {
      Dim ld(l, "pad_left");
      parts.push_back({Tensor::full({ld}, value, x.dtype(), x.device()), ld});
    }
    parts.push_back({y, d});
    if (r) {
      Dim rd(r, "pad_right");
      parts.push_back({Tensor::full({rd}, value, x.dtype(), x.device()), rd});
    }
    y = concat(parts, out).first;
    outs.push_back(out);
  }
  return {y, outs};
}

std::pair<Tensor, Dim> slice(const Tensor& x, const Dim& axis, int64_t start, std::optional<int64_t> end_,
                             int64_t step, std::optional<Dim> out_dim) {
  check_defined("slice", x);
  check_has_dim("slice", x, axis);
  int64_t ext = axis.extent();
  int64_t end = end_.value_or(ext);
  if (step < 1) fail("slice: step must be >= 1, got " + std::to_string(step) + " for dim '" + axis.str() + "' of x = " + x.str());
  if (start < 0 || end > ext || start > end)
    fail("slice: range [" + std::to_string(start) + ", " + std::to_string(end) + ") out of bounds for dim '" +
         axis.str() + "' in x = " + x.str());
  const int64_t count = (end - start) / step + ((end - start) % step != 0);
  Dim out = out_dim ? *out_dim
            : axis.is_static()
                ? Dim(count, axis.name() + "_slice")
                : Dim(slice_lengths(axis, start, end, step), axis.name() + "_slice");
  if (out.extent() != count)
    fail("slice: out_dim '" + out.str() + "' does not have the " + std::to_string(count) + " frames of the slice");
  check_new_dim("slice", x, out);
  size_t ax = x.axis_of(axis);
  Strides st = x.impl().strides;
  int64_t offset = x.impl().offset + start * st[ax];
  // The step of one frame or none never matters (and the product could overflow): for two or
  // more frames start + step < extent bounds it.
  if (count > 1) st[ax] *= step;
  Tensor y = make_view(x, replace_in(x.dims(), axis, {out}), st, count ? offset : x.impl().offset);
  // The gradient: g into the sliced frames (a strided view of them) of a zero tensor, or,
  // where x's gradient so far is the engine's alone, added into those frames in place.
  auto into_frames = [axis, start, step, count, out](const Tensor& g, const Tensor& gx, bool add) {
    const TensorImpl& gi = gx.impl();
    Strides st = gi.strides;
    const size_t ax = gx.axis_of(axis);
    const int64_t off = start * st[ax];
    if (count > 1) st[ax] *= step;
    const Dims vd = replace_in(gi.dims, axis, {out});
    char* region = gi.data() + off * int64_t(dtype_size(gx.dtype()));
    backend::Backend& be = backend::backend_for(gx.device());
    if (add)
      be.binary(BinaryOp::add, gx.dtype(), extents(vd), {region, st}, {g.impl().data(), aligned_strides(g.impl(), vd)},
                {region, st});
    else
      be.copy(extents(vd), g.dtype(), {g.impl().data(), aligned_strides(g.impl(), vd)}, gx.dtype(), {region, st});
  };
  auto full = [x, count, into_frames](const Tensor& g) {
    Tensor gx = Tensor::zeros(x.dims(), x.dtype(), x.device());
    if (count > 0) into_frames(g, gx, false);
    return gx;
  };
  y = record(
      "slice", y, {x}, [full](const Tensor& g) { return std::vector<Tensor>{full(g)}; },
      [x, count, full, into_frames](const Tensor& g, Tensor& acc) {
        if (!acc.defined()) {
          acc = full(g);
        } else if (exclusively_owned(acc) && acc.dims() == x.dims() && acc.dtype() == x.dtype() &&
                   g.dtype() == x.dtype() && acc.device() == x.device() && acc.is_contiguous()) {
          if (count > 0) into_frames(g, acc, true);
        } else {
          acc = add(acc, full(g));
        }
      });
  return {y, out};
}

Tensor gather(const Tensor& x, const Tensor& indices, std::optional<Dim> axis_, bool clip_to_valid) {
  check_defined("gather", x);
  check_defined("gather", indices);
  check_same_device("gather", x, indices);
  if (!is_integer(indices.dtype())) fail("gather: indices must be integer, got indices = " + indices.str());
  if (!axis_ && !indices.sparse_dim())
    fail("gather: no axis given and indices = " + indices.str() + " has no sparse_dim");
  Dim axis = axis_ ? *axis_ : *indices.sparse_dim();
  check_has_dim("gather", x, axis);
  // Index Dims that x lacks (or the axis itself) take the axis's place; shared Dims are batch.
  Dims idx_only;
  for (const Dim& d : indices.dims())
    if (d == axis || !x.has_dim(d)) idx_only.push_back(d);
  Dims out = replace_in(x.dims(), axis, idx_only);
  Strides xs(out.size(), 0);
  for (size_t i = 0; i < out.size(); ++i)
    if (out[i] != axis && x.has_dim(out[i]) && out[i].extent() != 1) xs[i] = x.strides()[x.axis_of(out[i])];
  // Indices in padded frames are padding content: never read, never range-checked.
  Tensor idx = index_tensor(indices);
  Dims padded;
  for (const Dim& d : idx_only)
    if (d.is_padded()) padded.push_back(d);
  for (const Dim& d : padded) idx = zero_padding(idx, d);
  Tensor y = empty(out, x.dtype(), x.device(), "gather");
  if (y.numel() == 0) return y;
  if (axis.extent() == 0)
    fail("gather: axis '" + axis.str() + "' of x = " + x.str() + " is empty; nothing to gather from");
  bool ok = backend::backend_for(x.device())
                .gather(x.dtype(), extents(out), {x.impl().data(), xs}, x.strides()[x.axis_of(axis)],
                        axis.extent(), {idx.impl().data(), aligned_strides(idx.impl(), out)}, clip_to_valid,
                        {y.impl().data(), y.impl().strides});
  if (!ok)
    fail("gather: index out of range [0, " + std::to_string(axis.extent()) + ") for axis '" + axis.str() +
         "' of x = " + x.str() + ", indices = " + indices.str());
  Tensor r = y;
  if (x.feature_dim() && r.has_dim(*x.feature_dim())) r = r.with_feature_dim(x.feature_dim());
  if (x.sparse_dim()) r = r.with_sparse_dim(x.sparse_dim());
  if (!is_float_like(x.dtype()) || !needs_grad({&x})) return r;
  return record("gather", r, {x, indices}, [x, idx, axis, out, padded](const Tensor& g0) {
    // The adjoint: scatter-add g back to the gathered positions; padded frames add nothing.
    // A half gradient is summed in f32 and rounded once.
    Tensor g = widen_half(g0);
    for (const Dim& d : padded) g = zero_padding(g, d);
    Tensor gx = Tensor::zeros(x.dims(), g.dtype(), x.device());
    Strides gs(out.size(), 0);
    for (size_t i = 0; i < out.size(); ++i)
      if (out[i] != axis && x.has_dim(out[i]) && out[i].extent() != 1) gs[i] = gx.strides()[gx.axis_of(out[i])];
    backend::backend_for(x.device())
        .scatter_add(gx.dtype(), extents(out), {g.impl().data(), aligned_strides(g.impl(), out)},
                     gx.strides()[gx.axis_of(axis)], axis.extent(), {idx.impl().data(), aligned_strides(idx.impl(), out)},
                     {gx.impl().data(), gs});
    return std::vector<Tensor>{round_to(gx, x.dtype()), Tensor()};
  });
}

std::pair<Tensor, Dim> window(const Tensor& x, const Dim& axis, int64_t size, std::optional<int64_t> window_left,
                              std::optional<Dim> window_dim) {
  check_defined("window", x);
  check_has_dim("window", x, axis);
  if (size < 1) fail("window: size must be >= 1, got " + std::to_string(size) + " for dim '" + axis.str() + "' of x = " + x.str());
  int64_t left = window_left.value_or((size - 1) / 2);
  if (left < 0 || left >= size)
    fail("window: window_left " + std::to_string(left) + " not in [0, " + std::to_string(size) + ") for dim '" + axis.str() + "' of x = " + x.str());
  Dim w = window_dim ? *window_dim : Dim(size, "window");
  if (w.extent() != size) fail("window: window_dim '" + w.str() + "' does not have size " + std::to_string(size));
  check_new_dim("window", x, w);
  if (axis.extent() == 0) return {expand_dim(x, w).contiguous(), w};
  Tensor src = add(range_over_dim(axis, DType::i64, x.device()), range_over_dim(w, DType::i64, x.device()), true) - double(left);
  Tensor len = index_tensor(axis.lengths(x.device()));
  Tensor valid = logical_and(src >= 0.0, less(src, len, true), true);
  Tensor g = gather(x, clip(src, 0, double(axis.extent() - 1)).with_sparse_dim(axis), axis);
  return {where(valid, g, 0.0, true), w};
}

Tensor frame(const Tensor& x, const Dim& axis, const Tensor& indices) {
  check_defined("frame", x);
  check_defined("frame", indices);
  check_has_dim("frame", x, axis);
  if (!is_integer(indices.dtype())) fail("frame: indices must be integer, got " + indices.str());
  for (const Dim& d : indices.dims())
    if (!x.has_dim(d) || d == axis)
      fail("frame: indices " + indices.str() + " must be over batch Dims of x = " + x.str() + " (not '" + axis.str() + "')");
  const Device dev = x.device();
  const Tensor idx = indices.astype(DType::i64).with_sparse_dim(std::nullopt).to(dev);
  if (axis.extent() == 0) return Tensor::zeros(minus_dims(x.dims(), {axis}), x.dtype(), dev);
  const Tensor valid = logical_and(idx >= 0.0, less(idx, axis.lengths(dev).astype(DType::i64), true), true);
  const Tensor g = gather(x, clip(idx, 0, double(axis.extent() - 1)).with_sparse_dim(axis), axis);
  return where(valid, g, 0.0, true);
}

Tensor frame(const Tensor& x, const Dim& axis, int64_t index) {
  check_defined("frame", x);
  return frame(x, axis, Tensor::scalar(double(index), DType::i64, x.device()));
}

Tensor shift_right(const Tensor& x, const Dim& axis, int64_t amount, double pad_value) {
  check_defined("shift_right", x);
  check_has_dim("shift_right", x, axis);
  if (amount < 0) fail("shift_right: negative amount " + std::to_string(amount) + " for dim '" + axis.str() + "' of x = " + x.str());
  if (amount == 0 || axis.extent() == 0) return x;
  Tensor src = range_over_dim(axis, DType::i64, x.device()) - double(amount);
  Tensor g = gather(x, clip(src, 0, double(axis.extent() - 1)).with_sparse_dim(axis), axis);
  return where(src >= 0.0, g, pad_value);
}

Tensor cumsum(const Tensor& x0, const Dim& axis) {
  if (autocast_widens({&x0})) return cumsum(autocast_f32(x0), axis);
  check_defined("cumsum", x0);
  check_has_dim("cumsum", x0, axis);
  if (x0.dtype() == DType::boolean) fail("cumsum: dtype not supported for x = " + x0.str());
  if (is_half(x0.dtype())) return round_to(cumsum(widen_half(x0), axis), x0.dtype());
  Tensor x = copy_masked(x0, {axis});
  Block b = as_block(x, axis);
  Tensor y = empty_like(b.x, x.dtype(), "cumsum");
  backend::backend_for(x.device()).cumsum(x.dtype(), b.A, b.N, b.B, b.x.impl().data(), y.impl().data());
  if (x.feature_dim()) y = y.with_feature_dim(x.feature_dim());
  if (!is_floating(x.dtype()) || !needs_grad({&x})) return y;
  // x was masked by copy_masked, a recorded op, so the gradient needs only the reverse sum.
  return record("cumsum", y, {x}, [axis](const Tensor& g) {
    Tensor gm = copy_masked(g, {axis});
    Tensor total = reduce(gm, ReduceOp::sum, {axis}, false);
    return std::vector<Tensor>{copy_masked(add(sub(total, cumsum(gm, axis), true), gm, true), {axis})};
  });
}

Tensor range_over_dim(const Dim& dim, DType dtype, Device device) {
  if (dtype == DType::boolean) fail("range_over_dim: bool dtype not supported for dim '" + dim.str() + "'");
  if (is_half(dtype)) return range_over_dim(dim, DType::f32, device).astype(dtype);
  Tensor y = empty({dim}, dtype, device, "range_over_dim");
  backend::backend_for(device).iota(dtype, dim.extent(), y.impl().data());
  return is_integer(dtype) ? y.with_sparse_dim(dim) : y;
}

Tensor relative_positions(const Dim& query, const Dim& key, int64_t shift, Device device) {
  // -i - (-j) = j - i, with the query's Dim first.
  return sub(range_over_dim(query, DType::i64, device).with_sparse_dim(std::nullopt) * -1.0,
             range_over_dim(key, DType::i64, device).with_sparse_dim(std::nullopt) * -1.0, true) +
         double(shift);
}

Tensor sequence_mask(const Dims& dims, Device device) {
  Tensor mask;
  for (const Dim& d : dims) {
    if (d.is_static()) continue;
    const Tensor m = valid_frames(d, device);  // kept with the Dim, per device
    mask = mask.defined() ? logical_and(mask, m, true) : m;
  }
  return mask.defined() ? mask : Tensor::scalar(1, DType::boolean, device);
}

Tensor copy_masked(const Tensor& x, const Dims& dims, double value) {
  check_defined("copy_masked", x);
  Dims dyn;
  for (const Dim& d : dims) {
    check_has_dim("copy_masked", x, d);
    if (d.is_dynamic()) dyn.push_back(d);
  }
  if (dyn.empty()) return x;
  Tensor r = where(sequence_mask(dyn, x.device()), x, value, true);
  return x.sparse_dim() && is_integer(r.dtype()) ? r.with_sparse_dim(x.sparse_dim()) : r;
}

Tensor expand_dim(const Tensor& x, const Dim& dim) {
  check_defined("expand_dim", x);
  check_new_dim("expand_dim", x, dim);
  Dims nd{dim};
  nd.insert(nd.end(), x.dims().begin(), x.dims().end());
  checked_numel("expand_dim", nd);
  nd = {dim};
  nd.insert(nd.end(), x.dims().begin(), x.dims().end());
  Strides ns{0};
  ns.insert(ns.end(), x.strides().begin(), x.strides().end());
  return record("expand_dim", make_view(x, nd, ns, x.impl().offset), {x}, [dim](const Tensor& g) {
    return std::vector<Tensor>{sum_over(g, {dim})};
  });
}

Tensor squeeze(const Tensor& x, const Dim& axis) {
  check_defined("squeeze", x);
  check_has_dim("squeeze", x, axis);
  if (axis.extent() != 1) fail("squeeze: dim '" + axis.str() + "' of x = " + x.str() + " does not have extent 1");
  size_t ax = x.axis_of(axis);
  Dims nd = x.dims();
  Strides ns = x.impl().strides;
  nd.erase(nd.begin() + long(ax));
  ns.erase(ns.begin() + long(ax));
  return record("squeeze", make_view(x, nd, ns, x.impl().offset), {x},
                [axis](const Tensor& g) { return std::vector<Tensor>{expand_dim(g, axis)}; });
}

}  // namespace dimx

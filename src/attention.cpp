#include <dimx/elementwise.h>
#include <dimx/matmul.h>
#include <dimx/attention.h>
#include <dimx/shape.h>
#include <dimx/softmax.h>

#include <dimx/random.h>
#include <dimx/reduce.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "autocast.h"
#include "autograd.h"
#include "backend.h"
#include "half_compute.h"
#include "padding.h"
#include "philox.h"
#include "softmax_grad.h"
#include "tensor_impl.h"

// The lowering of dot_attention (dimx/attention.h) onto the devices' fused primitive, its
// fused backward, and the unfused path where the Dims do not map onto it.

namespace dimx {


namespace {

std::atomic<int64_t> g_fused_fwd{0}, g_unfused_fwd{0}, g_fused_bwd{0}, g_unfused_bwd{0}, g_rel_gathered{0},
    g_library_fwd{0}, g_tf32_fwd{0}, g_tf32_bwd{0}, g_wgmma_fwd{0}, g_wgmma_bwd{0};

// DIMX_STRICT_FUSED=1: a fallback from the fused path is an error.
bool strict_fused() {
  static const bool on = [] {
    const char* e = std::getenv("DIMX_STRICT_FUSED");
    return e && std::string(e) == "1";
  }();
  return on;
}

// Counts an unfused forward or backward that the fused path was asked for; an error in strict mode.
void fell_back(bool backward, const std::string& why) {
  (backward ? g_unfused_bwd : g_unfused_fwd).fetch_add(1, std::memory_order_relaxed);
  if (strict_fused())
    fail(std::string("dot_attention: the ") + (backward ? "backward" : "forward") +
         " cannot take the fused path (DIMX_STRICT_FUSED=1): " + why);
}

Dims cat(Dims a, const Dims& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Splits the batch Dims (in order) into at most two groups that merge into one strided index
// in every tensor (and, where given, in the dropout mask's layout: `also`); false if more are
// needed.
bool batch_groups(const Dims& batch, const std::vector<const Tensor*>& ts, Dims& g0, Dims& g1,
                  const std::function<bool(const Dims&)>& also = {}) {
  std::vector<Dims> groups;
  for (const Dim& d : batch) {
    if (d.extent() == 1) continue;
    bool join = !groups.empty();
    if (join) {
      Dims trial = cat(groups.back(), {d});
      int64_t e, s;
      for (const Tensor* t : ts) join = join && merged_stride(*t, trial, e, s);
      join = join && (!also || also(trial));
    }
    if (join) groups.back().push_back(d);
    else groups.push_back({d});
  }
  if (groups.size() > 2) return false;
  g0 = groups.size() > 1 ? groups[0] : Dims{};
  g1 = groups.empty() ? Dims{} : groups.back();
  return true;
}

// t with `last` as its innermost Dims, stored contiguously there (copies if needed).
Tensor inner(const Tensor& t, const Dims& last) {
  int64_t e, s;
  if (merged_stride(t, last, e, s) && (s == 1 || e <= 1)) return t;
  return t.transpose_to(cat(minus_dims(t.dims(), last), last));
}

// Attention dropout in training: the mask that dropout() draws over the weights' Dims (in
// creation order, less those it broadcasts over) at the counters reserved for it here, so that
// the fused kernels (which regenerate it per element, backend::Attention::Dropout) and the
// unfused path drop the same weights.
struct DropoutPlan {
  double p = 0;
  uint64_t seed = 0, offset = 0;
  Dims mask;                 // sorted by creation
  DType dtype = DType::f32;  // of the mask's values: f64 for f64 weights, else f32 (as dropout())

  bool active() const { return p > 0; }
  // The kept weights, true over `mask`.
  Tensor keep(Device device) const {
    Generator g(seed);
    g.advance(offset);
    return random_uniform(mask, g, 0, 1, dtype, device) >= p;
  }
  // Weights after dropout: the kept ones scaled by 1 / (1 - p), the others 0.
  Tensor apply(const Tensor& w) const { return where(keep(w.device()), w * (1.0 / (1.0 - p)), 0.0); }

  // The mask's row-major strides.
  Strides strides() const {
    Strides st(mask.size());
    int64_t acc = 1;
    for (size_t i = mask.size(); i-- > 0;) {
      st[i] = acc;
      acc *= mask[i].extent();
    }
    return st;
  }
  // Whether `group` merges into one strided index of the mask.
  bool merges(const Dims& group) const {
    const Strides st = strides();
    int64_t e, stride;
    return merged_stride(mask, {st.data(), st.size()}, {group.data(), group.size()}, e, stride);
  }

  // The primitive's descriptor for problems over groups g0, g1, queries `query` and keys
  // kv_axis; false where the mask's index is not linear in those (a group's Dims not adjacent
  // in the mask's order).
  bool describe(const Dims& g0, const Dims& g1, const Dims& query, const Dim& kv_axis,
                backend::Attention::Dropout& out) const {
    const Strides st = strides();
    const std::span<const int64_t> ms(st.data(), st.size());
    int64_t e;
    const Dims key{kv_axis};
    if (!merged_stride(mask, ms, {g0.data(), g0.size()}, e, out.stride[0]) ||
        !merged_stride(mask, ms, {g1.data(), g1.size()}, e, out.stride[1]) ||
        !merged_stride(mask, ms, {query.data(), query.size()}, e, out.row_stride) ||
        !merged_stride(mask, ms, {key.data(), key.size()}, e, out.col_stride))
      return false;
    out.p = p;
    out.scale = 1.0 / (1.0 - p);
    out.seed = seed;
    out.offset = offset;
    out.f64 = dtype == DType::f64;
    out.threshold = philox::keep_threshold(p, out.f64);
    return true;
  }
};

// A call of the device's fused primitive: the output and what its backward needs (the
// operands as laid out for the primitive, the lengths and the rows' log-sum-exp, which the
// arguments point into).
struct Fused {
  Tensor out;
  backend::Attention args{};
  Tensor q, k, v, lens, lse;
  Tensor span_q, span_kv;     // the lengths per problem of one batch group (Attention::Spans)
  Tensor bias, bias_offsets;  // the bias as laid out for the primitive, its per-problem offsets
  int64_t bias_shift = 0;     // elements from a problem's part of the bias to what (0, 0) reads
  Tensor row_scale, row_scale_offsets;  // a relative bias's scale as laid out, its offsets
  Dims g0, g1, query, value;
};

// Where each problem's part of t starts (i64 [problems] on `device`; problem p enumerates the
// Dims of `groups` row-major); undefined where t has none of them (every problem starts at 0).
// The offsets depend on strides and extents alone, so a model's layers and a run's steps share
// one upload per distinct list and device (kept, up to 64 lists; callers never write to it).
Tensor problem_offsets(const Tensor& t, const Dims& groups, Device device) {
  bool any = false;
  for (const Dim& d : groups) any = any || t.has_dim(d);
  if (!any) return Tensor();
  const int64_t problems = numel_of(extents(groups));
  std::vector<int64_t> offs(size_t(problems), 0);
  for (int64_t p = 0; p < problems; ++p) {
    int64_t rest = p, off = 0;
    for (size_t i = groups.size(); i-- > 0;) {
      const int64_t idx = rest % groups[i].extent();
      rest /= groups[i].extent();
      if (t.has_dim(groups[i])) off += idx * t.strides()[t.axis_of(groups[i])];
    }
    offs[size_t(p)] = off;
  }
  using Key = std::pair<std::pair<int, int>, std::vector<int64_t>>;
  static std::mutex mu;
  static auto& kept = *new std::map<Key, Tensor>;  // never destroyed: no device frees at exit
  Key key{{int(device.type), device.index}, std::move(offs)};
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = kept.find(key); it != kept.end()) return it->second;
  if (kept.size() >= 64) kept.clear();
  Tensor r = Tensor::from_vector<int64_t>({Dim(problems, "attention_problems")}, key.second).to(device);
  return kept.emplace(std::move(key), r).first->second;
}

// The bias laid out for the primitive (contiguous, its query Dims adjacent in q's order) and
// its backend descriptor (the per-problem offsets into `offsets`); false where it cannot be.
bool bias_operand(const Tensor& bias, const Dims& g0, const Dims& g1, const Dims& batch, const Dims& query,
                  const Dim& kv_axis, Device device, Tensor& bc, Tensor& offsets, backend::Attention::Bias& out) {
  Dims allowed = cat(cat(batch, query), {kv_axis});
  for (const Dim& d : bias.dims())
    if (!contains(allowed, d)) return false;
  bc = bias;
  Dims bq;
  for (const Dim& d : query)
    if (bc.has_dim(d)) bq.push_back(d);
  // Over part of several query Dims: expanded over the rest (a query index must be one stride).
  if (!bq.empty() && bq.size() != query.size()) bc = broadcast_to_include(bc, query);
  int64_t e, rs = 0;
  if (!bq.empty() && !merged_stride(bc, query, e, rs)) bc = bc.transpose_to(cat(minus_dims(bc.dims(), query), query));
  bc = bc.contiguous();
  if (!bq.empty()) merged_stride(bc, query, e, rs);
  out.data = bc.impl().data();
  out.row_stride = bq.empty() ? 0 : rs;
  out.col_stride = bc.has_dim(kv_axis) ? bc.strides()[bc.axis_of(kv_axis)] : 0;
  out.batch_offset = nullptr;
  offsets = problem_offsets(bc, cat(g0, g1), device);
  if (offsets.defined()) out.batch_offset = reinterpret_cast<const int64_t*>(offsets.impl().data());
  return true;
}

// A relative bias laid out for the primitive: the table contiguous with its positions innermost,
// read through the view that gives (i, j) the element j - i + (tq - 1) of a problem's positions
// (row stride -1, column stride 1, the start shifted by tq - 1: `shift`); false where the table
// has Dims other than the problems' and its positions.
// t contiguous with the frames of d innermost.
Tensor innermost(const Tensor& t, const Dim& d) { return t.transpose_to(cat(minus_dims(t.dims(), {d}), {d})).contiguous(); }

bool relative_operand(const RelativeBias& rel, const Dims& g0, const Dims& g1, const Dims& batch, int64_t tq,
                      Device device, Fused& f, backend::Attention::Bias& out) {
  Tensor& bc = f.bias;
  Tensor& offsets = f.bias_offsets;
  int64_t& shift = f.bias_shift;
  for (const Dim& d : rel.table.dims())
    if (d != rel.positions && !contains(batch, d)) return false;
  if (rel.scale.defined()) {
    // The scale: its query frames innermost (one row stride), the problems' offsets into it.
    for (const Dim& d : rel.scale.dims())
      if (d != rel.query && !contains(batch, d)) return false;
    const bool rows = rel.scale.has_dim(rel.query);
    f.row_scale = rows ? innermost(rel.scale, rel.query) : rel.scale.contiguous();
    out.row_scale = f.row_scale.impl().data();
    out.row_scale_stride = rows && rel.query.extent() > 1 ? 1 : 0;
    f.row_scale_offsets = problem_offsets(f.row_scale, cat(g0, g1), device);
    if (f.row_scale_offsets.defined())
      out.row_scale_offset = reinterpret_cast<const int64_t*>(f.row_scale_offsets.impl().data());
  }
  bc = innermost(rel.table, rel.positions);
  shift = tq - 1;
  out.data = static_cast<const char*>(bc.impl().data()) + shift * int64_t(dtype_size(bc.dtype()));
  out.row_stride = -1;
  out.col_stride = 1;
  out.batch_offset = nullptr;
  offsets = problem_offsets(bc, cat(g0, g1), device);
  if (offsets.defined()) out.batch_offset = reinterpret_cast<const int64_t*>(offsets.impl().data());
  return true;
}

// dot_attention on the device's fused primitive; out undefined where the Dims do not map onto
// it or the device has no kernel for it. q, k, v already have the key Dim kv_axis. with_lse:
// keep the rows' log-sum-exp for a fused backward.
Fused fused_attention(const Tensor& q0, const Tensor& k0, const Tensor& v0, const Tensor& bias,
                      const RelativeBias* rel, const Dim& key_dim, const Dim& kv_axis, double scale,
                      const DropoutPlan& drop, bool with_lse) {
  const DType dt = q0.dtype();
  if (!is_floating(dt) && !is_half(dt)) return {};
  if (k0.dtype() != dt || v0.dtype() != dt || (bias.defined() && bias.dtype() != dt)) return {};
  if (bias.defined() && !backend::backend_for(q0.device()).attention_takes_bias()) return {};
  if (rel && (bias.defined() || rel->table.dtype() != dt ||
              !backend::backend_for(q0.device()).attention_takes_relative_bias()))
    return {};
  if (rel && rel->scale.defined() &&
      (rel->scale.dtype() != dt || !backend::backend_for(q0.device()).attention_takes_bias_row_scale()))
    return {};
  if (k0.device() != q0.device() || v0.device() != q0.device()) return {};
  if (q0.has_dim(kv_axis)) return {};
  Dims batch, query, value;
  for (const Dim& d : q0.dims())
    if (d != key_dim) (k0.has_dim(d) || v0.has_dim(d) ? batch : query).push_back(d);
  for (const Dim& d : k0.dims())
    if (d != kv_axis && d != key_dim && !contains(batch, d)) return {};  // would broadcast the energies
  // v may share q's key Dim (one head size for q, k and v): the output then has it as a value Dim.
  for (const Dim& d : v0.dims())
    if (d != kv_axis && (d == key_dim || !q0.has_dim(d))) value.push_back(d);
  const Device device = q0.device();
  Tensor kv_lengths;
  if (kv_axis.is_dynamic()) {
    kv_lengths = kv_axis.lengths(device);  // the Dim keeps one copy per device
    for (const Dim& d : kv_lengths.dims())
      if (!contains(batch, d) && !contains(query, d)) return {};
  }
  // The lengths per problem where they vary over batch Dims only (see Attention::Spans), for a
  // device that reads them, in the calls a library could take (half, no bias, no dropout).
  Tensor kv_span = kv_lengths, q_span;
  std::optional<Dim> q_dynamic;  // a dynamic query Dim
  bool spans = backend::backend_for(device).attention_reads_spans() && is_half(dt) && !bias.defined() && !rel &&
               !drop.active() && (!kv_span.defined() || minus_dims(kv_span.dims(), batch).empty());
  for (const Dim& qd : query) {
    if (!qd.is_dynamic()) continue;
    spans = spans && query.size() == 1 && minus_dims(qd.lengths().dims(), batch).empty();
    q_span = qd.lengths(device);
    q_dynamic = qd;
  }
  // A padded query frame sees no key (its output row is 0, and no gradient comes back through
  // it): the kernels skip such rows, so a padded batch costs its valid frames only.
  Dims masked_query;
  for (const Dim& qd : query) {
    if (!qd.is_dynamic()) continue;
    bool fits = true;
    for (const Dim& d : qd.lengths().dims()) fits = fits && (contains(batch, d) || contains(query, d));
    if (fits) masked_query.push_back(qd);
  }
  // Each row's key lengths: the key Dim's, 0 past a query length.
  auto row_lengths = [&] {
    Tensor l = kv_lengths;
    for (const Dim& qd : masked_query)
      l = where(sequence_mask({qd}, device),
                l.defined() ? l : Tensor::scalar(double(kv_axis.extent()), DType::i32, device), 0.0, true);
    return l;
  };
  const bool has_lengths = kv_lengths.defined() || !masked_query.empty();
  // What the primitive reads of the lengths depends on the Dims alone: laid out once per Dims
  // and device and kept with the Dim that has the lengths (every layer of a model, every step
  // of training on one batch, reuses it).
  auto laid_out = [&](const char* what, const Dims& over, const std::function<Tensor()>& make) {
    std::string key = std::string(what) + ":" + std::to_string(kv_axis.id());
    for (const Dims* ds : {static_cast<const Dims*>(&query), &over})
      for (const Dim& d : *ds) key += "," + std::to_string(d.id());
    return derived_from_lengths(kv_axis.is_dynamic() ? kv_axis : *q_dynamic, device, key, make);
  };

  Tensor q = inner(q0, {key_dim}), k = inner(k0, {key_dim}), v = inner(v0, value);
  int64_t tq, q_rs, tk = kv_axis.extent(), dv, unused;
  if (!merged_stride(q, query, tq, q_rs)) q = q.transpose_to(cat(cat(batch, query), {key_dim}));
  merged_stride(q, query, tq, q_rs);
  merged_stride(v, value, dv, unused);
  // The output follows q's layout with the value Dims in key_dim's place at the end, so that
  // merging heads afterwards needs no copy where q came from a packed projection; if its query
  // Dims do not merge there, batch, query, value in order.
  Tensor out = empty(cat(minus_dims(q.dims(), {key_dim}), value), dt, q.device(), "dot_attention");
  int64_t o_rs;
  if (!merged_stride(out, query, tq, o_rs)) {
    out = empty(cat(cat(batch, query), value), dt, q.device(), "dot_attention");
    merged_stride(out, query, tq, o_rs);
  }

  Dims g0, g1;
  // Batch groups that merge in the dropout mask too (its Dims are in creation order).
  std::function<bool(const Dims&)> in_mask;
  if (drop.active()) in_mask = [&drop](const Dims& group) { return drop.merges(group); };
  if (!batch_groups(batch, {&q, &k, &v, &out}, g0, g1, in_mask)) {
    q = q.transpose_to(cat(cat(batch, query), {key_dim}));
    k = k.transpose_to(cat(cat(minus_dims(k.dims(), {kv_axis, key_dim}), {kv_axis}), {key_dim}));
    v = v.transpose_to(cat(cat(minus_dims(v.dims(), cat({kv_axis}, value)), {kv_axis}), value));
    merged_stride(q, query, tq, q_rs);
    if (!batch_groups(batch, {&q, &k, &v, &out}, g0, g1, in_mask)) return {};
  }
  Fused f;
  backend::Attention& a = f.args;
  auto operand = [&](const Tensor& t, bool rows_are_keys) {
    backend::Attention::Operand o{};
    o.data = t.impl().data();
    int64_t e;
    merged_stride(t, g0, e, o.batch_stride[0]);
    merged_stride(t, g1, e, o.batch_stride[1]);
    if (rows_are_keys) o.row_stride = tk > 1 ? t.strides()[t.axis_of(kv_axis)] : 0;
    return o;
  };
  a.batch[0] = numel_of(extents(g0));
  a.batch[1] = numel_of(extents(g1));
  a.tq = tq;
  a.tk = tk;
  a.d = key_dim.size();
  a.dv = dv;
  a.scale = scale;
  a.q = operand(q, false);
  a.q.row_stride = q_rs;
  a.k = operand(k, true);
  a.v = operand(v, true);
  a.out = out.impl().data();
  {
    int64_t e;
    merged_stride(out, g0, e, a.out_batch_stride[0]);
    merged_stride(out, g1, e, a.out_batch_stride[1]);
  }
  a.out_row_stride = o_rs;
  if (has_lengths) {
    // Per (problem, query): contiguous i64 over the batch Dims in group order, then the queries.
    Dims order = cat(cat(g0, g1), query);
    for (const Dim& d : batch)
      if (!contains(order, d)) order.insert(order.begin(), d);  // extent-1 batch Dims
    f.lens = laid_out("rows", order, [&] {
      return broadcast_to_include(row_lengths().astype(DType::i64), order).transpose_to(order).contiguous();
    });
    a.key_lengths = reinterpret_cast<const int64_t*>(f.lens.impl().data());
  }
  if (spans) {
    // Per index of the one batch group that holds every Dim the lengths vary over.
    Dims varies;
    for (const Tensor* t : {&kv_span, &q_span})
      if (t->defined())
        for (const Dim& d : t->dims())
          if (d.extent() > 1 && !contains(varies, d)) varies.push_back(d);
    const int group = minus_dims(varies, g0).empty() ? 0 : minus_dims(varies, g1).empty() ? 1 : -1;
    const Dims& gd = group == 0 ? g0 : g1;
    auto laid = [&](const char* what, const Tensor& t) {
      return laid_out(what, gd, [&] {
        const Dims single = minus_dims(t.dims(), gd);  // extent 1
        const Tensor x = single.empty() ? t : reduce_max(t, single);
        return broadcast_to_include(x.astype(DType::i32), gd).transpose_to(gd).contiguous();
      });
    };
    if (group >= 0) {
      a.spans.valid = true;
      a.spans.group = group;
      if (q_span.defined()) f.span_q = laid("query spans", q_span);
      if (kv_span.defined()) f.span_kv = laid("key spans", kv_span);
      if (f.span_q.defined()) a.spans.q = reinterpret_cast<const int32_t*>(f.span_q.impl().data());
      if (f.span_kv.defined()) a.spans.kv = reinterpret_cast<const int32_t*>(f.span_kv.impl().data());
    }
  }
  if (bias.defined() &&
      !bias_operand(bias, g0, g1, batch, query, kv_axis, q.device(), f.bias, f.bias_offsets, a.bias))
    return {};
  // A relative bias needs the queries to be its query Dim alone (one row index).
  if (rel && (query != Dims{rel->query} ||
              !relative_operand(*rel, g0, g1, batch, tq, q.device(), f, a.bias)))
    return {};
  if (drop.active() && !drop.describe(g0, g1, query, kv_axis, a.dropout)) return {};
  if (with_lse) {
    f.lse = empty({Dim(a.batch[0] * a.batch[1] * tq, "attention_rows")}, is_half(dt) ? DType::f32 : dt, q.device(),
                  "dot_attention");
    a.lse = f.lse.impl().data();
  }
  bool library = false, tf32 = false, wgmma = false;
  a.on_library = &library;
  a.on_tf32 = &tf32;
  a.on_wgmma = &wgmma;
  const bool ran = backend::backend_for(q.device()).attention(dt, a);
  a.on_library = nullptr;
  a.on_tf32 = nullptr;
  a.on_wgmma = nullptr;
  if (!ran) return {};
  if (library) g_library_fwd.fetch_add(1, std::memory_order_relaxed);
  if (tf32) g_tf32_fwd.fetch_add(1, std::memory_order_relaxed);
  if (wgmma) g_wgmma_fwd.fetch_add(1, std::memory_order_relaxed);
  f.out = out;
  if (auto fd = v0.feature_dim(); fd && out.has_dim(*fd)) f.out = out.with_feature_dim(fd);
  f.q = q;
  f.k = k;
  f.v = v;
  f.g0 = g0;
  f.g1 = g1;
  f.query = query;
  f.value = value;
  return f;
}

// The view of `buffer` (laid out as `source`, which t is a view of) at t's place in source.
Tensor same_place(const Tensor& buffer, const Tensor& t, const Tensor& source) {
  return make_view(buffer, t.dims(), Strides(t.strides().begin(), t.strides().end()),
                   buffer.impl().offset + t.impl().offset - source.impl().offset);
}

// The buffer a device's fused backward adds an operand's gradient into (the operand as laid
// out: a bias or a row scale; undefined operand: none), in f32 for bf16/f16. Where problems
// share the operand (it lacks a batch or head Dim), each problem gets its own part, summed by
// finish(): the device then writes each share without ordering the problems.
struct PartGrad {
  Tensor buf, offsets;
  Dims shared;
  PartGrad(const Tensor& operand, const Dims& batch) {
    if (!operand.defined()) return;
    for (const Dim& d : batch)
      if (!operand.has_dim(d) && d.extent() > 1) shared.push_back(d);
    buf = Tensor::zeros(cat(shared, operand.dims()), is_half(operand.dtype()) ? DType::f32 : operand.dtype(),
                        operand.device());
    if (!shared.empty()) offsets = problem_offsets(buf, batch, operand.device());
  }
  // Per-problem offsets for the device (null: the operand's own).
  const int64_t* offsets_ptr() const {
    return offsets.defined() ? reinterpret_cast<const int64_t*>(offsets.impl().data()) : nullptr;
  }
  // The gradient over the operand's Dims, in its dtype (undefined if none was asked for).
  Tensor finish(const Tensor& operand) const {
    if (!buf.defined()) return Tensor();
    Tensor g = shared.empty() ? buf : reduce_sum(buf, shared);
    return g.dtype() != operand.dtype() ? round_to(g, operand.dtype()) : g;
  }
};

// The gradients of q, k, v (those asked for) by the device's fused backward, in the Dims of
// f's operands; empty where the device has none or an operand broadcasts over a batch Dim
// (its gradient would be a sum the kernel does not form).
// `packed`: where set, each gradient goes into the view of this buffer that the operand is of
// its source (see packed_source); the views are returned.
std::optional<std::vector<Tensor>> fused_backward(const Fused& f, const Tensor& g, const Dim& key_dim,
                                                  const Dim& kv_axis, bool need_q, bool need_k, bool need_v,
                                                  bool need_bias, const Tensor* packed = nullptr,
                                                  const Tensor* source = nullptr, bool need_scale = false) {
  if (!f.lse.defined()) return std::nullopt;
  const Dims batch = cat(f.g0, f.g1);
  for (const Dim& d : batch)
    if (!f.k.has_dim(d) || !f.v.has_dim(d)) return std::nullopt;
  const Tensor go = g.transpose_to(f.out.dims());  // out's strides: out is contiguous in its order
  backend::AttentionGrads ga{};
  ga.out_grad = go.impl().data();
  // Each gradient in its operand's Dim order where the primitive's groups merge there (so that
  // merging heads back needs no copy), else: the operand's other (extent-1) Dims, the batch
  // groups, then its rows and columns.
  auto grad = [&](bool need, const Tensor& t, const Dims& rows, const Dims& cols, backend::AttentionGrads::Operand& o) {
    if (!need) return Tensor();
    auto fits = [&](const Tensor& r) {
      int64_t e, s;
      return merged_stride(r, f.g0, e, s) && merged_stride(r, f.g1, e, s) && merged_stride(r, rows, e, s) &&
             merged_stride(r, cols, e, s) && (s == 1 || e <= 1);
    };
    Tensor r;
    if (packed) {
      r = same_place(*packed, t, *source);
      if (!fits(r)) return Tensor();
    } else {
      r = empty(t.dims(), t.dtype(), t.device(), "dot_attention");
      if (!fits(r)) {
        const Dims tail = cat(cat(batch, rows), cols);
        r = empty(cat(minus_dims(t.dims(), tail), tail), t.dtype(), t.device(), "dot_attention");
      }
    }
    int64_t e;
    o.data = r.impl().data();
    merged_stride(r, f.g0, e, o.batch_stride[0]);
    merged_stride(r, f.g1, e, o.batch_stride[1]);
    merged_stride(r, rows, e, o.row_stride);
    return r;
  };
  Tensor dq = grad(need_q, f.q, f.query, {key_dim}, ga.dq);
  Tensor dk = grad(need_k, f.k, {kv_axis}, {key_dim}, ga.dk);
  Tensor dv = grad(need_v, f.v, {kv_axis}, f.value, ga.dv);
  if (packed && (!dq.defined() || !dk.defined() || !dv.defined())) return std::nullopt;
  // The gradients of the bias and of the relative bias's row scale, each added into by the device.
  PartGrad dbias(need_bias ? f.bias : Tensor(), batch), dscale(need_scale ? f.row_scale : Tensor(), batch);
  if (dbias.buf.defined()) {
    ga.dbias = static_cast<char*>(dbias.buf.impl().data()) + f.bias_shift * int64_t(dtype_size(dbias.buf.dtype()));
    ga.dbias_batch_offset = dbias.offsets_ptr();
  }
  if (dscale.buf.defined()) {
    ga.drow_scale = dscale.buf.impl().data();
    ga.drow_scale_offset = dscale.offsets_ptr();
  }
  backend::Attention args = f.args;
  bool tf32 = false, wgmma = false;
  args.on_tf32 = &tf32;
  args.on_wgmma = &wgmma;
  if (!backend::backend_for(f.out.device()).attention_backward(f.out.dtype(), args, ga)) return std::nullopt;
  if (tf32) g_tf32_bwd.fetch_add(1, std::memory_order_relaxed);
  if (wgmma) g_wgmma_bwd.fetch_add(1, std::memory_order_relaxed);
  return std::vector<Tensor>{dq, dk, dv, dbias.finish(f.bias), dscale.finish(f.row_scale)};
}

// The tensor t was sliced from (through renaming views: dot_attention gives k and v their own
// key Dim), and the slice itself in `sliced`; null if t is not such a view.
const Tensor* sliced_from(const Tensor& t, const Tensor*& sliced) {
  const Tensor* cur = &t;
  for (int hops = 0; hops < 4; ++hops) {
    const AutogradMeta* m = cur->impl().autograd.get();
    if (!m || !m->grad_fn || m->grad_fn->inputs.size() != 1) return nullptr;
    const std::string name = m->grad_fn->name;
    if (name == "slice") {
      sliced = cur;
      return &m->grad_fn->inputs[0];
    }
    if (name != "replace_dim") return nullptr;
    cur = &m->grad_fn->inputs[0];
  }
  return nullptr;
}

// Where q, k and v are slices along one Dim of one contiguous tensor that they tile exactly
// (a fused projection split into q | k | v) and the fused primitive reads them in place, that
// tensor: the backward then writes dq, dk and dv straight into one gradient buffer shaped like
// it, instead of three buffers that the slices' nodes add into a fourth.
std::optional<Tensor> packed_source(const Fused& f, const Tensor& q, const Tensor& k, const Tensor& v) {
  const Tensor* source = nullptr;
  std::array<const Tensor*, 3> slices{};
  for (size_t i = 0; i < 3; ++i) {
    const Tensor* in = sliced_from(i == 0 ? q : i == 1 ? k : v, slices[i]);
    if (!in || (source && &in->impl() != &source->impl())) return std::nullopt;
    source = in;
  }
  const Tensor& src = *source;
  if (!src.is_contiguous() || !src.requires_grad()) return std::nullopt;
  // Each a step-1 slice of the same Dim: src's other Dims with src's strides, one new Dim with
  // the sliced Dim's stride; together their frames cover that Dim once.
  std::optional<Dim> axis;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (const Tensor* t : slices) {
    if (t->impl().storage != src.impl().storage || t->ndim() != src.ndim()) return std::nullopt;
    std::optional<Dim> own;
    for (size_t i = 0; i < t->ndim(); ++i) {
      const Dim& d = t->dims()[i];
      if (src.has_dim(d)) {
        if (t->strides()[i] != src.strides()[src.axis_of(d)]) return std::nullopt;
      } else if (own) {
        return std::nullopt;
      } else {
        own = d;
      }
    }
    if (!own) return std::nullopt;
    Dim a = minus_dims(src.dims(), t->dims()).at(0);
    if (axis && a != *axis) return std::nullopt;
    axis = a;
    const int64_t stride = src.strides()[src.axis_of(a)];
    if (t->strides()[t->axis_of(*own)] != stride && own->extent() > 1) return std::nullopt;
    const int64_t rel = t->impl().offset - src.impl().offset;
    if (stride <= 0 || rel % stride != 0) return std::nullopt;
    ranges.emplace_back(rel / stride, rel / stride + own->extent());
  }
  std::sort(ranges.begin(), ranges.end());
  int64_t at = 0;
  for (auto [b, e] : ranges) {
    if (b != at) return std::nullopt;
    at = e;
  }
  if (at != axis->extent()) return std::nullopt;
  // The primitive must read the slices themselves (no copies made for its layout).
  for (const auto& [op, t] : {std::pair{&f.q, &q}, {&f.k, &k}, {&f.v, &v}})
    if (op->impl().storage != t->impl().storage) return std::nullopt;
  return src;
}

// The gradients of q, k, v (those asked for) with dimx ops, recomputing the weights from q and k.
std::vector<Tensor> unfused_grads(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                                  const Tensor& g, const Dim& key_dim, const Dim& kv_axis, double scale,
                                  const DropoutPlan& drop, bool need_q, bool need_k, bool need_v, bool need_bias) {
  Tensor qs = q * scale;
  Tensor w = softmax(bias.defined() ? matmul(qs, k, key_dim) + bias : matmul(qs, k, key_dim), kv_axis);
  // out = matmul(dropout(w), v, kv_axis): as matmul's own backward. Every contraction masks
  // padded frames (select, never 0 * NaN), and the energies' gradient is 0 on padded keys
  // (softmax's fused backward). Only the gradients asked for are computed.
  const Tensor keep = drop.active() ? drop.keep(q.device()) : Tensor();
  const double kept_scale = drop.active() ? 1.0 / (1.0 - drop.p) : 1.0;
  const Tensor wd = drop.active() ? where(keep, w * kept_scale, 0.0) : w;
  Tensor gv = need_v ? sum_to(matmul(wd, g, minus_dims(wd.dims(), v.dims())), v) : Tensor();
  if (!need_q && !need_k && !need_bias) return std::vector<Tensor>{Tensor(), Tensor(), gv, Tensor()};
  Tensor gw = sum_to(matmul(g, v, minus_dims(v.dims(), w.dims())), w);
  if (drop.active()) gw = where(keep, gw * kept_scale, 0.0);
  Tensor ge = softmax_backward(false, w, gw, kv_axis, true);
  Tensor gq = need_q ? sum_to(matmul(ge, k, minus_dims(k.dims(), qs.dims())), qs) * scale : Tensor();
  Tensor gk = need_k ? sum_to(matmul(qs, ge, minus_dims(qs.dims(), k.dims())), k) : Tensor();
  Tensor gb = need_bias && bias.defined() ? sum_to(ge, bias) : Tensor();
  return std::vector<Tensor>{gq, gk, gv, gb};
}

// The relative bias gathered over {query, kv_axis}: element j - i + (tq - 1) of its positions.
Tensor relative_term(const RelativeBias& rel, const Dim& kv_axis) {
  const Tensor idx = relative_positions(rel.query, kv_axis, rel.query.extent() - 1, rel.table.device());
  const Tensor term = gather(rel.table, idx.with_sparse_dim(rel.positions), rel.positions);
  return rel.scale.defined() ? mul(rel.scale, term, true) : term;
}

// The default where DotAttentionOptions::fused is unset: DIMX_FUSED_ATTENTION=0/1 if set (for
// benchmarks), else fused.
bool fused_by_default() {
  static const bool fused = [] {
    const char* e = std::getenv("DIMX_FUSED_ATTENTION");
    return !(e && std::string(e) == "0");
  }();
  return fused;
}

// The gradients of the table and of the scale (undefined without one) from that of the
// gathered term (the gather's and the product's backward).
std::pair<Tensor, Tensor> table_grad(const RelativeBias& rel, const Dim& kv_axis, const Tensor& term_grad) {
  EnableGradGuard on;
  RelativeBias r = rel;
  r.table = rel.table.detach().with_requires_grad();
  if (r.scale.defined()) r.scale = rel.scale.detach().with_requires_grad();
  std::vector<Tensor> wrt{r.table};
  if (r.scale.defined()) wrt.push_back(r.scale);
  std::vector<Tensor> g = dimx::grad(relative_term(r, kv_axis), wrt, term_grad);
  return {g[0], g.size() > 1 ? g[1] : Tensor()};
}

// The fused forward with a node whose backward is the device's fused backward where it has
// one, else recomputes the weights from q and k with dimx ops.
// With `rel` (and no bias) the primitive reads the relative bias in place; the node's fourth
// input is then its table, and its fifth the relative bias's scale where it has one.
Tensor fused_with_grad(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                       const std::optional<RelativeBias>& rel, const Dim& key_dim, const Dim& kv_axis, double scale,
                       const DropoutPlan& drop) {
  const Tensor b = rel ? rel->table : bias;  // the input whose gradient the primitive's dbias is
  static const Tensor none;
  const Tensor& rs = rel ? rel->scale : none;  // the input whose gradient drow_scale is
  const bool grad = needs_grad({&q, &k, &v, &b, &rs});
  Fused f = fused_attention(q, k, v, bias, rel ? &*rel : nullptr, key_dim, kv_axis, scale, drop, grad);
  if (!f.out.defined() || !grad) return f.out;
  Tensor out = f.out;
  std::optional<Tensor> src = b.defined() ? std::nullopt : packed_source(f, q, k, v);
  if (src) {
    return record("dot_attention", out, {*src}, [f = std::move(f), q, k, v, src = *src, key_dim, kv_axis, scale, drop](
                                                  const Tensor& g) {
      Tensor d = empty(src.dims(), src.dtype(), src.device(), "dot_attention");
      if (fused_backward(f, g, key_dim, kv_axis, true, true, true, false, &d, &src)) {
        g_fused_bwd.fetch_add(1, std::memory_order_relaxed);
        return std::vector<Tensor>{d};
      }
      fell_back(true, "the device has no fused backward for " + std::string(dtype_name(q.dtype())) +
                          " with these Dims (q " + q.str() + ", k " + k.str() + ", v " + v.str() + ")");
      // Each unfused gradient copied into its slice's frames of the buffer (they tile it).
      const std::vector<Tensor> gs =
          unfused_grads(q, k, v, Tensor(), g, key_dim, kv_axis, scale, drop, true, true, true, false);
      for (size_t i = 0; i < 3; ++i) {
        const Tensor& t = i == 0 ? q : i == 1 ? k : v;
        const Tensor view = same_place(d, t, src);
        backend::backend_for(d.device()).copy(extents(t.dims()), gs[i].dtype(),
                                              {gs[i].impl().data(), aligned_strides(gs[i].impl(), t.dims())},
                                              d.dtype(), {view.impl().data(), view.impl().strides});
      }
      return std::vector<Tensor>{d};
    });
  }
  const bool need_q = q.requires_grad(), need_k = k.requires_grad(), need_v = v.requires_grad();
  const bool need_bias = b.defined() && b.requires_grad(), need_scale = rs.defined() && rs.requires_grad();
  std::vector<Tensor> inputs{q, k, v};
  if (b.defined()) inputs.push_back(b);
  if (rs.defined()) inputs.push_back(rs);
  return record("dot_attention", out, inputs,
                [f = std::move(f), q, k, v, b, rs, rel, key_dim, kv_axis, scale, drop, need_q, need_k, need_v, need_bias,
                 need_scale](const Tensor& g) {
    std::vector<Tensor> r;
    if (auto fused = fused_backward(f, g, key_dim, kv_axis, need_q, need_k, need_v, need_bias, nullptr, nullptr,
                                    need_scale)) {
      g_fused_bwd.fetch_add(1, std::memory_order_relaxed);
      r = *fused;
      // Over the Dims the laid-out bias and scale were expanded to.
      if (r[3].defined()) r[3] = sum_to(r[3], b);
      if (r[4].defined()) r[4] = sum_to(r[4], rs);
    } else {
      fell_back(true, "the device has no fused backward for " + std::string(dtype_name(q.dtype())) +
                          " with these Dims, or k or v broadcasts over a batch Dim (q " + q.str() + ", k " + k.str() +
                          ", v " + v.str() + ")");
      const Tensor full = rel ? relative_term(*rel, kv_axis) : b;
      r = unfused_grads(q, k, v, full, g, key_dim, kv_axis, scale, drop, need_q, need_k, need_v,
                        need_bias || need_scale);
      r.push_back(Tensor());
      if (rel && r[3].defined()) std::tie(r[3], r[4]) = table_grad(*rel, kv_axis, r[3]);
    }
    if (!rs.defined()) r.pop_back();
    if (!b.defined()) r.pop_back();
    return r;
  });
}

}  // namespace

Tensor relative_bias_term(const RelativeBias& rel, const Dim& kv_axis) {
  const char* op = "relative_bias_term";
  const Tensor& t = rel.table;
  check_defined(op, t);
  check_has_dim(op, t, rel.positions, "relative_bias.table");
  if (rel.positions.is_dynamic() || rel.positions.extent() != rel.query.extent() + kv_axis.extent() - 1)
    fail(std::string(op) + ": relative_bias.positions '" + rel.positions.str() + "' must be static with extent " +
         std::to_string(rel.query.extent() + kv_axis.extent() - 1) + " (query '" + rel.query.str() + "' + keys '" +
         kv_axis.str() + "' - 1)");
  if (rel.query == kv_axis || t.has_dim(rel.query) || t.has_dim(kv_axis))
    fail(std::string(op) + ": the table " + t.str() + " must be over neither the query '" + rel.query.str() +
         "' nor the keys '" + kv_axis.str() + "', which must differ");
  if (rel.scale.defined() && (rel.scale.has_dim(kv_axis) || rel.scale.has_dim(rel.positions)))
    fail(std::string(op) + ": the scale " + rel.scale.str() + " must be over neither the keys '" + kv_axis.str() +
         "' nor the positions '" + rel.positions.str() + "'");
  if (rel.scale.defined()) check_same_device(op, t, rel.scale);
  return relative_term(rel, kv_axis);
}

AttentionPathCounts attention_path_counts() {
  AttentionPathCounts c;
  c.fused_forward = g_fused_fwd.load();
  c.unfused_forward = g_unfused_fwd.load();
  c.fused_backward = g_fused_bwd.load();
  c.unfused_backward = g_unfused_bwd.load();
  c.relative_bias_gathered = g_rel_gathered.load();
  c.library_forward = g_library_fwd.load();
  c.tf32_forward = g_tf32_fwd.load();
  c.tf32_backward = g_tf32_bwd.load();
  c.wgmma_forward = g_wgmma_fwd.load();
  c.wgmma_backward = g_wgmma_bwd.load();
  return c;
}

void reset_attention_path_counts() {
  g_fused_fwd = 0;
  g_unfused_fwd = 0;
  g_fused_bwd = 0;
  g_unfused_bwd = 0;
  g_rel_gathered = 0;
  g_library_fwd = 0;
  g_tf32_fwd = 0;
  g_tf32_bwd = 0;
  g_wgmma_fwd = 0;
  g_wgmma_bwd = 0;
}

Tensor dot_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Dim& key_dim, const Dim& kv_axis,
                     const AttentionOptions& o) {
  static const Tensor none;
  const Tensor& table = o.relative_bias ? o.relative_bias->table : none;
  const Tensor& rscale = o.relative_bias ? o.relative_bias->scale : none;
  if (autocast_lowers({&q, &k, &v, &o.bias, &table, &rscale})) {
    AttentionOptions lo = o;
    if (o.bias.defined()) lo.bias = autocast_low(o.bias);
    if (table.defined()) lo.relative_bias->table = autocast_low(table);
    if (rscale.defined()) lo.relative_bias->scale = autocast_low(rscale);
    return dot_attention(autocast_low(q), autocast_low(k), autocast_low(v), key_dim, kv_axis, lo);
  }
  const char* op = "dot_attention";
  check_defined(op, q);
  check_defined(op, k);
  check_defined(op, v);
  check_has_dim(op, q, key_dim, "q");
  check_has_dim(op, k, key_dim, "k");
  check_has_dim(op, k, kv_axis, "k");
  check_has_dim(op, v, kv_axis, "v");
  if (q.has_dim(kv_axis))
    fail("dot_attention: q must not have the keys' Dim '" + kv_axis.str() + "' (q = " + q.str() +
         "); self-attention gives k and v a key Dim of their own (nn::dot_attention does)");
  if (key_dim.is_dynamic()) fail("dot_attention: key_dim '" + key_dim.str() + "' must be static");
  Tensor bias = o.bias;
  if (bias.defined()) {
    check_same_device(op, q, bias);
    if (bias.dtype() != q.dtype())
      fail("dot_attention: bias must have q's dtype, got bias = " + bias.str() + " and q = " + q.str());
    for (const Dim& d : bias.dims())
      if (d == key_dim || (d != kv_axis && !q.has_dim(d)))
        fail("dot_attention: the bias's Dims must be among q's (but key_dim '" + key_dim.str() +
             "') and the keys' ('" + kv_axis.str() + "'), got bias = " + bias.str() + " for q = " + q.str());
  }
  std::optional<RelativeBias> rel = o.relative_bias;
  if (rel) {
    const Tensor& t = rel->table;
    const Dim& rq = rel->query;
    const Dim& pos = rel->positions;
    check_defined(op, t);
    check_same_device(op, q, t);
    if (t.dtype() != q.dtype())
      fail("dot_attention: relative_bias.table must have q's dtype, got table = " + t.str() + " and q = " + q.str());
    if (!q.has_dim(rq) || rq == key_dim || k.has_dim(rq) || v.has_dim(rq))
      fail("dot_attention: relative_bias.query '" + rq.str() + "' must be one of q's Dims that k and v lack (q = " +
           q.str() + ", k = " + k.str() + ", v = " + v.str() + ")");
    check_has_dim(op, t, pos, "relative_bias.table");
    if (q.has_dim(pos) || pos == kv_axis || k.has_dim(pos))
      fail("dot_attention: relative_bias.positions '" + pos.str() + "' must be a Dim of its own, not q's or the keys' (q = " +
           q.str() + ", k = " + k.str() + ")");
    if (pos.is_dynamic() || pos.extent() != rq.extent() + kv_axis.extent() - 1)
      fail("dot_attention: relative_bias.positions '" + pos.str() + "' must be static with extent " +
           std::to_string(rq.extent() + kv_axis.extent() - 1) + " (query '" + rq.str() + "' + keys '" +
           kv_axis.str() + "' - 1)");
    for (const Dim& d : t.dims())
      if (d != pos && (d == key_dim || d == rq || !q.has_dim(d)))
        fail("dot_attention: relative_bias.table's Dims must be its positions '" + pos.str() +
             "' and q's Dims but key_dim '" + key_dim.str() + "' and its query '" + rq.str() + "', got table = " +
             t.str() + " for q = " + q.str());
    if (const Tensor& sc = rel->scale; sc.defined()) {
      check_same_device(op, q, sc);
      if (sc.dtype() != q.dtype())
        fail("dot_attention: relative_bias.scale must have q's dtype, got scale = " + sc.str() + " and q = " + q.str());
      for (const Dim& d : sc.dims())
        if (d == key_dim || !q.has_dim(d))
          fail("dot_attention: relative_bias.scale's Dims must be among q's but key_dim '" + key_dim.str() +
               "', got scale = " + sc.str() + " for q = " + q.str());
    }
  }
  // The relative bias over {query, keys}, added to the bias: where the fused primitive cannot
  // read it in place.
  auto gather_relative = [&] {
    g_rel_gathered.fetch_add(1, std::memory_order_relaxed);
    const Tensor full = relative_term(*rel, kv_axis);
    bias = bias.defined() ? add(bias, full, true) : full;
    rel.reset();
  };
  const double scale = o.scale;
  if (!std::isfinite(scale))
    fail("dot_attention: scale must be finite, got " + std::to_string(scale) + " (q = " + q.str() + ")");
  if (!(o.dropout >= 0 && o.dropout < 1))
    fail("dot_attention: dropout must be in [0, 1), got " + std::to_string(o.dropout));
  if (o.dropout > 0 && !o.gen) fail("dot_attention: dropout needs a Generator");
  // Dropout: its mask's counters are reserved here, whichever path runs.
  DropoutPlan drop;
  if (o.dropout > 0) {
    const Dims weights = union_dims(minus_dims(q.dims(), {key_dim}), minus_dims(k.dims(), {key_dim}));
    drop.mask = o.dropout_broadcast ? Dims{kv_axis} : weights;
    std::sort(drop.mask.begin(), drop.mask.end());
    drop.dtype = q.dtype() == DType::f64 ? DType::f64 : DType::f32;
    const int64_t n = checked_numel(op, drop.mask);
    const int64_t per = philox::values_per_counter(drop.dtype);
    drop.p = o.dropout;
    drop.seed = o.gen->seed();
    drop.offset = o.gen->advance(uint64_t((n + per - 1) / per));
  }
  const bool want_fused = o.fused.value_or(fused_by_default());
  if (rel && (!want_fused || bias.defined() || !backend::backend_for(q.device()).attention_takes_relative_bias() ||
              (rel->scale.defined() && !backend::backend_for(q.device()).attention_takes_bias_row_scale())))
    gather_relative();
  if (want_fused) {
    check_same_device(op, q, k);
    check_same_device(op, q, v);
    // The CPU computes bf16/f16 attention in f32 (half_compute.h), rounding the output once.
    const bool widen = is_half(q.dtype()) && q.device().is_cpu() && k.dtype() == q.dtype() && v.dtype() == q.dtype();
    auto fused = [&] {
      if (!widen) return fused_with_grad(q, k, v, bias, rel, key_dim, kv_axis, scale, drop);
      std::optional<RelativeBias> wide = rel;
      if (wide) {
        wide->table = widen_half(wide->table);
        if (wide->scale.defined()) wide->scale = widen_half(wide->scale);
      }
      return round_to(fused_with_grad(widen_half(q), widen_half(k), widen_half(v), widen_half(bias), wide, key_dim,
                                      kv_axis, scale, drop),
                      q.dtype());
    };
    Tensor out = fused();
    if (!out.defined() && rel) {  // the Dims do not fit the in-place view: gathered, once more
      gather_relative();
      out = fused();
    }
    if (out.defined()) {
      g_fused_fwd.fetch_add(1, std::memory_order_relaxed);
      return out;
    }
    fell_back(false, "no fused kernel for " + std::string(dtype_name(q.dtype())) + " on " + q.device().str() +
                         " with these Dims" + (bias.defined() ? " and a bias (" + bias.str() + ")" : std::string()) +
                         (drop.active() ? " and dropout" : "") + " (q " + q.str() + ", k " + k.str() + ", v " +
                         v.str() + ", key Dim " + kv_axis.str() + ")");
  } else {
    g_unfused_fwd.fetch_add(1, std::memory_order_relaxed);
  }
  Tensor energy = matmul(q * scale, k, key_dim);
  if (bias.defined()) energy = energy + bias;
  Tensor weights = softmax(energy, kv_axis);
  if (drop.active()) weights = drop.apply(weights);
  // The weights are 0 on padded keys already; matmul's mask keeps padded values out too.
  return matmul(weights, v, kv_axis);
}

}  // namespace dimx

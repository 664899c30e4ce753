#include <dimx/autograd.h>
#include <dimx/elementwise.h>
#include <dimx/matmul.h>
#include <dimx/nn/attention.h>
#include <dimx/nn/torchscale.h>
#include <dimx/random.h>
#include <dimx/shape.h>
#include <dimx/softmax.h>

#include <cmath>
#include <limits>

#include "attention_common.h"
#include "kv_history.h"
#include "tensor_impl.h"
#include "xpos.h"

namespace dimx::nn::torchscale {

namespace {

constexpr const char* kOp = "torchscale::MultiheadAttention";

// zeta_i = (2i + 0.4 d) / (1.4 d) over {half} (d = 2 * half).
Tensor zeta_of(const Dim& half, DType dtype) {
  const int64_t d = 2 * half.size();
  std::vector<double> z(static_cast<size_t>(half.size()));
  for (int64_t i = 0; i < half.size(); ++i) z[size_t(i)] = (2.0 * double(i) + 0.4 * double(d)) / (1.4 * double(d));
  return Tensor::from_vector<double>({half}, z).astype(dtype);
}

// A wrapped module applied to x {..., axis, ...}: positions before `p` through A, the rest
// through B, as a split of the axis (so a padded sequence keeps its frames in order).
template <class M>
Tensor run(const Wrapped<M>& w, const Tensor& x, const std::optional<Dim>& axis, int64_t p) {
  if (const M* m = std::get_if<M>(&w)) return (*m)(x);
  const Multiway<M>& mw = std::get<Multiway<M>>(w);
  if (p < -1) fail(std::string(kOp) + ": split_position must be -1 or >= 0, got " + std::to_string(p));
  if (p == -1) return mw.A(x);
  if (p == 0) return mw.B(x);
  if (!axis || p >= axis->extent()) return mw.A(x);
  auto [xa, ta] = slice(x, *axis, 0, p);
  auto [xb, tb] = slice(x, *axis, p);
  auto [y, both] = concat({{mw.A(xa), ta}, {mw.B(xb), tb}});
  return replace_dim(y, both, *axis).first;
}

template <class M, class Make>
Wrapped<M> wrap(bool multiway, Make&& make) {
  if (!multiway) return Wrapped<M>(std::in_place_index<0>, make());
  return Wrapped<M>(std::in_place_index<1>, Multiway<M>(make(), make()));
}

template <class M>
std::vector<M*> branches(Wrapped<M>& w) {
  if (M* m = std::get_if<M>(&w)) return {m};
  Multiway<M>& mw = std::get<Multiway<M>>(w);
  return {&mw.A, &mw.B};
}

// NaN -> 0, +-inf -> the dtype's largest finite value (torch.nan_to_num).
Tensor nan_to_num(const Tensor& w) {
  const double big = w.dtype() == DType::f64 ? std::numeric_limits<double>::max() : std::numeric_limits<float>::max();
  return where(isnan(w), 0.0, clip(w, -big, big));
}

}  // namespace

Tensor xpos(const Tensor& x, const Dim& axis, const Dim& feature, const Tensor& offset, bool downscale,
            double scale_base) {
  return xpos_rotate("xpos", x, axis, feature, offset, downscale, scale_base, Tensor());
}

Tensor xpos(const Tensor& x, const Dim& axis, const Dim& feature, int64_t offset, bool downscale, double scale_base) {
  if (offset < 0) fail("xpos: offset must be >= 0, got " + std::to_string(offset));
  return xpos(x, axis, feature, offset ? Tensor::scalar(double(offset), DType::i64) : Tensor(), downscale, scale_base);
}

MultiheadAttention::MultiheadAttention(Dim embed_dim, int64_t num_heads, Generator& gen, const Options& o)
    : embed(embed_dim),
      heads(o.heads ? *o.heads : Dim(positive_heads(kOp, num_heads), "heads")),
      head_dim(size_per_head(kOp, "embed_dim", embed_dim, num_heads), "head_dim"),
      proj(embed_dim.size(), "proj"),
      half(std::max<int64_t>(head_dim.size() / 2, 0), "xpos_half"),
      options(o),
      k_proj(wrap<Linear>(o.multiway, [&] { return Linear(embed, proj, gen, true, o.dtype); })),
      v_proj(wrap<Linear>(o.multiway, [&] { return Linear(embed, proj, gen, true, o.dtype); })),
      q_proj(wrap<Linear>(o.multiway, [&] { return Linear(embed, proj, gen, true, o.dtype); })),
      out_proj(wrap<Linear>(o.multiway, [&] { return Linear(proj, embed, gen, true, o.dtype); })) {
  if (heads.extent() != num_heads || heads.is_dynamic())
    fail(std::string(kOp) + ": Options::heads '" + heads.str() + "' must be static with num_heads " +
         std::to_string(num_heads) + " entries");
  if (o.self_attention && o.encoder_decoder_attention)
    fail(std::string(kOp) + ": self_attention and encoder_decoder_attention cannot both be set");
  if ((o.xpos_rel_pos || o.subln) && !o.self_attention)
    fail(std::string(kOp) + ": xpos_rel_pos and subln exist only with self_attention");
  if (o.xpos_rel_pos && head_dim.size() % 2 != 0)
    fail(std::string(kOp) + ": xpos_rel_pos needs an even head size, got " + head_dim.str());
  if (o.xpos_rel_pos && (!(o.xpos_scale_base > 0) || !std::isfinite(o.xpos_scale_base)))
    fail(std::string(kOp) + ": xpos_scale_base must be positive and finite, got " + std::to_string(o.xpos_scale_base));
  if (!(o.dropout >= 0 && o.dropout < 1)) fail(std::string(kOp) + ": dropout must be in [0, 1), got " + std::to_string(o.dropout));
  if (o.subln) inner_attn_ln = wrap<LayerNorm>(o.multiway, [&] { return LayerNorm(proj, o.layernorm_eps, true, true, o.dtype); });
  if (o.xpos_rel_pos) {
    xpos.emplace();
    xpos->scale_base = o.xpos_scale_base;
    xpos->scale = zeta_of(half, DType::f32);  // a buffer, as the original's (float32)
  }
  reset_parameters(gen);
}

void MultiheadAttention::reset_parameters(Generator& gen) {
  const double gain = 1.0 / std::sqrt(2.0);
  for (Wrapped<Linear>* w : {&k_proj, &v_proj, &q_proj})
    for (Linear* l : branches(*w)) glorot_uniform(l->weight, l->in_dim.size(), l->out_dim.size(), gen, gain);
  for (Linear* l : branches(out_proj)) {
    glorot_uniform(l->weight, l->in_dim.size(), l->out_dim.size(), gen);
    NoGradGuard ng;
    l->bias->copy_from(Tensor::zeros(l->bias->dims(), l->bias->dtype(), l->bias->device()));
  }
  if (inner_attn_ln)
    for (LayerNorm* ln : branches(*inner_attn_ln)) ln->reset_parameters(gen);
}

State MultiheadAttention::initial_state(const Dims& batch) const {
  const Linear& q = std::holds_alternative<Linear>(q_proj) ? std::get<Linear>(q_proj) : std::get<Multiway<Linear>>(q_proj).A;
  return empty_kv(batch, heads, head_dim, head_dim, q.weight.dtype(), q.weight.device());
}

Output MultiheadAttention::operator()(const Tensor& query0, const Dim& query_axis, const Inputs& in) const {
  const Options& o = options;
  const auto [query, qaxis, step] = query_frames(kOp, query0, query_axis, embed);
  const bool train = training;
  if (train && o.dropout > 0 && !in.gen) fail(std::string(kOp) + ": dropout in training needs a Generator (Inputs::gen)");
  const Device dev = query0.device();
  const int64_t p = in.split_position;
  if (p < -1) fail(std::string(kOp) + ": split_position must be -1 or >= 0, got " + std::to_string(p));

  auto split_heads = [&](const Tensor& t) { return split_dims(t, proj, {heads, head_dim}); };

  // ---- projections: keys over the query's frames unless a key is given
  Dim new_axis = qaxis;
  Tensor k_src = query, v_src;
  if (in.key.defined()) {
    if (!in.key_axis) fail(std::string(kOp) + ": a key needs Inputs::key_axis");
    new_axis = *in.key_axis;
    if (new_axis == qaxis) fail(std::string(kOp) + ": key_axis must differ from the query's axis '" + qaxis.str() + "'");
    check_has_dim(kOp, in.key, new_axis, "key");
    check_has_dim(kOp, in.key, embed, "key");
    k_src = in.key;
  } else if (!in.incremental_state) {
    new_axis = qaxis.copy(qaxis.name() + "_kv");
    k_src = replace_dim(query, qaxis, new_axis).first;
  }
  v_src = in.value.defined() ? in.value : k_src;
  if (in.value.defined()) {
    check_has_dim(kOp, v_src, new_axis, "value");
    check_has_dim(kOp, v_src, embed, "value");
  }
  const double scaling = 1.0 / std::sqrt(double(head_dim.size()));
  // q * scaling, applied where the scores are formed (XPOS is linear, so the order is free).
  Tensor q = split_heads(run(q_proj, query, qaxis, p));
  Tensor k = split_heads(run(k_proj, k_src, new_axis, p));
  Tensor v = split_heads(run(v_proj, v_src, new_axis, p));

  // ---- XPOS without a state: keys and queries centred on the same frames (before a padding
  // mask cuts the keys to their lengths). With a state, the whole history is rotated below.
  if (xpos && !in.incremental_state) {
    k = xpos_rotate(kOp, k, new_axis, head_dim, Tensor(), true, xpos->scale_base, xpos->scale);
    q = xpos_rotate(kOp, q, qaxis, head_dim, Tensor(), false, xpos->scale_base, xpos->scale);
  }

  // ---- key padding: a bool mask becomes lengths of the new keys where it can
  const int64_t unpadded_extent = new_axis.extent();
  const PaddedKeys pk = pad_keys(kOp, in.key_padding_mask, k, v, new_axis, qaxis, query.dtype(),
                                 in.incremental_state.has_value());
  new_axis = pk.axis;
  Tensor additive_pad = pk.additive;

  // ---- the history, XPOS, and the key Dim the queries attend over
  Dim keys = new_axis;  // what the queries attend over
  std::optional<State> state_out;
  if (in.incremental_state) {
    // The state keeps un-rotated keys: their XPOS centre moves with every step.
    KvHistory h = step && new_axis == qaxis
                      ? append_kv(kOp, *in.incremental_state, squeeze(k, qaxis), squeeze(v, qaxis), single_step_dim())
                      : append_kv(kOp, *in.incremental_state, k, v, new_axis, in.causal && new_axis == qaxis);
    state_out = h.state;
    k = h.state.k_accum;
    v = h.state.v_accum;
    keys = h.keys;
    if (xpos) {
      // Keys over the whole history; the queries after the keys before them (per sequence).
      const Tensor history = in.incremental_state->accum_axis.lengths(dev);  // counts: never negative
      k = xpos_rotate(kOp, k, h.state.accum_axis, head_dim, Tensor(), true, xpos->scale_base, xpos->scale);
      q = xpos_rotate(kOp, q, qaxis, head_dim, history, false, xpos->scale_base, xpos->scale, /*check_offset=*/false);
    }
    if (keys != h.state.accum_axis) {
      k = replace_dim(k, h.state.accum_axis, keys).first;
      v = replace_dim(v, h.state.accum_axis, keys).first;
    }
  }
  if (in.causal && !in.incremental_state) {
    if (new_axis == qaxis || in.key.defined()) fail(std::string(kOp) + ": causal needs keys over the query's frames");
    Dim ck = causal_key_dim(qaxis, keys);
    k = replace_dim(k, keys, ck).first;
    v = replace_dim(v, keys, ck).first;
    keys = ck;
  }

  // ---- scores
  const Dims known = union_dims(query.dims(), {heads});
  const Tensor attn_mask = score_mask(kOp, in.attn_mask, query.dtype(), keys, known, unpadded_extent);
  if (additive_pad.defined()) additive_pad = onto_keys(kOp, "key_padding_mask", additive_pad, keys, known, unpadded_extent);
  Tensor rel_pos = in.rel_pos;
  if (rel_pos.defined()) {
    if (!rel_pos.has_dim(heads))
      fail(std::string(kOp) + ": rel_pos " + rel_pos.str() + " lacks this module's heads Dim '" + heads.str() +
           "' (Options::heads shares one)");
    rel_pos = onto_keys(kOp, "rel_pos", rel_pos, keys, known, unpadded_extent);
  }
  const bool dropout_active = train && o.dropout > 0;
  Output out;
  out.keys = keys;
  out.state = state_out;
  Tensor ctx;
  // The padding and relative-position terms go to the fused primitive as one additive bias; an
  // attn_mask keeps the unfused path (the original replaces NaN energies before adding it).
  if (!in.need_weights && !attn_mask.defined()) {
    DotAttentionOptions dopt;
    dopt.scale = scaling;
    if (dropout_active) {  // the fused primitive drops the weights dropout() below would drop
      dopt.att_dropout = o.dropout;
      dopt.training = true;
      dopt.gen = in.gen;
    }
    Tensor bias = additive_pad;
    if (rel_pos.defined()) bias = bias.defined() ? add(bias, rel_pos, true) : rel_pos;
    if (bias.defined()) dopt.bias = bias.astype(q.dtype());
    ctx = dot_attention(q, k, v, head_dim, keys, dopt);
  } else {
    Tensor w = matmul(q * scaling, k, {head_dim});
    if (attn_mask.defined()) w = add(nan_to_num(w), attn_mask, true);
    if (additive_pad.defined()) w = add(w, additive_pad, true);
    if (rel_pos.defined()) w = add(w, rel_pos, true);
    Tensor pr = softmax(w, keys);
    if (in.need_weights) out.weights = step ? squeeze(pr, qaxis) : pr;
    if (dropout_active) pr = dropout(pr, o.dropout, *in.gen, true);
    ctx = matmul(pr, v, {keys});
  }
  Tensor attn = merge_dims(ctx, {heads, head_dim}, proj).first;
  if (inner_attn_ln) attn = run(*inner_attn_ln, attn, qaxis, p);
  attn = run(out_proj, attn, qaxis, p);
  out.attn = step ? squeeze(attn, qaxis) : attn;
  return out;
}

std::string MultiheadAttention::extra_repr() const {
  const Options& o = options;
  std::string s = "embed=" + embed.str() + ", heads=" + std::to_string(heads.size());
  if (o.self_attention) s += ", self_attention";
  if (o.encoder_decoder_attention) s += ", encoder_decoder_attention";
  if (o.subln) s += ", subln";
  if (o.xpos_rel_pos) s += ", xpos (scale_base " + std::to_string(o.xpos_scale_base) + ")";
  if (o.multiway) s += ", multiway";
  if (o.dropout > 0) s += ", dropout=" + std::to_string(o.dropout);
  return s;
}

}  // namespace dimx::nn::torchscale

#include <dimx/autograd.h>
#include <dimx/elementwise.h>
#include <dimx/matmul.h>
#include <dimx/nn/attention.h>
#include <dimx/nn/beats.h>
#include <dimx/random.h>
#include <dimx/reduce.h>
#include <dimx/shape.h>
#include <dimx/softmax.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention_common.h"
#include "kv_history.h"
#include "tensor_impl.h"

namespace dimx::nn::beats {

namespace {

constexpr const char* kOp = "beats::MultiheadAttention";
constexpr double kInf = std::numeric_limits<double>::infinity();

void check_bucket_args(int64_t num_buckets, int64_t max_distance) {
  if (num_buckets < 4 || max_distance <= num_buckets / 4)
    fail("relative_position_bucket: need num_buckets >= 4 and max_distance > num_buckets / 4, got num_buckets " +
         std::to_string(num_buckets) + ", max_distance " + std::to_string(max_distance));
}

// One bucket, with the original's float32 arithmetic for the logarithmic part.
int64_t bucket_of(int64_t rel, int64_t num_buckets, int64_t max_distance) {
  const int64_t nb = num_buckets / 2, max_exact = nb / 2;
  const int64_t r = rel < 0 ? -rel : rel;
  int64_t b = rel > 0 ? nb : 0;
  if (r < max_exact) return b + r;
  const float ratio = float(r) / float(max_exact);
  const float scale = float(std::log(double(max_distance) / double(max_exact)));
  const float f = std::log(ratio) / scale * float(nb - max_exact);
  return b + std::min<int64_t>(nb - 1, max_exact + int64_t(f));
}

// The T5 table's rows for the relative positions dmin, dmin + 1, ..., over a new Dim
// `positions` ({positions, heads}, small): each position gets its bucket once, on the host.
Tensor t5_rows(const Tensor& table, const Dim& buckets, int64_t dmin, const Dim& positions, int64_t num_buckets,
               int64_t max_distance) {
  std::vector<int64_t> b(size_t(positions.size()));
  for (int64_t d = 0; d < positions.size(); ++d) b[size_t(d)] = bucket_of(dmin + d, num_buckets, max_distance);
  // The buckets are in range by construction: clamping skips the device's range report.
  return gather(table, Tensor::from_vector<int64_t>({positions}, b).to(table.device()).with_sparse_dim(buckets),
                buckets, /*clip_to_valid=*/true);
}

// The T5 bias in relative form: the rows of j - i = -(tq - 1) .. tk - 1 (dimx::RelativeBias).
RelativeBias t5_relative(const Tensor& table, const Dim& buckets, const Dim& query, const Dim& key,
                         int64_t num_buckets, int64_t max_distance) {
  const Dim positions(query.extent() + key.extent() - 1, "t5_positions");
  return RelativeBias{t5_rows(table, buckets, -(query.extent() - 1), positions, num_buckets, max_distance), query,
                      positions, Tensor()};
}

// The T5 bias over {query, key} (+ offset's Dims) for the relative positions j - i - offset
// (decoding: the history length per sequence): the rows of every position that occurs (tq +
// tk - 1 plus the offsets' spread), gathered per (query, key) by the position's index on the
// device. Nothing of size {query, key} is built on the host or kept between calls.
Tensor t5_bias(const Tensor& table, const Dim& buckets, const Dim& query, const Dim& key, const Tensor& offset,
               int64_t num_buckets, int64_t max_distance) {
  if (!offset.defined())
    return relative_bias_term(t5_relative(table, buckets, query, key, num_buckets, max_distance), key);
  const Tensor o = offset.astype(DType::i64);
  const std::vector<int64_t> offs = o.to(Device::cpu()).to_vector<int64_t>();
  int64_t omin = 0, omax = 0;
  if (!offs.empty()) {
    omin = *std::min_element(offs.begin(), offs.end());
    omax = *std::max_element(offs.begin(), offs.end());
  }
  const int64_t dmin = -(query.extent() - 1) - omax, dmax = key.extent() - 1 - omin;
  const Dim positions(std::max<int64_t>(1, dmax - dmin + 1), "t5_positions");
  const Tensor rows = t5_rows(table, buckets, dmin, positions, num_buckets, max_distance);
  // j - i - offset over {query, key}, as an index into `positions`.
  const Tensor idx = sub(relative_positions(query, key, -dmin, table.device()), o.to(table.device()), true);
  return gather(rows, idx.with_sparse_dim(positions), positions, /*clip_to_valid=*/true);
}

// fairseq's quant noise on a copy of a Linear weight {out, in}: each (row, block of `block`
// input columns) is dropped with probability p, the rest scaled by 1 / (1 - p).
Tensor quant_noise(const Linear& l, double p, int64_t block, Generator& gen) {
  const int64_t n = l.in_dim.size() / block;
  Dim blocks(n, "qn_blocks"), within(block, "qn_block");
  Tensor keep = random_uniform({l.out_dim, blocks}, gen, 0, 1, l.weight.dtype(), l.weight.device()) >= p;
  Tensor w = split_dims(l.weight, l.in_dim, {blocks, within});
  w = where(keep, w * (1.0 / (1.0 - p)), 0.0);
  return merge_dims(w, {blocks, within}, l.in_dim).first;
}

// Tensors over `keys` extended by the extra key frames with zeros (attn_mask, position bias).
Tensor zero_extend(const Tensor& t, const Dim& keys, const Dim& extra, const Dim& out) {
  if (!t.defined()) return t;
  Dims zd = minus_dims(t.dims(), {keys});
  zd.push_back(extra);
  return concat({{t, keys}, {Tensor::zeros(zd, t.dtype(), t.device()), extra}}, out).first;
}

}  // namespace

Tensor relative_position_bucket(const Tensor& rel, int64_t num_buckets, int64_t max_distance) {
  check_defined("relative_position_bucket", rel);
  if (!is_integer(rel.dtype())) fail("relative_position_bucket: rel must be an integer tensor, got " + rel.str());
  check_bucket_args(num_buckets, max_distance);
  std::vector<int64_t> v = rel.to_vector<int64_t>();
  for (int64_t& r : v) r = bucket_of(r, num_buckets, max_distance);
  return Tensor::from_vector<int64_t>(rel.dims(), v).to(rel.device());
}

MultiheadAttention::MultiheadAttention(Dim embed_dim, int64_t num_heads, Generator& gen, const Options& o)
    : embed(embed_dim),
      kdim(o.kdim.value_or(embed_dim)),
      vdim(o.encoder_decoder_attention ? o.kdim.value_or(embed_dim) : o.vdim.value_or(embed_dim)),
      heads(o.heads ? *o.heads : Dim(positive_heads(kOp, num_heads), "heads")),
      head_dim(size_per_head(kOp, "embed_dim", embed_dim, num_heads), "head_dim"),
      proj(embed_dim.size(), "proj"),
      buckets(std::max<int64_t>(o.num_buckets, 0), "buckets"),
      options(o),
      k_proj(kdim, proj, gen, !o.rescale_init, o.dtype),
      v_proj(vdim, proj, gen, o.bias, o.dtype),
      q_proj(embed, proj, gen, o.bias, o.dtype),
      out_proj(proj, embed, gen, o.bias, o.dtype) {
  if (heads.extent() != num_heads || heads.is_dynamic())
    fail(std::string(kOp) + ": Options::heads '" + heads.str() + "' must be static with num_heads " +
         std::to_string(num_heads) + " entries");
  const bool same = kdim == embed && vdim == embed;
  if (o.self_attention && !same)
    fail(std::string(kOp) + ": self_attention needs kdim == vdim == embed_dim (the keys are the query's frames), got kdim " +
         kdim.str() + ", vdim " + vdim.str() + ", embed_dim " + embed.str());
  if (o.self_attention && o.encoder_decoder_attention)
    fail(std::string(kOp) + ": self_attention and encoder_decoder_attention cannot both be set");
  if (o.encoder_decoder_attention && o.vdim && *o.vdim != kdim)
    fail(std::string(kOp) + ": encoder_decoder_attention projects the values from the key, so vdim " + o.vdim->str() +
         " must be kdim " + kdim.str());
  if (!(o.dropout >= 0 && o.dropout < 1)) fail(std::string(kOp) + ": dropout must be in [0, 1), got " + std::to_string(o.dropout));
  if (!(o.q_noise >= 0 && o.q_noise < 1)) fail(std::string(kOp) + ": q_noise must be in [0, 1), got " + std::to_string(o.q_noise));
  if (o.q_noise > 0) {
    if (o.qn_block_size < 1) fail(std::string(kOp) + ": qn_block_size must be positive, got " + std::to_string(o.qn_block_size));
    for (const Linear* l : {&q_proj, &k_proj, &v_proj, &out_proj})
      if (l->in_dim.size() % o.qn_block_size != 0)
        fail(std::string(kOp) + ": q_noise needs every projection's input size to be a multiple of qn_block_size " +
             std::to_string(o.qn_block_size) + ", got " + l->in_dim.str());
  }
  if (o.has_relative_attention_bias) {
    check_bucket_args(o.num_buckets, o.max_distance);
    relative_attention_bias.emplace(buckets, heads, gen, o.dtype);
  }
  if (o.add_bias_kv) {
    bias_k = Tensor::zeros({kv_1, kv_2, proj}, o.dtype).with_requires_grad();
    bias_v = Tensor::zeros({kv_1, kv_2, proj}, o.dtype).with_requires_grad();
  }
  if (o.gru_rel_pos) {
    grep_linear.emplace(head_dim, grep, gen, true, o.dtype);
    grep_a = Tensor::ones({a_1, heads, a_2, a_3}, o.dtype).with_requires_grad();
  }
  reset_parameters(gen);
}

void MultiheadAttention::reset_parameters(Generator& gen) {
  const double gain = kdim == embed && vdim == embed ? 1.0 / std::sqrt(2.0) : 1.0;
  for (Linear* l : {&k_proj, &v_proj, &q_proj}) glorot_uniform(l->weight, l->in_dim.size(), l->out_dim.size(), gen, gain);
  glorot_uniform(out_proj.weight, proj.size(), embed.size(), gen);
  NoGradGuard ng;
  if (out_proj.bias) out_proj.bias->copy_from(Tensor::zeros({embed}, out_proj.bias->dtype(), out_proj.bias->device()));
  // [1, 1, E]: PyTorch's fans are E and E.
  if (bias_k) glorot_normal(*bias_k, proj.size(), proj.size(), gen);
  if (bias_v) glorot_normal(*bias_v, proj.size(), proj.size(), gen);
  // [num_buckets, H]: fan_in H, fan_out num_buckets.
  if (relative_attention_bias) glorot_normal(relative_attention_bias->weight, heads.size(), buckets.size(), gen);
  if (grep_a) grep_a->copy_from(Tensor::ones(grep_a->dims(), grep_a->dtype(), grep_a->device()));
}

Tensor MultiheadAttention::compute_bias(const Dim& query, const Dim& key, const Tensor& query_offset) const {
  if (!relative_attention_bias) fail(std::string(kOp) + ": compute_bias needs has_relative_attention_bias");
  if (query == key) fail(std::string(kOp) + ": compute_bias needs distinct query and key Dims, got " + query.str());
  return t5_bias(relative_attention_bias->weight, buckets, query, key, query_offset, options.num_buckets,
                 options.max_distance);
}

State MultiheadAttention::initial_state(const Dims& batch) const {
  return empty_kv(batch, heads, head_dim, head_dim, q_proj.weight.dtype(), q_proj.weight.device());
}

Output MultiheadAttention::operator()(const Tensor& query0, const Dim& query_axis, const Inputs& in) const {
  const Options& o = options;
  const auto [query, qaxis, step] = query_frames(kOp, query0, query_axis, embed);
  if (in.static_kv && !o.encoder_decoder_attention)
    fail(std::string(kOp) + ": static_kv needs encoder_decoder_attention");
  const bool need_weights = in.need_weights || in.need_head_weights;
  const bool train = training;
  const Device dev = query0.device();
  if (train && (o.dropout > 0 || o.q_noise > 0) && !in.gen)
    fail(std::string(kOp) + ": dropout or q_noise in training needs a Generator (Inputs::gen)");


  auto project = [&](const Linear& l, const Tensor& x) {
    if (!(train && o.q_noise > 0)) return l(x);
    Tensor y = matmul(x, quant_noise(l, o.q_noise, o.qn_block_size, *in.gen), {l.in_dim});
    return l.bias ? y + *l.bias : y;
  };
  auto split_heads = [&](const Tensor& t) { return split_dims(t, proj, {heads, head_dim}); };

  // ---- queries, and the new keys and values over `new_axis`
  const Tensor qr = split_heads(project(q_proj, query));  // the raw projection (the gate reads it)
  Tensor k, v;
  Dim new_axis = qaxis;
  const bool reuse = in.static_kv && in.incremental_state && in.incremental_state->accum_axis.extent() > 0;
  if (!reuse) {
    const Tensor* src_k = o.self_attention ? &query : &in.key;
    const Tensor* src_v = o.self_attention ? &query : o.encoder_decoder_attention ? &in.key : &in.value;
    if (!o.self_attention) {
      if (!in.key_axis) fail(std::string(kOp) + ": cross-attention needs Inputs::key_axis");
      new_axis = *in.key_axis;
      check_defined(kOp, *src_k);
      check_defined(kOp, *src_v);
      check_has_dim(kOp, *src_k, new_axis, "key");
      check_has_dim(kOp, *src_v, new_axis, o.encoder_decoder_attention ? "key" : "value");
      if (new_axis == qaxis) fail(std::string(kOp) + ": key_axis must differ from the query's axis '" + qaxis.str() + "'");
    } else if (!in.incremental_state) {
      new_axis = qaxis.copy(qaxis.name() + "_kv");
    }
    // Self-attention decoding keeps the new keys on the query's axis: the history appends them
    // there and places each query at its position (append_kv).
    const Tensor kv_src = o.self_attention && new_axis != qaxis ? replace_dim(query, qaxis, new_axis).first : query;
    k = split_heads(project(k_proj, o.self_attention ? kv_src : *src_k));
    v = split_heads(project(v_proj, o.self_attention ? kv_src : *src_v));
  }

  // ---- key padding: a bool mask becomes lengths of the new keys where it can
  const int64_t unpadded_extent = new_axis.extent();
  Tensor additive_pad;
  if (!reuse) {
    PaddedKeys pk = pad_keys(kOp, in.key_padding_mask, k, v, new_axis, qaxis, query.dtype(), in.incremental_state.has_value());
    new_axis = pk.axis;
    additive_pad = pk.additive;
  }

  // ---- the history of a state, and the key Dim the queries attend over
  Dim keys = new_axis;
  Tensor query_pos;  // absolute query positions with a state (relative bias)
  std::optional<State> state_out;
  if (in.incremental_state) {
    const State& st = *in.incremental_state;
    if (reuse) {
      k = st.k_accum;
      v = st.v_accum;
      keys = st.accum_axis;
      state_out = st;
    } else if (in.static_kv) {
      state_out = State{k, v, new_axis};
    } else {
      // A single step goes in as one (the history's lengths stay per sequence).
      KvHistory h = step && new_axis == qaxis
                        ? append_kv(kOp, st, squeeze(k, qaxis), squeeze(v, qaxis), single_step_dim())
                        : append_kv(kOp, st, k, v, new_axis, in.causal && o.self_attention);
      k = h.k;
      v = h.v;
      keys = h.keys;
      state_out = h.state;
      if (o.self_attention) query_pos = h.query_pos;
    }
  }
  const bool causal_keys = in.causal && !in.incremental_state;
  if (causal_keys) {
    if (!o.self_attention) fail(std::string(kOp) + ": causal needs self_attention");
    Dim ck = causal_key_dim(qaxis, new_axis);
    k = replace_dim(k, keys, ck).first;
    v = replace_dim(v, keys, ck).first;
    keys = ck;
  }

  // ---- additive terms over {query, keys}: attn_mask, the padding term, the position bias
  const Dims known = union_dims(query.dims(), {heads});
  auto on_keys = [&](const Tensor& t, const char* what) { return onto_keys(kOp, what, t, keys, known, unpadded_extent); };
  Tensor attn_mask = score_mask(kOp, in.attn_mask, query.dtype(), keys, known, unpadded_extent);
  if (additive_pad.defined()) additive_pad = on_keys(additive_pad, "key_padding_mask");

  // The bias by relative position stays a table (`rel`) where it can; position_bias is the
  // {heads, query, keys} tensor otherwise.
  Tensor position_bias = in.position_bias;
  std::optional<RelativeBias> rel;
  if (in.relative_position_bias) {
    const RelativeBias& r = *in.relative_position_bias;
    if (position_bias.defined())
      fail(std::string(kOp) + ": pass position_bias or relative_position_bias, not both");
    if (in.incremental_state || step)
      fail(std::string(kOp) + ": relative_position_bias needs the whole sequence (no decoding state or single step); "
                              "pass position_bias when decoding");
    check_defined(kOp, r.table);
    if (r.query != qaxis)
      fail(std::string(kOp) + ": relative_position_bias is relative to '" + r.query.str() + "', the query's axis is '" +
           qaxis.str() + "'");
    if (!r.table.has_dim(heads))
      fail(std::string(kOp) + ": relative_position_bias.table " + r.table.str() + " lacks this module's heads Dim '" +
           heads.str() + "' (layers that share a position bias share their heads Dim: Options::heads)");
    if (r.scale.defined()) fail(std::string(kOp) + ": relative_position_bias must be ungated (no scale)");
    if (r.positions.extent() != qaxis.extent() + keys.extent() - 1)
      fail(std::string(kOp) + ": relative_position_bias.positions '" + r.positions.str() + "' must have extent " +
           std::to_string(qaxis.extent() + keys.extent() - 1) + " (query '" + qaxis.str() + "' + keys '" + keys.str() +
           "' - 1)");
    rel = r;
  } else if (position_bias.defined()) {
    if (!position_bias.has_dim(heads))
      fail(std::string(kOp) + ": position_bias " + position_bias.str() + " lacks this module's heads Dim '" + heads.str() +
           "' (layers that share a position bias share their heads Dim: Options::heads)");
    if (!step) check_has_dim(kOp, position_bias, qaxis, "position_bias");
    position_bias = on_keys(position_bias, "position_bias");
  } else if (relative_attention_bias) {
    if (reuse) fail(std::string(kOp) + ": a relative position bias with static_kv decoding needs position_bias");
    // A chunk continuing an empty history (a decoding state's first call, as a training step
    // with a state makes) has its queries at positions 0.. like the keys: relative form too.
    const bool fresh = in.incremental_state && in.incremental_state->accum_axis.extent() == 0 &&
                       keys.extent() == qaxis.extent();
    if ((query_pos.defined() && !fresh) || step) {
      Tensor offset;
      if (query_pos.defined()) {
        NoGradGuard ng;
        offset = sub(query_pos, range_over_dim(qaxis, DType::i32).with_sparse_dim(std::nullopt), true);
        offset = reduce_max(offset, {qaxis});  // the history length per sequence
        // A sequence without query frames (one that finished: nn::decoding_step) has none; 0
        // keeps the span of positions that of the others.
        if (qaxis.is_dynamic())
          offset = where(less(Tensor::scalar(0.0, DType::i32), qaxis.lengths(), true).to(offset.device()), offset, 0.0, true);
      }
      position_bias = compute_bias(qaxis, keys, offset);
    } else {
      rel = t5_relative(relative_attention_bias->weight, buckets, qaxis, keys, o.num_buckets, o.max_distance);
    }
  }
  Output out;
  out.relative_position_bias = rel;
  out.position_bias = rel && in.need_position_bias ? relative_bias_term(*rel, keys) : position_bias;
  // The relative bias as the {heads, query, keys} tensor (formed once: the returned one if any).
  auto as_tensor = [&, over = keys] {
    return out.position_bias.defined() ? out.position_bias : relative_bias_term(*rel, over);
  };
  // Extra keys get bias 0, which no table by relative position gives: the tensor form then.
  if (rel && (bias_k || o.add_zero_attn)) {
    position_bias = as_tensor();
    rel.reset();
  }

  // ---- extra key frames: bias_k / bias_v, then a zero frame; they see mask 0 and bias 0
  auto extend = [&](const Tensor& kx, const Tensor& vx, const char* name) {
    Dim extra(1, name);
    Tensor ke = kx.defined() ? split_heads(squeeze(squeeze(kx, kv_1), kv_2)) : Tensor::zeros({heads, head_dim}, k.dtype(), dev);
    Tensor ve = vx.defined() ? split_heads(squeeze(squeeze(vx, kv_1), kv_2)) : Tensor::zeros({heads, head_dim}, v.dtype(), dev);
    ke = expand_dim(ke, extra);
    ve = expand_dim(ve, extra);
    auto [kk, out] = concat({{k, keys}, {ke, extra}});
    Tensor vv = concat({{v, keys}, {ve, extra}}, out).first;
    attn_mask = zero_extend(attn_mask, keys, extra, out);
    additive_pad = zero_extend(additive_pad, keys, extra, out);
    position_bias = zero_extend(position_bias, keys, extra, out);
    k = kk;
    v = vv;
    keys = out;
  };
  if (bias_k) extend(*bias_k, *bias_v, "bias_kv");
  if (o.add_zero_attn) extend(Tensor(), Tensor(), "zero_attn");

  // ---- attention
  const double scaling = 1.0 / std::sqrt(double(head_dim.size()));
  out.keys = keys;
  out.state = state_out;
  const bool dropout_active = train && o.dropout > 0;
  Tensor ctx;
  // gru_rel_pos's gate = a * (b * grep_a - 1) + 2 from the raw q projection, per (batch,
  // query, head); undefined without grep_linear.
  auto gate_of = [&]() {
    if (!grep_linear) return Tensor();
    Tensor g = split_dims((*grep_linear)(qr), grep, {grep_pair, grep_four});
    g = sigmoid(reduce_sum(g, {grep_four}));
    auto [as, ad] = slice(g, grep_pair, 0, 1);
    auto [bs, bd] = slice(g, grep_pair, 1, 2);
    Tensor a = squeeze(as, ad), b = squeeze(bs, bd);
    Tensor ga = squeeze(squeeze(squeeze(*grep_a, a_1), a_2), a_3);
    return mul(a, mul(b, ga, true) - 1.0, true) + 2.0;
  };
  // The gated position bias tensor.
  auto gated_bias = [&](const Tensor& e_dims_from) {
    const Tensor gate = gate_of();
    if (!gate.defined()) return position_bias;
    // Laid out as the energies' leading Dims, so the product streams in their order.
    Dims order;
    for (const Dim& d : e_dims_from.dims())
      if (gate.has_dim(d)) order.push_back(d);
    return mul(gate.transpose_to(order), position_bias, true);
  };
  if (!need_weights && !in.before_softmax) {
    // The mask, padding and position terms summed into one additive bias of the fused primitive
    // (which drops the weights dropout() below would drop).
    DotAttentionOptions dopt;
    dopt.scale = scaling;
    if (dropout_active) {
      dopt.att_dropout = o.dropout;
      dopt.training = true;
      dopt.gen = in.gen;
    }
    Tensor bias;
    auto plus = [&](const Tensor& t) { bias = bias.defined() ? add(bias, t, true) : t; };
    if (attn_mask.defined()) plus(attn_mask);
    if (additive_pad.defined()) plus(additive_pad);
    if (position_bias.defined()) plus(gated_bias(qr));
    if (bias.defined()) dopt.bias = bias.astype(qr.dtype());
    if (rel) {  // read in place, the gate as its row scale
      RelativeBias r{rel->table.astype(qr.dtype()), rel->query, rel->positions, Tensor()};
      if (const Tensor gate = gate_of(); gate.defined()) r.scale = gate.astype(qr.dtype());
      dopt.relative_bias = r;
    }
    ctx = dot_attention(qr, k, v, head_dim, keys, dopt);
  } else {
    Tensor e = matmul(qr * scaling, k, {head_dim});  // {batch..., heads, query, keys}
    if (in.before_softmax) {
      // The original's (w - max) * 32 with q pre-divided by 32: e - max over visible keys.
      Tensor w = e - reduce_max(e, {keys}).detach();
      if (attn_mask.defined()) w = add(w, attn_mask, true);
      if (additive_pad.defined()) w = add(w, additive_pad, true);
      out.w = copy_masked(w, {keys}, -kInf);
      out.v = v;
      if (step) out.w = squeeze(out.w, qaxis);
      return out;
    }
    if (attn_mask.defined()) e = add(e, attn_mask, true);
    if (additive_pad.defined()) e = add(e, additive_pad, true);
    if (rel) position_bias = as_tensor();
    if (position_bias.defined()) e = add(e, gated_bias(e), true);
    Tensor w = softmax(e, keys);
    if (need_weights) out.weights = in.need_head_weights ? w : reduce_mean(w, {heads});
    if (dropout_active) w = dropout(w, o.dropout, *in.gen, true);
    ctx = matmul(w, v, {keys});
  }
  Tensor attn = out_proj(merge_dims(ctx, {heads, head_dim}, proj).first);

  // A query row that sees no key: zero weights (the softmax's rule) and a zero output row.
  {
    Tensor visible = sequence_mask({keys}, dev);
    if (attn_mask.defined()) visible = logical_and(visible, (attn_mask > -kInf), true);
    if (additive_pad.defined()) visible = logical_and(visible, (additive_pad > -kInf), true);
    Dims over;
    for (const Dim& d : visible.dims())
      if (d == keys) over.push_back(d);
    if (!over.empty()) {
      Tensor alive = reduce_any(visible, over);
      attn = where(alive, attn, 0.0, true);
    }
  }
  if (step) {
    attn = squeeze(attn, qaxis);
    if (out.weights.defined()) out.weights = squeeze(out.weights, qaxis);
  }
  out.attn = attn;
  return out;
}

std::string MultiheadAttention::extra_repr() const {
  const Options& o = options;
  std::string s = "embed=" + embed.str() + ", heads=" + std::to_string(heads.size());
  if (kdim != embed) s += ", kdim=" + kdim.str();
  if (vdim != embed) s += ", vdim=" + vdim.str();
  if (o.self_attention) s += ", self_attention";
  if (o.encoder_decoder_attention) s += ", encoder_decoder_attention";
  if (o.add_bias_kv) s += ", add_bias_kv";
  if (o.add_zero_attn) s += ", add_zero_attn";
  if (o.has_relative_attention_bias)
    s += ", relative bias (" + std::to_string(o.num_buckets) + " buckets, max_distance " + std::to_string(o.max_distance) + ")";
  if (o.gru_rel_pos) s += ", gru_rel_pos";
  if (o.dropout > 0) s += ", dropout=" + std::to_string(o.dropout);
  if (o.q_noise > 0) s += ", q_noise=" + std::to_string(o.q_noise);
  return s;
}

}  // namespace dimx::nn::beats

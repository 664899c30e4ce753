// The attention family: self-attention on a padded batch, causal decoding step by step with a
// state, cross-attention to an encoder computed once, and relative positions (Transformer-XL
// and Shaw). docs/tutorials/05-attention.md walks through this file. Exits non-zero if any
// result is wrong.
#include <dimx/nn.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

using namespace dimx;

namespace {
int failures = 0;
void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}
double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double d = a.size() == b.size() ? 0 : 1e30;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}
}  // namespace

int main() {
  try {
    Generator gen(5);
    // [doc:setup]
    Dim batch(3, "batch"), model(16, "model"), out(16, "out");
    Dim key_total(16, "key_total"), value_total(16, "value_total");
    Dim time(Tensor::from_vector<int32_t>({batch}, {7, 3, 5}), "time");  // padded to 7 frames
    Tensor x = random_normal({batch, time, model}, gen);
    // [doc:setup]

    // [doc:self]
    nn::SelfAttention att(model, out, key_total, value_total, /*num_heads=*/4, gen);
    nn::eval(att);  // attention dropout (0.1 by default) only in training
    Tensor y = att(x, time);  // {batch, time, out}: attends over each sequence's valid frames
    // [doc:self]
    check(y.has_dim(batch) && y.has_dim(time) && y.has_dim(out) && y.ndim() == 3, "y is {batch, time, out}");

    // [doc:padding]
    // Sequence 1 alone (its 3 frames) gives exactly its rows of the padded batch.
    Dim t1(3, "t1");
    Tensor x1 = slice(gather(x, Tensor::scalar(1, DType::i32).with_sparse_dim(batch)), time, 0, 3, 1, t1).first;
    Tensor y1 = att(x1, t1);
    Tensor y1_in_batch = slice(gather(y, Tensor::scalar(1, DType::i32).with_sparse_dim(batch)), time, 0, 3, 1, t1).first;
    // [doc:padding]
    check(max_diff(y1.to_vector<double>({t1, out}), y1_in_batch.to_vector<double>({t1, out})) < 1e-5,
          "a sequence alone equals its rows of the padded batch");

    // [doc:causal]
    nn::CausalSelfAttention dec(model, out, key_total, value_total, 4, gen);
    nn::eval(dec);
    // The whole sequence at once (as in training) ...
    auto [y_full, full_state] = dec(x, time, dec.default_initial_state({batch}));
    // ... or one frame at a time, carrying the keys and values seen so far.
    auto state = dec.default_initial_state({batch});
    std::vector<Tensor> steps;
    for (int64_t t = 0; t < time.extent(); ++t) {
      auto [y_t, next] = dec(frame(x, time, t), nn::single_step_dim(), state);  // y_t: {batch, out}
      steps.push_back(y_t);
      state = next;
    }
    // [doc:causal]
    double step_diff = 0;
    auto full = copy_masked(y_full, {time}).to_vector<double>({batch, time, out});
    std::vector<int32_t> lens = time.lengths().to_vector<int32_t>();
    for (int64_t t = 0; t < time.extent(); ++t) {
      auto s = steps[size_t(t)].to_vector<double>({batch, out});
      for (int64_t b = 0; b < 3; ++b)
        if (t < lens[size_t(b)])
          for (int64_t c = 0; c < out.size(); ++c)
            step_diff = std::max(step_diff, std::abs(s[size_t(b * out.size() + c)] -
                                                     full[size_t((b * time.extent() + t) * out.size() + c)]));
    }
    std::printf("step-by-step vs whole sequence: max diff %.2e\n", step_diff);
    check(step_diff < 1e-5, "step-by-step decoding equals the whole sequence");

    // [doc:chunks]
    // Two chunks: frames [0, 4) and then the rest, continuing the state.
    auto [xa, ta] = slice(x, time, 0, 4);  // lengths {4, 3, 4}
    auto [xb, tb] = slice(x, time, 4);     // lengths {3, 0, 1}
    auto [ya, sa] = dec(xa, ta, dec.default_initial_state({batch}));
    auto [yb, sb] = dec(xb, tb, sa);
    // sb.accum_axis has lengths {7, 3, 5} again: the padded frames of a chunk are never kept.
    // [doc:chunks]
    check(sb.accum_axis.lengths().to_vector<int32_t>() == lens, "the carried state holds every valid frame");
    auto ybv = copy_masked(yb, {tb}).to_vector<double>({batch, tb, out});
    double chunk_diff = 0;
    for (int64_t i = 0; i < 3; ++i)  // sequence 0, frames 4..6
      for (int64_t c = 0; c < out.size(); ++c)
        chunk_diff = std::max(chunk_diff, std::abs(ybv[size_t(i * out.size() + c)] - full[size_t((4 + i) * out.size() + c)]));
    check(chunk_diff < 1e-5, "the second chunk equals the whole sequence's frames");

    // [doc:finished]
    // Stepping a padded batch where sequences end at different frames: a sequence past its
    // end takes no step (decoding_step: a one-frame dynamic Dim, length 0 where inactive).
    auto kept = dec.default_initial_state({batch});
    for (int64_t t = 0; t < time.extent(); ++t) {
      Dim step = nn::decoding_step(less(Tensor::scalar(double(t), DType::i32), time.lengths(), true));
      kept = dec(expand_dim(frame(x, time, t), step), step, kept).second;
    }
    // kept.accum_axis has lengths {7, 3, 5}: each history stopped at its sequence's end.
    // [doc:finished]
    check(kept.accum_axis.lengths().to_vector<int32_t>() == lens, "finished sequences took no step");
    check(state.accum_axis.lengths().to_vector<int32_t>() == std::vector<int32_t>(3, int32_t(time.extent())),
          "single_step_dim() steps every sequence");

    // [doc:cross]
    Dim enc_feat(12, "enc_feat"), enc_time(Tensor::from_vector<int32_t>({batch}, {9, 4, 6}), "enc_time");
    Tensor encoder = random_normal({batch, enc_time, enc_feat}, gen);
    nn::CrossAttention cross(enc_feat, model, out, key_total, value_total, 4, gen);
    nn::eval(cross);
    nn::CrossAttentionState enc_state = cross.transform_encoder(encoder, enc_time);  // keys, values once
    Tensor c_all = cross(x, enc_state);                     // every decoder frame: {batch, time, out}
    Tensor c_step = cross(frame(x, time, 2), enc_state);    // one decoder step:   {batch, out}
    // [doc:cross]
    Tensor c_frame2 = frame(c_all, time, 2);
    check(max_diff(c_step.to_vector<double>({batch, out}), c_frame2.to_vector<double>({batch, out})) < 1e-5,
          "cross-attention: one step equals that frame of the whole sequence");

    // [doc:relpos]
    // Transformer-XL: sinusoidal relative encodings, linear_pos, pos_bias_u / pos_bias_v.
    nn::RelPosSelfAttention xl(model, out, key_total, value_total, 4, gen);
    // Shaw et al. 2018: learned embeddings clipped at distance 4, shared by all heads.
    nn::RelPosSelfAttentionOptions shaw;
    shaw.with_bias = shaw.with_linear_pos = shaw.with_pos_bias = shaw.separate_pos_emb_per_head = false;
    shaw.learnable_pos_emb = true;
    shaw.learnable_pos_emb_clipping = 4;
    nn::RelPosSelfAttention shaw_att(model, out, key_total, value_total, 4, gen, shaw);
    nn::eval(xl);
    nn::eval(shaw_att);
    for (const auto& [name, p] : nn::named_parameters(shaw_att)) std::cout << name << " " << dims_str(p->dims()) << "\n";
    Tensor r1 = xl(x, time), r2 = shaw_att(x, time);
    // [doc:relpos]
    check(nn::named_parameters(xl).size() == 7 && nn::named_parameters(shaw_att).size() == 3,
          "parameters: qkv, proj, linear_pos, pos_bias_u/v (XL); qkv, proj, learned_pos_emb (Shaw)");
    check(r1.has_dim(out) && r2.has_dim(out), "relative-position attention outputs {batch, time, out}");

    // [doc:relpos_causal]
    nn::RelPosCausalSelfAttention rel_dec(model, out, key_total, value_total, 4, gen);
    nn::eval(rel_dec);
    Tensor rel_full = rel_dec(x, time, rel_dec.default_initial_state({batch})).first;
    auto rel_state = rel_dec.default_initial_state({batch});
    Tensor rel_last;
    for (int64_t t = 0; t < 3; ++t) std::tie(rel_last, rel_state) = rel_dec(frame(x, time, t), nn::single_step_dim(), rel_state);
    // rel_last is frame 2 of every sequence, positions counted from the start of the history.
    // [doc:relpos_causal]
    check(max_diff(rel_last.to_vector<double>({batch, out}), frame(rel_full, time, 2).to_vector<double>({batch, out})) < 1e-5,
          "relative-position decoding step by step equals the whole sequence");

    // [doc:fused]
    // dot_attention on its fused path, forward and backward: no {batch, heads, query, key}
    // weights in memory. The path counters say what ran; fused = false is the unfused path.
    Dim heads(4, "heads"), head(8, "head");
    Tensor q = random_normal({batch, time, heads, head}, gen).with_requires_grad();
    Tensor k = random_normal({batch, time, heads, head}, gen).with_requires_grad();
    Tensor v = random_normal({batch, time, heads, head}, gen).with_requires_grad();
    nn::DotAttentionOptions fused, unfused;
    fused.fused = true;
    unfused.fused = false;
    nn::reset_attention_path_counts();
    Tensor o1 = nn::dot_attention(q, k, v, head, time, fused);
    std::vector<Tensor> g1 = grad(reduce_sum(o1 * o1, o1.dims()), {q, k, v});
    const nn::AttentionPathCounts paths = nn::attention_path_counts();
    std::printf("fused forwards %lld, fused backwards %lld\n", (long long)paths.fused_forward,
                (long long)paths.fused_backward);
    Tensor o2 = nn::dot_attention(q, k, v, head, time, unfused);
    std::vector<Tensor> g2 = grad(reduce_sum(o2 * o2, o2.dims()), {q, k, v});
    // [doc:fused]
    check(paths.fused_forward == 1 && paths.fused_backward == 1, "the forward and the backward ran fused");
    double worst = 0;
    for (size_t i = 0; i < 3; ++i) {
      const Dims dims = std::vector<Tensor>{q, k, v}[i].dims();
      worst = std::max(worst, max_diff(copy_masked(g1[i], {time}).to_vector<double>(dims),
                                       copy_masked(g2[i], {time}).to_vector<double>(dims)));
    }
    check(worst < 1e-4, "fused and unfused gradients agree (max diff " + std::to_string(worst) + ")");

    // [doc:bias]
    // An additive bias on the scores (here a learned bias per head and relative position,
    // gathered into {heads, time, keys}): one more input of the fused primitive, broadcast over
    // the batch, with its own gradient. In self-attention the bias names its key Dim.
    Dim keys(time.extent(), "keys"), rel(2 * time.extent() - 1, "rel");
    Tensor table = (random_normal({heads, rel}, gen) * 0.1).with_requires_grad();
    std::vector<int32_t> idx;
    for (int64_t i = 0; i < time.extent(); ++i)
      for (int64_t j = 0; j < keys.extent(); ++j) idx.push_back(int32_t(j - i + time.extent() - 1));
    Tensor rel_idx = Tensor::from_vector<int32_t>({time, keys}, idx).with_sparse_dim(rel);
    nn::DotAttentionOptions with_bias;
    with_bias.bias = gather(table, rel_idx);  // {heads, time, keys}
    with_bias.bias_key_dim = keys;
    nn::reset_attention_path_counts();
    Tensor o3 = nn::dot_attention(q, k, v, head, time, with_bias);
    std::vector<Tensor> g3 = grad(reduce_sum(copy_masked(o3 * o3, {time}), o3.dims()), {q, table});
    std::printf("with a bias: fused forwards %lld, table gradient %s\n",
                (long long)nn::attention_path_counts().fused_forward, g3[1].str().c_str());
    // [doc:bias]
    check(nn::attention_path_counts().fused_backward == 1, "the biased attention ran fused both ways");
    check(g3[1].has_dim(heads) && g3[1].has_dim(rel), "the table gets its gradient");

    // [doc:relative_bias]
    // The same table given as a bias by relative position: the CPU's fused primitive reads
    // element j - i + (T - 1) of `rel` for query i and key j in place, so nothing of size
    // {time, keys} is formed, forward or backward; the table's gradient sums each position's
    // shares in a fixed order. `rel` runs over -(T - 1) .. T - 1, as above.
    nn::DotAttentionOptions in_place;
    in_place.relative_bias = RelativeBias{table, time, rel};
    nn::reset_attention_path_counts();
    Tensor o6 = nn::dot_attention(q, k, v, head, time, in_place);
    std::vector<Tensor> g6 = grad(reduce_sum(copy_masked(o6 * o6, {time}), o6.dims()), {q, table});
    std::printf("relative bias: fused forwards %lld, gathered over {time, keys} %lld\n",
                (long long)nn::attention_path_counts().fused_forward,
                (long long)nn::attention_path_counts().relative_bias_gathered);
    // [doc:relative_bias]
    const Dims o3d{batch, time, heads, head};
    check(max_diff(copy_masked(o6, {time}).to_vector<double>(o3d), copy_masked(o3, {time}).to_vector<double>(o3d)) < 1e-5,
          "the table read in place gives the gathered bias's output");
    check(max_diff(g6[1].to_vector<double>(g3[1].dims()), g3[1].to_vector<double>(g3[1].dims())) < 1e-4,
          "and its gradient");
    check(nn::attention_path_counts().relative_bias_gathered == 0, "nothing was gathered over {time, keys}");

    // [doc:relative_scale]
    // A factor per query row on top (BEATs's gru_rel_pos gate): scale[b, h, i] multiplies the
    // terms of row i. The CPU's fused primitive reads it in place as well, and the gate gets
    // its gradient like the table.
    Tensor gate = random_uniform({batch, heads, time}, gen, 0.5, 2.0).with_requires_grad();
    nn::DotAttentionOptions gated = in_place;
    gated.relative_bias->scale = gate;
    nn::reset_attention_path_counts();
    Tensor o7 = nn::dot_attention(q, k, v, head, time, gated);
    std::vector<Tensor> g7 = grad(reduce_sum(copy_masked(o7 * o7, {time}), o7.dims()), {q, table, gate});
    std::printf("gated relative bias: gathered over {time, keys} %lld\n",
                (long long)nn::attention_path_counts().relative_bias_gathered);
    // [doc:relative_scale]
    check(nn::attention_path_counts().relative_bias_gathered == 0, "the gate was read in place too");
    nn::DotAttentionOptions gated_out;  // the same term written out over {heads, time, keys}
    gated_out.bias = mul(gate, gather(table, rel_idx), true);
    gated_out.bias_key_dim = keys;
    Tensor o8 = nn::dot_attention(q, k, v, head, time, gated_out);
    std::vector<Tensor> g8 = grad(reduce_sum(copy_masked(o8 * o8, {time}), o8.dims()), {q, table, gate});
    check(max_diff(copy_masked(o7, {time}).to_vector<double>(o3d), copy_masked(o8, {time}).to_vector<double>(o3d)) < 1e-5,
          "the gated table read in place gives the written-out term's output");
    check(max_diff(g7[2].to_vector<double>(gate.dims()), g8[2].to_vector<double>(gate.dims())) < 1e-4 &&
              max_diff(g7[1].to_vector<double>(table.dims()), g8[1].to_vector<double>(table.dims())) < 1e-4,
          "and the gradients of the gate and the table");

    // [doc:dropout]
    // Dropout on the weights in training stays fused: the kernels draw the mask that dropout()
    // would draw over the weights from the Generator's state, element by element, and draw it
    // again in the backward. The same state on the unfused path drops the same weights.
    nn::DotAttentionOptions drop;
    drop.att_dropout = 0.1;
    drop.training = true;
    Generator g_fused(5), g_unfused(5);
    drop.gen = &g_fused;
    nn::reset_attention_path_counts();
    Tensor o4 = nn::dot_attention(q, k, v, head, time, drop);
    std::printf("with dropout: fused forwards %lld\n", (long long)nn::attention_path_counts().fused_forward);
    drop.gen = &g_unfused;
    drop.fused = false;
    Tensor o5 = nn::dot_attention(q, k, v, head, time, drop);
    // [doc:dropout]
    const Dims od{batch, time, heads, head};
    check(max_diff(copy_masked(o4, {time}).to_vector<double>(od), copy_masked(o5, {time}).to_vector<double>(od)) < 1e-5,
          "both paths drop the same weights");
    check(g_fused.offset() == g_unfused.offset(), "both paths advance the Generator alike");
  } catch (const Error& e) {
    std::printf("FAIL dimx::Error: %s\n", e.what());
    return 1;
  }
  if (failures) std::printf("%d check(s) failed\n", failures);
  return failures ? 1 : 0;
}

#pragma once
// The padding rule for every module, as one table. Each case runs a module on a padded batch
// whose padded frames hold `pad` (0, NaN, +inf, -inf or 1e30) and returns, per sequence, the
// valid frames of its output and of the input's gradient, and the gradient of every parameter.
// Whatever the padding holds, all of them must equal the run with zeros; and each sequence run
// alone must give its frames of the batch (the parameter gradients adding up over sequences).
// test_padding runs the table on the CPU, test_gpu on cuda:0.
#include <dimx/autograd.h>
#include <dimx/nn.h>
#include <dimx/nn/beats.h>
#include <dimx/nn/mega.h>
#include <dimx/nn/rwkv.h>
#include <dimx/nn/torchscale.h>

#include <functional>
#include <limits>
#include <string>

#include "test_util.h"

namespace dimx_test {

// A padded batch of some of the sequences 0, 1, 2 (lengths 5, 2, 4): `seqs` lists which, in
// order. Every input is a function of (sequence, frame, feature), so the same sequence holds the
// same values in any batch: {0, 1, 2} is the padded batch, {b} sequence b alone.
struct PaddedBatch {
  std::vector<int> seqs{0, 1, 2};
  dimx::Dim batch{int64_t(seqs.size()), "batch"};
  dimx::Dim time = seq_dim({5, 2, 4}, "time");
  dimx::Dim feat{8, "feat"};

  PaddedBatch() = default;
  explicit PaddedBatch(std::vector<int> s) : seqs(std::move(s)) {}

  // A dynamic Dim over `batch` whose length for sequence i is all_lengths[i].
  dimx::Dim seq_dim(const std::vector<int32_t>& all_lengths, const std::string& name) const {
    std::vector<int32_t> l;
    for (int s : seqs) l.push_back(all_lengths[size_t(s)]);
    return dimx::Dim(dimx::Tensor::from_vector<int32_t>({batch}, l), name);
  }
  // f32 values in [-2, 2) over `dims` (batch among them), a hash of the seed, the sequence and
  // the index along every other Dim.
  dimx::Tensor values(const dimx::Dims& dims, uint32_t seed) const {
    std::vector<float> v(size_t(numel_of(dims)));
    std::vector<int64_t> idx(dims.size(), 0);
    for (size_t flat = 0; flat < v.size(); ++flat) {
      uint64_t h = 0x9E3779B97F4A7C15ull * (seed + 1);
      for (size_t k = 0; k < dims.size(); ++k) {
        const int64_t i = dims[k] == batch ? seqs[size_t(idx[k])] : idx[k];
        h = (h ^ uint64_t(i + 1)) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 29;
      }
      h = (h ^ (h >> 31)) * 0x94D049BB133111EBull;
      v[flat] = float(double(h >> 11) / double(uint64_t(1) << 53) * 4.0 - 2.0);
      for (size_t k = dims.size(); k-- > 0;) {
        if (++idx[k] < dims[k].extent()) break;
        idx[k] = 0;
      }
    }
    return dimx::Tensor::from_vector<float>(dims, v);
  }
};

// What a case returns: per sequence of the batch, the valid frames of the output and of the
// input's gradient; and the gradient of every parameter (summed over the batch).
struct Outputs {
  std::vector<std::vector<double>> out, grad_in;
  std::vector<std::vector<double>> grad_params;
};

struct PaddingCase {
  std::string name;
  std::function<Outputs(dimx::Device, double pad, const PaddedBatch&)> run;
  // Whether a sequence alone must give its frames of the batch (not for training with
  // dropout: the mask depends on the batch).
  bool per_sequence = true;
};

// `values` over {batch, time, feat} with `pad` in the padded frames, as a leaf that records
// gradients.
inline dimx::Tensor padded_values(const PaddedBatch& p, const dimx::Dim& time, const dimx::Dim& feat,
                                  dimx::Device dev, double pad, uint32_t seed) {
  using namespace dimx;
  Tensor x = p.values({p.batch, time, feat}, seed).to(dev);
  return where(sequence_mask({time}).to(dev), x, pad, true).detach().with_requires_grad();
}
inline dimx::Tensor padded_input(const PaddedBatch& p, dimx::Device dev, double pad, uint32_t seed = 11) {
  return padded_values(p, p.time, p.feat, dev, pad, seed);
}

// Valid frames of `t` (Dims `order`, batch then the dynamic `time` first) per sequence.
inline std::vector<std::vector<double>> valid_frames(const dimx::Tensor& t, const dimx::Dims& order,
                                                     const PaddedBatch& p, const dimx::Dim& time) {
  std::vector<double> all = t.to_vector<double>(order);
  std::vector<int32_t> len = time.lengths().to_vector<int32_t>();
  const size_t per_frame = all.size() / size_t(std::max<int64_t>(1, p.batch.extent() * time.extent()));
  std::vector<std::vector<double>> out;
  for (int64_t b = 0; b < p.batch.extent(); ++b) {
    auto first = all.begin() + std::ptrdiff_t(size_t(b * time.extent()) * per_frame);
    out.emplace_back(first, first + std::ptrdiff_t(size_t(len[size_t(b)]) * per_frame));
  }
  return out;
}

// Valid output frames, every parameter's gradient and the valid frames of x's gradient for
// loss = sum over valid frames of y * r (r a function of the sequence, like the inputs).
// `order` starts with p.batch and `time`.
template <class M>
Outputs padded_outputs(M& m, const PaddedBatch& p, const dimx::Tensor& x, const dimx::Tensor& y,
                       const dimx::Dim& time, const dimx::Dims& order) {
  using namespace dimx;
  Tensor ym = copy_masked(y, {time});
  Tensor r = p.values(order, 99).to(y.device());
  Tensor loss = reduce_sum(ym * r, ym.dims());
  std::vector<Tensor> leaves{x};
  for (auto& [name, t] : nn::named_parameters(m)) leaves.push_back(*t);
  std::vector<Tensor> g = grad(loss, leaves, {}, /*allow_unused=*/true);
  Outputs out;
  out.out = valid_frames(ym, order, p, time);
  Dims xo{p.batch, time};
  for (const Dim& d : x.dims())
    if (d != p.batch && d != time) xo.push_back(d);
  out.grad_in = valid_frames(copy_masked(g[0], {time}), xo, p, time);
  for (size_t i = 1; i < g.size(); ++i)
    out.grad_params.push_back(g[i].defined() ? g[i].to_vector<double>(g[i].dims()) : std::vector<double>{});
  return out;
}

inline std::vector<PaddingCase> padding_cases() {
  using namespace dimx;
  std::vector<PaddingCase> cases;
  auto add = [&](std::string name, std::function<Outputs(Device, double, const PaddedBatch&)> f, bool per_sequence = true) {
    cases.push_back({std::move(name), f, per_sequence});
  };

  add("Linear", [](Device dev, double pad, const PaddedBatch& p) {
    Generator gen(1);
    Dim out(5, "out");
    nn::Linear m(p.feat, out, gen);
    nn::to(m, dev);
    Tensor x = padded_input(p, dev, pad);
    return padded_outputs(m, p, x, m(x), p.time, {p.batch, p.time, out});
  });
  add("LayerNorm", [](Device dev, double pad, const PaddedBatch& p) {
    nn::LayerNorm m(p.feat);
    nn::to(m, dev);
    Tensor x = padded_input(p, dev, pad);
    return padded_outputs(m, p, x, m(x), p.time, {p.batch, p.time, p.feat});
  });
  add(
      "Dropout (training)",
      [](Device dev, double pad, const PaddedBatch& p) {
        nn::Dropout m(0.3);
        Generator drop(5);
        Tensor x = padded_input(p, dev, pad);
        return padded_outputs(m, p, x, m(x, drop), p.time, {p.batch, p.time, p.feat});
      },
      /*per_sequence=*/false);
  add("Embedding (garbage token ids in padded frames)", [](Device dev, double pad, const PaddedBatch& p) {
    Generator gen(2);
    Dim vocab(11, "vocab");
    nn::Embedding m(vocab, p.feat, gen);
    nn::to(m, dev);
    std::vector<int32_t> ids;  // a function of (sequence, frame)
    for (int sq : p.seqs)
      for (int64_t t = 0; t < p.time.extent(); ++t) ids.push_back(int32_t((sq * 5 + t) * 7 % 11));
    const int32_t junk = std::isnan(pad) ? -1 : pad > 0 ? std::numeric_limits<int32_t>::max() : 0;
    Tensor idx = where(sequence_mask({p.time}), Tensor::from_vector<int32_t>({p.batch, p.time}, ids), double(junk), true);
    Tensor y = m(idx.to(dev));
    // No input gradient: stand in a constant so the outputs line up.
    Tensor x = padded_input(p, dev, 0);
    Tensor yy = y + x * 0.0;
    return padded_outputs(m, p, x, yy, p.time, {p.batch, p.time, p.feat});
  });
  for (bool fused : {true, false})
    add(std::string("SelfAttention ") + (fused ? "(fused)" : "(unfused: training with dropout)"),
        [fused](Device dev, double pad, const PaddedBatch& p) {
          Generator gen(3);
          Dim kt(8, "kt"), vt(8, "vt"), out(6, "out");
          nn::SelfAttention m(p.feat, out, kt, vt, 2, gen, true, fused ? 0.0 : 0.2);
          nn::to(m, dev);
          if (fused) nn::eval(m);
          Tensor x = padded_input(p, dev, pad);
          Generator drop(7);
          return padded_outputs(m, p, x, m(x, p.time, &drop), p.time, {p.batch, p.time, out});
        },
        /*per_sequence=*/fused);
  add("CausalSelfAttention", [](Device dev, double pad, const PaddedBatch& p) {
    Generator gen(4);
    Dim kt(8, "kt"), vt(8, "vt");
    nn::CausalSelfAttention m(p.feat, std::nullopt, kt, vt, 2, gen, true, 0.0);
    nn::to(m, dev);
    Tensor x = padded_input(p, dev, pad);
    auto [y, st] = m(x, p.time, m.default_initial_state({p.batch}));
    return padded_outputs(m, p, x, y, p.time, {p.batch, p.time, vt});
  });
  add("CrossAttention (padded queries and encoder frames)", [](Device dev, double pad, const PaddedBatch& p) {
    Generator gen(5);
    Dim enc(6, "enc"), kt(8, "kt"), vt(8, "vt");
    Dim etime = p.seq_dim({3, 1, 4}, "enc_time");
    nn::CrossAttention m(enc, p.feat, std::nullopt, kt, vt, 2, gen, true, 0.0);
    nn::to(m, dev);
    Tensor e = p.values({p.batch, etime, enc}, 12).to(dev);
    e = where(sequence_mask({etime}).to(dev), e, pad, true);
    Tensor x = padded_input(p, dev, pad);
    Tensor y = m(x, m.transform_encoder(e, etime));
    return padded_outputs(m, p, x, y, p.time, {p.batch, p.time, vt});
  });
  for (bool shaw : {false, true})
    add(std::string("RelPosSelfAttention ") + (shaw ? "(Shaw 2018)" : "(Transformer-XL)"), [shaw](Device dev, double pad, const PaddedBatch& p) {
      Generator gen(6);
      Dim kt(8, "kt"), vt(8, "vt");
      nn::RelPosSelfAttentionOptions o;
      o.att_dropout = 0;
      if (shaw) {
        o.with_bias = o.with_linear_pos = o.with_pos_bias = o.separate_pos_emb_per_head = false;
        o.learnable_pos_emb = true;
        o.learnable_pos_emb_clipping = 3;
      }
      nn::RelPosSelfAttention m(p.feat, std::nullopt, kt, vt, 2, gen, o);
      nn::to(m, dev);
      Tensor x = padded_input(p, dev, pad);
      return padded_outputs(m, p, x, m(x, p.time), p.time, {p.batch, p.time, vt});
    });
  add("RelPosCausalSelfAttention", [](Device dev, double pad, const PaddedBatch& p) {
    Generator gen(7);
    Dim kt(8, "kt"), vt(8, "vt");
    nn::RelPosSelfAttentionOptions o;
    o.att_dropout = 0;
    nn::RelPosCausalSelfAttention m(p.feat, std::nullopt, kt, vt, 2, gen, o);
    nn::to(m, dev);
    Tensor x = padded_input(p, dev, pad);
    auto [y, st] = m(x, p.time, m.default_initial_state({p.batch}));
    return padded_outputs(m, p, x, y, p.time, {p.batch, p.time, vt});
  });
  add("beats::MultiheadAttention (self, relative bias, gate, extra keys)", [](Device dev, double pad, const PaddedBatch& p) {
    Generator gen(9);
    nn::beats::Options o;
    o.self_attention = true;
    o.has_relative_attention_bias = true;
    o.num_buckets = 12;
    o.max_distance = 16;
    o.gru_rel_pos = true;
    o.add_bias_kv = true;
    o.add_zero_attn = true;
    nn::beats::MultiheadAttention m(p.feat, 2, gen, o);
    nn::to(m, dev);
    Tensor x = padded_input(p, dev, pad);
    return padded_outputs(m, p, x, m(x, p.time).attn, p.time, {p.batch, p.time, p.feat});
  });
  add("beats::MultiheadAttention (cross, padded encoder frames)", [](Device dev, double pad, const PaddedBatch& p) {
    Generator gen(10);
    Dim kd(6, "kdim"), vd(5, "vdim");
    Dim etime = p.seq_dim({3, 1, 4}, "enc_time");
    nn::beats::Options o;
    o.kdim = kd;
    o.vdim = vd;
    nn::beats::MultiheadAttention m(p.feat, 2, gen, o);
    nn::to(m, dev);
    nn::beats::Inputs in;
    in.key = where(sequence_mask({etime}).to(dev), p.values({p.batch, etime, kd}, 13).to(dev), pad, true);
    in.value = where(sequence_mask({etime}).to(dev), p.values({p.batch, etime, vd}, 14).to(dev), pad, true);
    in.key_axis = etime;
    Tensor x = padded_input(p, dev, pad);
    return padded_outputs(m, p, x, m(x, p.time, in).attn, p.time, {p.batch, p.time, p.feat});
  });
  add("torchscale::MultiheadAttention (XPOS, sub-LN, multiway split 2, causal)", [](Device dev, double pad, const PaddedBatch& p) {
    Generator gen(11);
    nn::torchscale::Options o;
    o.self_attention = true;
    o.xpos_rel_pos = true;
    o.xpos_scale_base = 32;
    o.subln = true;
    o.multiway = true;
    nn::torchscale::MultiheadAttention m(p.feat, 2, gen, o);
    nn::to(m, dev);
    nn::torchscale::Inputs in;
    in.split_position = 2;
    in.causal = true;
    Tensor x = padded_input(p, dev, pad);
    return padded_outputs(m, p, x, m(x, p.time, in).attn, p.time, {p.batch, p.time, p.feat});
  });
  for (bool fft : {false, true})
    add(std::string("mega::MultiHeadDampedEMA") + (fft ? " (long: FFT path)" : ""), [fft](Device dev, double pad, const PaddedBatch& p) {
      Generator gen(12);
      nn::mega::Options o;
      o.activation = nn::mega::Activation::silu;
      nn::mega::MultiHeadDampedEMA m(p.feat, gen, o);
      nn::to(m, dev);
      Tensor x = padded_input(p, dev, pad);
      if (!fft) return padded_outputs(m, p, x, m(x, p.time).first, p.time, {p.batch, p.time, p.feat});
      // 300 frames: the kernel is long enough for the FFT, where NaN would spread to every frame.
      Dim t2 = p.seq_dim({300, 170, 0}, "time_long");
      Tensor xl = where(sequence_mask({t2}, dev), p.values({p.batch, t2, p.feat}, 21).to(dev), pad, true)
                      .detach().with_requires_grad();
      return padded_outputs(m, p, xl, m(xl, t2).first, t2, {p.batch, t2, p.feat});
    });
  add("rwkv::SelfAttention", [](Device dev, double pad, const PaddedBatch& p) {
    Generator gen(8);
    Dim att(6, "att");
    nn::rwkv::SelfAttention m(p.feat, att, 16, 0, 2, gen);
    nn::to(m, dev);
    Tensor x = padded_input(p, dev, pad);
    auto [y, st] = m(x, p.time);
    return padded_outputs(m, p, x, y, p.time, {p.batch, p.time, p.feat});
  });
  return cases;
}

inline void check_same(const std::vector<std::vector<double>>& got, const std::vector<std::vector<double>>& want,
                       const char* what, double rtol, double atol) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO(what << " " << i);
    CHECK_VEC_APPROX(got[i], want[i], rtol, atol);
  }
}

// Every case, with zeros and with each kind of garbage (NaN, +inf, -inf, 1e30) in the padding:
// all must agree. Then each sequence alone (a batch of one, nothing padded): its output and
// input gradient must be its frames of the padded batch, and the parameter gradients of the
// sequences alone must add up to the batch's (`alone_rtol`: other summation orders).
inline void check_padding_cases(dimx::Device dev, double rtol = 1e-5, double atol = 1e-6, double alone_rtol = 1e-4) {
  const double inf = std::numeric_limits<double>::infinity();
  const PaddedBatch batch;
  for (const PaddingCase& c : padding_cases()) {
    INFO(c.name);
    const Outputs want = c.run(dev, 0, batch);
    for (double pad : {std::numeric_limits<double>::quiet_NaN(), inf, -inf, 1e30}) {
      INFO("padding " << pad);
      const Outputs got = c.run(dev, pad, batch);
      check_same(got.out, want.out, "output of sequence", rtol, atol);
      check_same(got.grad_in, want.grad_in, "input gradient of sequence", rtol, atol);
      check_same(got.grad_params, want.grad_params, "gradient of parameter", rtol, atol);
    }
    if (!c.per_sequence) continue;
    std::vector<std::vector<double>> sum(want.grad_params.size());
    for (int sq : batch.seqs) {
      INFO("sequence " << sq << " alone");
      const Outputs one = c.run(dev, 0, PaddedBatch({sq}));
      REQUIRE(one.out.size() == 1);
      CHECK_VEC_APPROX(one.out[0], want.out[size_t(sq)], alone_rtol, atol);
      CHECK_VEC_APPROX(one.grad_in[0], want.grad_in[size_t(sq)], alone_rtol, atol);
      REQUIRE(one.grad_params.size() == sum.size());
      for (size_t i = 0; i < sum.size(); ++i) {
        if (one.grad_params[i].empty()) continue;  // unused by this sequence (no gradient): zero
        if (sum[i].empty()) sum[i].assign(one.grad_params[i].size(), 0.0);
        REQUIRE(one.grad_params[i].size() == sum[i].size());
        for (size_t j = 0; j < sum[i].size(); ++j) sum[i][j] += one.grad_params[i][j];
      }
    }
    INFO("parameter gradients: the sum over sequences alone against the batch");
    check_same(sum, want.grad_params, "gradient of parameter", alone_rtol, atol * 10);
  }
}

}  // namespace dimx_test

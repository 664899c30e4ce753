#pragma once
// The padding rule for every module, as one table: each case runs a module on a padded batch
// whose padded frames hold `pad` (0, NaN, +inf, -inf or 1e30), and returns the valid frames of
// its output, the gradient of every parameter and the valid frames of the input's gradient.
// Whatever the padding holds, all of them must equal the run with zeros. test_padding runs the
// table on the CPU, test_gpu on cuda:0.
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

using Outputs = std::vector<std::vector<double>>;

struct PaddingCase {
  std::string name;
  std::function<Outputs(dimx::Device, double pad)> run;
};

struct PaddedBatch {
  dimx::Dim batch{3, "batch"};
  dimx::Dim time = dynamic_dim(batch, {5, 2, 4}, "time");
  dimx::Dim feat{8, "feat"};
};

// x {batch, time, feat} with `pad` in the padded frames, as a leaf that records gradients.
inline dimx::Tensor padded_input(const PaddedBatch& p, dimx::Device dev, double pad, uint32_t seed = 11) {
  using namespace dimx;
  Tensor x = random_tensor({p.batch, p.time, p.feat}, seed).to(dev);
  return where(sequence_mask({p.time}).to(dev), x, pad, true).detach().with_requires_grad();
}

// Valid output frames, every parameter's gradient and the valid frames of x's gradient for
// loss = sum over valid frames of y * r (a fixed random r).
template <class M>
Outputs padded_outputs(M& m, const dimx::Tensor& x, const dimx::Tensor& y, const dimx::Dim& time,
                       const dimx::Dims& order) {
  using namespace dimx;
  Tensor ym = copy_masked(y, {time});
  Tensor r = random_tensor(order, 99).to(y.device());
  Tensor loss = reduce_sum(ym * r, ym.dims());
  std::vector<Tensor> leaves{x};
  for (auto& [name, t] : nn::named_parameters(m)) leaves.push_back(*t);
  std::vector<Tensor> g = grad(loss, leaves, {}, /*allow_unused=*/true);
  Outputs out{ym.to_vector<double>(order)};
  out.push_back(copy_masked(g[0], {time}).to_vector<double>(x.dims()));
  for (size_t i = 1; i < g.size(); ++i)
    out.push_back(g[i].defined() ? g[i].to_vector<double>(g[i].dims()) : std::vector<double>{});
  return out;
}

inline std::vector<PaddingCase> padding_cases() {
  using namespace dimx;
  std::vector<PaddingCase> cases;
  auto add = [&](std::string name, std::function<Outputs(Device, double)> f) { cases.push_back({std::move(name), f}); };

  add("Linear", [](Device dev, double pad) {
    PaddedBatch p;
    Generator gen(1);
    Dim out(5, "out");
    nn::Linear m(p.feat, out, gen);
    nn::to(m, dev);
    Tensor x = padded_input(p, dev, pad);
    return padded_outputs(m, x, m(x), p.time, {p.batch, p.time, out});
  });
  add("LayerNorm", [](Device dev, double pad) {
    PaddedBatch p;
    nn::LayerNorm m(p.feat);
    nn::to(m, dev);
    Tensor x = padded_input(p, dev, pad);
    return padded_outputs(m, x, m(x), p.time, {p.batch, p.time, p.feat});
  });
  add("Embedding (garbage token ids in padded frames)", [](Device dev, double pad) {
    PaddedBatch p;
    Generator gen(2);
    Dim vocab(11, "vocab");
    nn::Embedding m(vocab, p.feat, gen);
    nn::to(m, dev);
    std::vector<int32_t> ids(15);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(i * 7 % 11);
    const int32_t junk = std::isnan(pad) ? -1 : pad > 0 ? std::numeric_limits<int32_t>::max() : 0;
    Tensor idx = where(sequence_mask({p.time}), Tensor::from_vector<int32_t>({p.batch, p.time}, ids), double(junk), true);
    Tensor y = m(idx.to(dev));
    // No input gradient: stand in a constant so the outputs line up.
    Tensor x = padded_input(p, dev, 0);
    Tensor yy = y + x * 0.0;
    return padded_outputs(m, x, yy, p.time, {p.batch, p.time, p.feat});
  });
  for (bool fused : {true, false})
    add(std::string("SelfAttention ") + (fused ? "(fused)" : "(unfused: training with dropout)"),
        [fused](Device dev, double pad) {
          PaddedBatch p;
          Generator gen(3);
          Dim kt(8, "kt"), vt(8, "vt"), out(6, "out");
          nn::SelfAttention m(p.feat, out, kt, vt, 2, gen, true, fused ? 0.0 : 0.2);
          nn::to(m, dev);
          if (fused) nn::eval(m);
          Tensor x = padded_input(p, dev, pad);
          Generator drop(7);
          return padded_outputs(m, x, m(x, p.time, &drop), p.time, {p.batch, p.time, out});
        });
  add("CausalSelfAttention", [](Device dev, double pad) {
    PaddedBatch p;
    Generator gen(4);
    Dim kt(8, "kt"), vt(8, "vt");
    nn::CausalSelfAttention m(p.feat, std::nullopt, kt, vt, 2, gen, true, 0.0);
    nn::to(m, dev);
    Tensor x = padded_input(p, dev, pad);
    auto [y, st] = m(x, p.time, m.default_initial_state({p.batch}));
    return padded_outputs(m, x, y, p.time, {p.batch, p.time, vt});
  });
  add("CrossAttention (padded queries and encoder frames)", [](Device dev, double pad) {
    PaddedBatch p;
    Generator gen(5);
    Dim enc(6, "enc"), kt(8, "kt"), vt(8, "vt");
    Dim etime = dynamic_dim(p.batch, {3, 1, 4}, "enc_time");
    nn::CrossAttention m(enc, p.feat, std::nullopt, kt, vt, 2, gen, true, 0.0);
    nn::to(m, dev);
    Tensor e = random_tensor({p.batch, etime, enc}, 12).to(dev);
    e = where(sequence_mask({etime}).to(dev), e, pad, true);
    Tensor x = padded_input(p, dev, pad);
    Tensor y = m(x, m.transform_encoder(e, etime));
    return padded_outputs(m, x, y, p.time, {p.batch, p.time, vt});
  });
  for (bool shaw : {false, true})
    add(std::string("RelPosSelfAttention ") + (shaw ? "(Shaw 2018)" : "(Transformer-XL)"), [shaw](Device dev, double pad) {
      PaddedBatch p;
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
      return padded_outputs(m, x, m(x, p.time), p.time, {p.batch, p.time, vt});
    });
  add("RelPosCausalSelfAttention", [](Device dev, double pad) {
    PaddedBatch p;
    Generator gen(7);
    Dim kt(8, "kt"), vt(8, "vt");
    nn::RelPosSelfAttentionOptions o;
    o.att_dropout = 0;
    nn::RelPosCausalSelfAttention m(p.feat, std::nullopt, kt, vt, 2, gen, o);
    nn::to(m, dev);
    Tensor x = padded_input(p, dev, pad);
    auto [y, st] = m(x, p.time, m.default_initial_state({p.batch}));
    return padded_outputs(m, x, y, p.time, {p.batch, p.time, vt});
  });
  add("beats::MultiheadAttention (self, relative bias, gate, extra keys)", [](Device dev, double pad) {
    PaddedBatch p;
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
    return padded_outputs(m, x, m(x, p.time).attn, p.time, {p.batch, p.time, p.feat});
  });
  add("beats::MultiheadAttention (cross, padded encoder frames)", [](Device dev, double pad) {
    PaddedBatch p;
    Generator gen(10);
    Dim kd(6, "kdim"), vd(5, "vdim");
    Dim etime = dynamic_dim(p.batch, {3, 1, 4}, "enc_time");
    nn::beats::Options o;
    o.kdim = kd;
    o.vdim = vd;
    nn::beats::MultiheadAttention m(p.feat, 2, gen, o);
    nn::to(m, dev);
    nn::beats::Inputs in;
    in.key = where(sequence_mask({etime}).to(dev), random_tensor({p.batch, etime, kd}, 13).to(dev), pad, true);
    in.value = where(sequence_mask({etime}).to(dev), random_tensor({p.batch, etime, vd}, 14).to(dev), pad, true);
    in.key_axis = etime;
    Tensor x = padded_input(p, dev, pad);
    return padded_outputs(m, x, m(x, p.time, in).attn, p.time, {p.batch, p.time, p.feat});
  });
  add("torchscale::MultiheadAttention (XPOS, sub-LN, multiway split 2, causal)", [](Device dev, double pad) {
    PaddedBatch p;
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
    return padded_outputs(m, x, m(x, p.time, in).attn, p.time, {p.batch, p.time, p.feat});
  });
  for (bool fft : {false, true})
    add(std::string("mega::MultiHeadDampedEMA") + (fft ? " (long: FFT path)" : ""), [fft](Device dev, double pad) {
      PaddedBatch p;
      Generator gen(12);
      nn::mega::Options o;
      o.activation = nn::mega::Activation::silu;
      nn::mega::MultiHeadDampedEMA m(p.feat, gen, o);
      nn::to(m, dev);
      Tensor x = padded_input(p, dev, pad);
      if (!fft) return padded_outputs(m, x, m(x, p.time).first, p.time, {p.batch, p.time, p.feat});
      // 300 frames: the kernel is long enough for the FFT, where NaN would spread to every frame.
      Dim t2 = dynamic_dim(p.batch, {300, 170, 0}, "time_long");
      Tensor xl = where(sequence_mask({t2}, dev), random_tensor({p.batch, t2, p.feat}, 21).to(dev), pad, true)
                      .detach().with_requires_grad();
      return padded_outputs(m, xl, m(xl, t2).first, t2, {p.batch, t2, p.feat});
    });
  add("rwkv::SelfAttention", [](Device dev, double pad) {
    PaddedBatch p;
    Generator gen(8);
    Dim att(6, "att");
    nn::rwkv::SelfAttention m(p.feat, att, 16, 0, 2, gen);
    nn::to(m, dev);
    Tensor x = padded_input(p, dev, pad);
    auto [y, st] = m(x, p.time);
    return padded_outputs(m, x, y, p.time, {p.batch, p.time, p.feat});
  });
  return cases;
}

// Runs every case with zeros and with each kind of garbage in the padding; all must agree.
inline void check_padding_cases(dimx::Device dev, double rtol = 1e-5, double atol = 1e-6) {
  const double inf = std::numeric_limits<double>::infinity();
  for (const PaddingCase& c : padding_cases()) {
    INFO(c.name);
    const Outputs want = c.run(dev, 0);
    for (double pad : {std::numeric_limits<double>::quiet_NaN(), inf, -inf, 1e30}) {
      INFO("padding " << pad);
      const Outputs got = c.run(dev, pad);
      REQUIRE(got.size() == want.size());
      for (size_t i = 0; i < got.size(); ++i) {
        INFO((i == 0 ? "output" : i == 1 ? "input gradient" : "parameter gradient " + std::to_string(i - 2)));
        CHECK_VEC_APPROX(got[i], want[i], rtol, atol);
      }
    }
  }
}

}  // namespace dimx_test

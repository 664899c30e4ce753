// torchscale_layer: a decoder layer in the style of torchscale's models (RetNet/LongNet era),
// built on nn::torchscale::MultiheadAttention with XPOS and sub-LN, and multiway routing for a
// vision-language sequence: the image patches at the front go through branch A of every
// projection, the text tokens after them through branch B. It trains briefly on a padded
// batch, lists the checkpoint names, and decodes: the image and the first tokens as one chunk,
// then one token at a time with the incremental state. docs/tutorials/08-torchscale-attention.md
// walks through it. Exits non-zero unless the loss drops and decoding gives the full output.
#include <dimx/nn.h>
#include <dimx/optim.h>

#include <cmath>
#include <cstdio>
#include <iostream>

using namespace dimx;
namespace ts = dimx::nn::torchscale;

// 1. A pre-norm decoder layer: causal self-attention with XPOS and sub-LN, then a feed-forward.
struct Layer : nn::Module {
  BOOST_HANA_DEFINE_STRUCT(Layer, (nn::LayerNorm, self_attn_layer_norm), (ts::MultiheadAttention, self_attn),
                           (nn::LayerNorm, final_layer_norm), (nn::Linear, fc1), (nn::Linear, fc2));
  Layer(Dim model, Dim hidden, Generator& gen)
      : self_attn_layer_norm(model), self_attn(model, 4, gen, options()), final_layer_norm(model),
        fc1(model, hidden, gen), fc2(hidden, model, gen) {}

  static ts::Options options() {
    ts::Options o;
    o.self_attention = true;
    o.xpos_rel_pos = true;  // rotary positions with a decay, relative by construction
    o.xpos_scale_base = 64;
    o.subln = true;         // inner_attn_ln before out_proj
    o.multiway = true;      // every projection twice: .A (image) and .B (text)
    return o;
  }

  // x {batch, time, model}; `split`: positions before it are image patches (branch A).
  std::pair<Tensor, std::optional<ts::State>> operator()(const Tensor& x, const Dim& time, int64_t split,
                                                         std::optional<ts::State> state = std::nullopt) const {
    ts::Inputs in;
    in.causal = true;
    in.need_weights = false;
    in.split_position = split;
    in.incremental_state = std::move(state);
    ts::Output a = self_attn(self_attn_layer_norm(x), time, in);
    Tensor h = x + a.attn;
    return {h + fc2(nn::gelu(fc1(final_layer_norm(h)))), a.state};
  }
};


int main() {
  bool ok = true;
  Generator gen(5);
  Dim batch(4, "batch"), model(32, "model"), hidden(64, "hidden"), out(1, "out");
  const int64_t image = 6;  // the first 6 positions of every sequence are image patches
  // A padded batch: the text after the image has a different length in each sequence.
  Dim time(Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{16, 11, 14, 9}), "time");
  Layer layer(model, hidden, gen);
  nn::Linear head(model, out, gen);
  for (auto& [name, t] : nn::named_tensors(layer.self_attn))
    if (name.rfind("q_proj", 0) == 0 || name.rfind("xpos", 0) == 0) std::cout << "  self_attn." << name << "  " << t->str() << "\n";

  // 2. Training: predict, at each frame, the running mean of the inputs (a causal task).
  Tensor x = random_normal({batch, time, model}, gen);
  Tensor target = cumsum(reduce_mean(x, {model}), time) / (range_over_dim(time, DType::f32) + 1.0);
  auto params = nn::named_parameters(layer);
  for (auto& [name, t] : nn::named_parameters(head)) params.push_back({"head." + name, t});
  optim::AdamW opt(params, {.lr = 3e-3});
  auto loss_of = [&] {
    Tensor y = reduce_sum(head(layer(x, time, image).first), {out});
    return reduce_mean(reduce_mean(square(y - target), {time}), {batch});
  };
  const double first = loss_of().item<float>();
  double last = first;
  for (int step = 0; step < 60; ++step) {
    opt.zero_grad();
    Tensor loss = loss_of();
    backward(loss);
    opt.step();
    last = loss.item<float>();
  }
  std::printf("training: loss %.4f -> %.4f\n", first, last);
  ok = ok && last < first / 2;

  // 3. Decoding: the image and two text tokens as one chunk (split at the image), then one text
  // token at a time (all branch B: split 0). XPOS places each new query after its history.
  NoGradGuard ng;
  Tensor full = layer(x, time, image).first;
  auto [prefix, pre_time] = slice(x, time, 0, image + 2);
  auto [y0, state] = layer(prefix, pre_time, image, layer.self_attn.initial_state({batch}));
  double worst = 0;
  for (int64_t t = image + 2; t < time.extent(); ++t) {
    auto [yt, next] = layer(frame(x, time, t), nn::single_step_dim(), /*split=*/0, state);
    state = next;
    Tensor valid = less(Tensor::scalar(double(t), DType::i32), time.lengths(), true);
    Tensor diff = where(valid, abs(yt - frame(full, time, t)), 0.0, true);
    worst = std::max(worst, double(reduce_max(diff, diff.dims()).item<float>()));
  }
  Tensor d0 = copy_masked(abs(y0 - slice(full, time, 0, image + 2, 1, pre_time).first), {pre_time});
  worst = std::max(worst, double(reduce_max(d0, d0.dims()).item<float>()));
  std::printf("decoding (a chunk, then single tokens): max |difference| to the full forward %.2e\n", worst);
  ok = ok && worst < 1e-4;
  std::cout << (ok ? "torchscale_layer: ok" : "torchscale_layer: FAILED") << "\n";
  return ok ? 0 : 1;
}

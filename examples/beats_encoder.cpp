// beats_encoder: a two-layer BEATs-style encoder built from nn::beats::MultiheadAttention. The
// first layer owns the T5 relative-position table and hands its bias, in relative form, to the
// second; both gate it with the GRU gate. The example trains it briefly on a padded batch, saves one layer and
// loads it by its PyTorch names into a fresh module, and decodes a causal variant one frame at
// a time with an incremental state. docs/tutorials/07-beats-attention.md walks through it.
// Exits non-zero unless the loss drops, the reloaded layer computes the same, and step-by-step
// decoding gives the full-sequence output.
#include <dimx/nn.h>
#include <dimx/optim.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

using namespace dimx;
namespace beats = dimx::nn::beats;

// 1. One encoder layer: post-norm self-attention and feed-forward, as BEATs' layers are.
struct Layer : nn::Module {
  Dim model, hidden;
  BOOST_HANA_DEFINE_STRUCT(Layer, (beats::MultiheadAttention, self_attn), (nn::LayerNorm, self_attn_layer_norm),
                           (nn::Linear, fc1), (nn::Linear, fc2), (nn::LayerNorm, final_layer_norm));

  Layer(Dim model, Dim hidden, const Dim& heads, bool owns_table, Generator& gen)
      : model(model), hidden(hidden), self_attn(model, heads.size(), gen, options(heads, owns_table)),
        self_attn_layer_norm(model), fc1(model, hidden, gen), fc2(hidden, model, gen), final_layer_norm(model) {}

  // The layers share one heads Dim: the position bias one layer hands on is over it.
  static beats::Options options(const Dim& heads, bool owns_table) {
    beats::Options o;
    o.heads = heads;
    o.self_attention = true;
    o.has_relative_attention_bias = owns_table;  // only the first layer has the table
    o.num_buckets = 32;
    o.max_distance = 64;
    o.gru_rel_pos = true;
    return o;
  }

  // x {batch, time, model}; returns the output and the (ungated) position bias for the next
  // layer, in relative form: a table over the positions j - i, which the fused attention reads
  // in place (nothing of size {query, key} is formed).
  using Bias = std::optional<RelativeBias>;
  std::pair<Tensor, Bias> operator()(const Tensor& x, const Dim& time, const Bias& position_bias) const {
    beats::Inputs in;
    in.need_weights = false;
    in.relative_position_bias = position_bias;  // unset in the first layer: it computes its own
    in.need_position_bias = false;              // no {heads, query, keys} tensor
    beats::Output a = self_attn(x, time, in);
    Tensor h = self_attn_layer_norm(x + a.attn);
    Tensor y = final_layer_norm(h + fc2(nn::gelu(fc1(h))));
    return {y, a.relative_position_bias};
  }
};

struct Encoder : nn::Module {
  BOOST_HANA_DEFINE_STRUCT(Encoder, (std::vector<Layer>, layers));
  Encoder(Dim model, Dim hidden, const Dim& heads, int n, Generator& gen) {
    for (int i = 0; i < n; ++i) layers.emplace_back(model, hidden, heads, i == 0, gen);
  }
  Tensor operator()(Tensor x, const Dim& time) const {
    Layer::Bias bias;
    for (const Layer& l : layers) std::tie(x, bias) = l(x, time, bias);
    return x;
  }
};

int main() {
  bool ok = true;
  Generator gen(3);
  Dim batch(6, "batch"), model(32, "model"), hidden(64, "hidden"), heads(4, "heads"), out(1, "out");
  // 2. A padded batch: its time Dim carries each sequence's length. Padded frames are never
  // read by the attention (the key Dim's lengths), whatever they hold.
  Dim time(Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{20, 14, 9, 20, 5, 17}), "time");
  Encoder enc(model, hidden, heads, 2, gen);
  nn::Linear head(model, out, gen);
  std::cout << nn::describe(enc.layers[0].self_attn) << "\n";

  // The task: at each frame, the mean of the sequence's inputs (it needs every key).
  Tensor x = random_normal({batch, time, model}, gen);
  Tensor target = reduce_mean(reduce_mean(x, {model}), {time});

  // 3. Training on the padded batch: AdamW, masked mean squared error.
  auto params = nn::named_parameters(enc);
  for (auto& [name, t] : nn::named_parameters(head)) params.push_back({"head." + name, t});
  optim::AdamW opt(params, {.lr = 3e-3});
  auto loss_of = [&] {
    Tensor y = reduce_sum(head(enc(x, time)), {out});
    Tensor err = square(y - target);
    return reduce_mean(reduce_mean(err, {time}), {batch});
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
  ok = ok && last < first / 3;
  // Every attention call ran fused, and no relative bias was gathered over {query, key}.
  const AttentionPathCounts paths = attention_path_counts();
  std::printf("attention paths: %lld fused forwards, %lld fused backwards, %lld unfused, %lld biases gathered\n",
              (long long)paths.fused_forward, (long long)paths.fused_backward,
              (long long)(paths.unfused_forward + paths.unfused_backward), (long long)paths.relative_bias_gathered);
  ok = ok && paths.unfused_forward + paths.unfused_backward == 0 && paths.relative_bias_gathered == 0;

  // 4. A layer's weights under the original's names: save it, load it into a fresh layer.
  const std::string path = (std::filesystem::temp_directory_path() / "beats_layer0.safetensors").string();
  nn::save_state(enc.layers[0].self_attn, path);
  for (const auto& k : SafeTensors::open(path).keys()) std::cout << "  " << k << "\n";
  Generator other(99);
  beats::MultiheadAttention fresh(model, 4, other, Layer::options(heads, true));
  nn::load_state(fresh, path);  // strict: every name and shape must match
  {
    NoGradGuard ng;
    beats::Inputs in;
    in.need_weights = false;
    Tensor a = enc.layers[0].self_attn(x, time, in).attn, b = fresh(x, time, in).attn;
    double diff = reduce_max(abs(copy_masked(a - b, {time})), {batch, time, model}).item<float>();
    std::printf("reloaded layer: max |difference| %.2e\n", diff);
    ok = ok && diff == 0;
  }
  std::filesystem::remove(path);

  // 5. Decoding: a causal layer fed one frame at a time with its incremental state equals the
  // full causal forward on every valid frame.
  {
    NoGradGuard ng;
    beats::MultiheadAttention dec(model, 4, gen, Layer::options(heads, true));
    beats::Inputs causal;
    causal.causal = true;
    causal.need_weights = false;
    Tensor full = dec(x, time, causal).attn;
    std::optional<beats::State> state = dec.initial_state({batch});
    double worst = 0;
    for (int64_t t = 0; t < time.extent(); ++t) {
      // Frame t of the sequences still running; the ones that ended take no step (their
      // history keeps its length), through a one-frame dynamic Dim.
      Tensor valid = less(Tensor::scalar(double(t), DType::i32), time.lengths(), true);
      const Dim step_dim = nn::decoding_step(valid);
      beats::Inputs step = causal;
      step.incremental_state = state;
      beats::Output o = dec(expand_dim(frame(x, time, t), step_dim), step_dim, step);
      state = o.state;  // the keys and values so far, per sequence
      Tensor got = reduce_sum(o.attn, {step_dim});  // the frame (0 for the sequences that ended)
      Tensor want = frame(full, time, t);
      Tensor diff = where(valid, abs(got - want), 0.0, true);
      worst = std::max(worst, double(reduce_max(diff, diff.dims()).item<float>()));
    }
    std::printf("decoding step by step: max |difference| to the full forward %.2e; history lengths:", worst);
    for (int32_t l : state->accum_axis.lengths().to_vector<int32_t>()) std::printf(" %d", l);
    std::printf("\n");
    ok = ok && worst < 1e-5;
  }
  std::cout << (ok ? "beats_encoder: ok" : "beats_encoder: FAILED") << "\n";
  return ok ? 0 : 1;
}

// mega_layer: a MEGA-style gated layer built on nn::mega::MultiHeadDampedEMA: the damped EMA
// gives each frame a smoothed, long-range summary of the past, and a gate decides per feature
// how much of it goes into the residual stream. It trains on a padded batch, shows that the
// padding's content never matters, and decodes one frame at a time (and by chunks) with the
// EMA's state, and computes the EMA both as a scan and as a convolution.
// docs/tutorials/09-mega-ema.md walks through it. Exits non-zero unless the loss drops, garbage
// in the padding changes nothing, decoding gives the full output and both formulations agree.
#include <dimx/nn.h>
#include <dimx/optim.h>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>

using namespace dimx;
namespace mega = dimx::nn::mega;

// 1. The layer: out = x + sigmoid(gate(x)) * proj(ema(x)), both Linears onto a Dim `inner`
// of the model's size that goes back onto the model Dim for the residual.
struct Layer : nn::Module {
  Dim model, inner;
  BOOST_HANA_DEFINE_STRUCT(Layer, (mega::MultiHeadDampedEMA, ema), (nn::Linear, gate), (nn::Linear, proj));
  Layer(Dim model, Generator& gen)
      : model(model), inner(model.copy("inner")), ema(model, gen, options()), gate(model, inner, gen),
        proj(model, inner, gen) {}
  static mega::Options options() {
    mega::Options o;
    o.num_heads = 4;
    o.activation = mega::Activation::silu;
    return o;
  }
  // x {batch, time, model}; with a state the sequence continues it (a frame or a chunk).
  std::pair<Tensor, std::optional<Tensor>> operator()(const Tensor& x, const Dim& time,
                                                      const std::optional<Tensor>& state = std::nullopt) const {
    auto [h, next] = ema(x, time, Tensor(), state);
    Tensor y = sigmoid(gate(x)) * proj(h);
    return {x + replace_dim(y, inner, model).first, next};
  }
};

int main() {
  bool ok = true;
  Generator gen(9);
  Dim batch(4, "batch"), model(16, "model"), out(1, "out");
  Dim time(Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{48, 30, 41, 17}), "time");
  Layer layer(model, gen);
  nn::Linear head(model, out, gen);
  std::cout << nn::describe(layer.ema);

  // 2. A causal task with long memory: a decaying average of the inputs so far.
  Tensor x = random_normal({batch, time, model}, gen);
  Tensor target;
  {
    auto v = reduce_mean(x, {model}).to_vector<float>({batch, time});
    std::vector<float> avg(v.size());
    const auto lens = time.lengths().to_vector<int32_t>();
    for (int64_t b = 0; b < 4; ++b) {
      float m = 0;
      for (int64_t t = 0; t < time.extent(); ++t) {
        m = 0.9f * m + 0.1f * v[size_t(b * time.extent() + t)];
        avg[size_t(b * time.extent() + t)] = t < lens[size_t(b)] ? m : 0.0f;
      }
    }
    target = Tensor::from_vector<float>({batch, time}, avg);
  }
  auto params = nn::named_parameters(layer);
  for (auto& [name, t] : nn::named_parameters(head)) params.push_back({"head." + name, t});
  optim::AdamW opt(params, {.lr = 1e-2});
  auto loss_of = [&](const Tensor& input) {
    Tensor y = reduce_sum(head(layer(input, time).first), {out});
    return reduce_mean(reduce_mean(square(y - target), {time}), {batch});
  };
  const double first = loss_of(x).item<float>();
  double last = first;
  for (int step = 0; step < 80; ++step) {
    opt.zero_grad();
    Tensor loss = loss_of(x);
    backward(loss);
    opt.step();
    last = loss.item<float>();
  }
  std::printf("training: loss %.5f -> %.5f\n", first, last);
  ok = ok && last < first / 3;

  NoGradGuard ng;
  // 3. The padding's content never matters: NaN there changes no valid output.
  {
    Tensor garbage = where(sequence_mask({time}), x, std::numeric_limits<double>::quiet_NaN(), true);
    double a = loss_of(x).item<float>(), b = loss_of(garbage).item<float>();
    std::printf("NaN in the padding: loss %.6f vs %.6f\n", b, a);
    ok = ok && std::abs(a - b) < 1e-6;
  }

  // 4. Decoding: frame by frame, and two chunks, each continuing the EMA's state, give the full
  // forward's valid frames. (Stepping is the exact EMA; with a truncation_length only the full
  // sequence path truncates.)
  Tensor full = copy_masked(layer(x, time).first, {time});
  double worst = 0;
  {
    Tensor state = layer.ema.initial_state({batch});
    for (int64_t t = 0; t < time.extent(); ++t) {
      auto [y, next] = layer(frame(x, time, t), nn::single_step_dim(), state);
      state = *next;
      Tensor valid = less(Tensor::scalar(double(t), DType::i32), time.lengths(), true);
      Tensor d = where(valid, abs(y - frame(full, time, t)), 0.0, true);
      worst = std::max(worst, double(reduce_max(d, d.dims()).item<float>()));
    }
  }
  {
    auto [x1, t1] = slice(x, time, 0, 20);
    auto [x2, t2] = slice(x, time, 20);
    auto [y1, s1] = layer(x1, t1, layer.ema.initial_state({batch}));
    auto [y2, s2] = layer(x2, t2, *s1);
    Tensor d1 = copy_masked(abs(y1 - slice(full, time, 0, 20, 1, t1).first), {t1});
    Tensor d2 = copy_masked(abs(y2 - slice(full, time, 20, std::nullopt, 1, t2).first), {t2});
    worst = std::max({worst, double(reduce_max(d1, d1.dims()).item<float>()), double(reduce_max(d2, d2.dims()).item<float>())});
  }
  std::printf("decoding (frames, then chunks): max |difference| to the full forward %.2e\n", worst);
  ok = ok && worst < 1e-4;

  // 5. Two formulations of the same EMA: the scan op (what the layer runs without truncation)
  // and the causal convolution by the kernel the parameters make (what it runs with one).
  {
    NoGradGuard ng;
    const mega::MultiHeadDampedEMA& m = layer.ema;
    auto [p, q] = m.compute_ema_coefficients();
    Tensor gain = p * squeeze(m.ema_expansion_matrix, m.one), weight = m.kernel_projection_matrix * m.scaling;
    Tensor by_scan = ema(x, gain, q, weight, time, m.heads).y;
    Dim taps(time.extent(), "taps");
    Tensor by_conv = causal_conv(copy_masked(x, {time}), m.compute_ema_kernel(taps), time, taps);
    Tensor d = copy_masked(abs(by_scan - by_conv), {time});
    const double diff = reduce_max(d, d.dims()).item<float>();
    std::printf("scan vs convolution: max |difference| %.2e\n", diff);
    ok = ok && diff < 1e-4;
  }
  std::cout << (ok ? "mega_layer: ok" : "mega_layer: FAILED") << "\n";
  return ok ? 0 : 1;
}

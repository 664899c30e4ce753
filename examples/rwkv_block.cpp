// rwkv_block: an RWKV time-mixing block (nn::rwkv::SelfAttention) trained on a padded batch,
// then run as a decoder one frame at a time with its state. docs/tutorials/06-rwkv.md walks
// through it. Exits non-zero unless the loss drops 5x and decoding step by step gives the
// full-sequence output.
#include <dimx/nn.h>
#include <dimx/optim.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>

using namespace dimx;

// 1. A block: pre-norm time mixing with a residual, and a linear read-out.
struct Block : nn::Module {
  Dim feature;
  BOOST_HANA_DEFINE_STRUCT(Block, (nn::LayerNorm, norm), (nn::rwkv::SelfAttention, att), (nn::Linear, head));

  Block(Dim feature, Dim attention, Dim out, Generator& gen)
      : feature(feature), norm(feature), att(feature, attention, /*context_size=*/64, /*block_id=*/0,
                                              /*num_blocks=*/1, gen),
        head(feature, out, gen) {}

  // x {batch..., axis, feature}; returns the prediction and the state after the last frame.
  std::pair<Tensor, nn::rwkv::State> operator()(const Tensor& x, const Dim& axis,
                                                const std::optional<nn::rwkv::State>& state = std::nullopt) const {
    auto [mixed, next] = att(norm(x), axis, state);
    return {head(x + mixed), next};
  }
};

// The task: at each frame, an exponential moving average of the inputs so far, the kind of
// long-range, decaying memory that the WKV state carries.
Tensor moving_average(const Tensor& x, const Dim& axis, const Dim& feature, const Dim& out) {
  const int64_t T = axis.extent();
  auto dims = x.dims();
  Tensor xs = x.transpose_to({dims[0], axis, feature});
  std::vector<float> v = xs.to_vector<float>(), avg(size_t(dims[0].extent() * T), 0.0f);
  const int64_t F = feature.size();
  for (int64_t b = 0; b < dims[0].extent(); ++b) {
    float m = 0;
    for (int64_t t = 0; t < T; ++t) {
      float s = 0;
      for (int64_t f = 0; f < F; ++f) s += v[size_t((b * T + t) * F + f)];
      m = 0.8f * m + 0.2f * s / float(F);
      avg[size_t(b * T + t)] = m;
    }
  }
  return Tensor::from_vector<float>({dims[0], axis, out}, avg);
}

int main() {
  bool ok = true;
  Generator gen(7);
  Dim batch(16, "batch"), feature(16, "feature"), attention(32, "attention"), out(1, "out");
  // A padded batch: sequences of 12 to 40 frames.
  std::vector<int32_t> lengths;
  for (int i = 0; i < 16; ++i) lengths.push_back(12 + (i * 7) % 29);
  Dim time(Tensor::from_vector<int32_t>({batch}, lengths), "time");
  Tensor x = random_normal({batch, time, feature}, gen);
  Tensor target = moving_average(x, time, feature, out);

  Block model(feature, attention, out, gen);
  std::cout << nn::describe(model);

  // 2. Training: masked mean squared error over the valid frames (reduce_mean skips padding).
  auto params = nn::named_parameters(model);
  optim::AdamW opt(params, {.lr = 1e-2});
  double first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {
    opt.zero_grad();
    Tensor pred = model(x, time).first;
    Tensor loss = reduce_mean(square(pred - target), {batch, time, out});
    backward(loss);
    opt.step();
    last = loss.item<double>();
    if (step == 0) first = last;
    if (step % 30 == 0 || step == 149) std::printf("step %3d  loss %.5f\n", step, last);
  }
  std::printf("loss %.5f -> %.5f (%.1fx lower)\n", first, last, first / last);
  if (!(last * 5 < first)) {
    std::cout << "WRONG: the loss did not drop 5x\n";
    ok = false;
  }
  // The decay rates the block learned: w = -exp(time_decay), per attention channel.
  std::vector<float> td = model.att.time_decay.to_vector<float>();
  std::printf("time_decay range after training: [%.2f, %.2f]\n", *std::min_element(td.begin(), td.end()),
              *std::max_element(td.begin(), td.end()));

  // 3. Decoding: a new sequence, first at once, then one frame at a time with the state.
  NoGradGuard no_grad;
  nn::eval(model);
  Dim steps(20, "steps"), one(1, "one");
  Dim single(1, "single");
  Tensor seq = random_normal({single, steps, feature}, gen);
  Tensor whole = model(seq, steps).first;
  nn::rwkv::State state = model.att.initial_state({single});  // x = 0, (num, den, max) = (0, 0, -1e38)
  double max_diff = 0;
  for (int64_t t = 0; t < 20; ++t) {
    Tensor frame = slice(seq, steps, t, t + 1, 1, one).first;  // {single, one, feature}
    auto [y, next] = model(frame, one, state);
    state = next;
    double want = slice(whole, steps, t, t + 1, 1, one).first.to_vector<double>()[0];
    max_diff = std::max(max_diff, std::fabs(y.to_vector<double>()[0] - want));
  }
  std::printf("decoding 20 frames one at a time vs the whole sequence: max |diff| = %.2e\n", max_diff);
  if (!(max_diff < 1e-5)) {
    std::cout << "WRONG: step-by-step decoding differs from the full sequence\n";
    ok = false;
  }
  return ok ? 0 : 1;
}

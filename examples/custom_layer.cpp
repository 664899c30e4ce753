// Writing a custom layer: a gated feed-forward block (LayerNorm, SwiGLU, residual) composed
// from Linear and ops, stacked in a model, inspected by name, saved, reloaded and trained a
// few steps. docs/tutorials/03-writing-a-custom-layer.md walks through this file.
// Exits non-zero if any result is wrong.
#include <dimx/nn.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <unistd.h>

using namespace dimx;

// [doc:layer]
// y = x + dropout(down(silu(gate(norm(x))) * up(norm(x))))
struct GatedFFN : nn::Module {
  Dim feature, hidden;  // not reflected: plain members
  BOOST_HANA_DEFINE_STRUCT(GatedFFN,
                           (nn::LayerNorm, norm),
                           (nn::Linear, gate),
                           (nn::Linear, up),
                           (nn::Linear, down),
                           (nn::Dropout, drop));

  GatedFFN(Dim feature_, Dim hidden_, Generator& gen, double dropout = 0.1)
      : feature(feature_),
        hidden(hidden_),
        norm(feature),
        gate(feature, hidden, gen, /*bias=*/false),
        up(feature, hidden, gen, /*bias=*/false),
        down(hidden, feature, gen),
        drop(dropout) {}

  Tensor operator()(const Tensor& x, Generator& gen) const {
    Tensor h = norm(x);
    Tensor a = nn::silu(gate(h)) * up(h);  // both {..., hidden}: matched by Dim
    return x + drop(down(a), gen);         // back to {..., feature}
  }
};
// [doc:layer]

// [doc:model]
struct Model : nn::Module {
  Dim feature, out;
  BOOST_HANA_DEFINE_STRUCT(Model, (std::vector<GatedFFN>, blocks), (nn::LayerNorm, final_norm), (nn::Linear, head));

  Model(Dim feature_, Dim hidden, Dim out_, int num_blocks, Generator& gen)
      : feature(feature_), out(out_), final_norm(feature), head(feature, out, gen) {
    for (int i = 0; i < num_blocks; ++i) blocks.emplace_back(feature, hidden, gen);
  }

  Tensor operator()(Tensor x, Generator& gen) const {
    for (const auto& block : blocks) x = block(x, gen);
    return head(final_norm(x));
  }
};
// [doc:model]

namespace {
int failures = 0;
void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}
}  // namespace

int main() {
  try {
    Generator gen(42);
    Dim batch(4, "batch"), time(6, "time"), feature(8, "feature"), hidden(16, "hidden"), out(2, "out");
    Model model(feature, hidden, out, /*num_blocks=*/2, gen);

    // [doc:inspect]
    for (const auto& [name, p] : nn::named_parameters(model))
      std::cout << name << " " << dims_str(p->dims()) << "\n";
    std::cout << nn::describe(model);
    // [doc:inspect]
    auto named = nn::named_parameters(model);
    check(named.size() == 2 * 6 + 2 + 2, "16 parameter tensors");
    check(named[2].first == "blocks.0.gate.weight", "names like blocks.0.gate.weight");
    const int64_t per_block = 2 * 8 + 2 * 16 * 8 + (8 * 16 + 8);
    check(nn::num_parameters(model) == 2 * per_block + 2 * 8 + (2 * 8 + 2), "parameter count");

    // Forward pass: any layout of x works; Dims say what is contracted.
    Tensor x = random_normal({batch, time, feature}, gen);
    nn::eval(model);  // dropout off
    Tensor y = model(x, gen);
    std::cout << "y: " << y.str() << "\n";
    check(y.ndim() == 3 && y.has_dim(batch) && y.has_dim(time) && y.has_dim(out), "y has {batch, time, out}");
    Tensor y_t = model(x.transpose_to({feature, time, batch}), gen);
    auto yv = y.to_vector<float>({batch, time, out});
    auto ytv = y_t.to_vector<float>({batch, time, out});
    double layout_diff = 0;
    for (size_t i = 0; i < yv.size(); ++i) layout_diff = std::max(layout_diff, double(std::fabs(yv[i] - ytv[i])));
    check(layout_diff < 1e-5, "output independent of the input layout");

    // [doc:save]
    std::filesystem::path path = std::filesystem::temp_directory_path() /
                                 ("custom_layer_" + std::to_string(::getpid()) + ".safetensors");
    nn::save_state(model, path.string());

    Generator other_gen(7);
    Model restored(feature, hidden, out, 2, other_gen);  // different initial weights
    nn::load_state(restored, path.string());                     // strict: every name must match
    nn::eval(restored);
    // [doc:save]
    check(restored(x, gen).to_vector<float>({batch, time, out}) == yv, "reloaded model gives identical output");
    std::filesystem::remove(path);

    // [doc:train]
    // Fit a target with plain SGD: gradients by name, updates in place.
    Tensor target = random_normal({batch, time, out}, gen);
    nn::train(model);
    auto loss_of = [&](Generator& g) { return reduce_mean(square(model(x, g) - target), {batch, time, out}); };
    double first = 0, last = 0;
    for (int step = 0; step < 60; ++step) {
      Tensor loss = loss_of(gen);
      std::vector<Tensor> params;
      for (auto* p : nn::parameters(model)) params.push_back(*p);
      std::vector<Tensor> grads = dimx::grad(loss, params);
      NoGradGuard no_grad;
      for (size_t i = 0; i < params.size(); ++i) params[i].copy_from(params[i] - grads[i] * 0.3);
      if (step == 0) first = loss.item<float>();
      last = loss.item<float>();
    }
    std::printf("training loss: %.4f -> %.4f\n", first, last);
    // [doc:train]
    check(last < 0.25 * first, "60 SGD steps cut the loss by 4x");

    // The gradient of the head's bias is the mean residual, summed over batch and time.
    nn::eval(model);
    Tensor loss = loss_of(gen);
    Tensor g_bias = dimx::grad(loss, {*model.head.bias})[0];
    Tensor want = reduce_sum((model(x, gen) - target) * (2.0 / double(4 * 6 * 2)), {batch, time});
    auto gv = g_bias.to_vector<float>({out}), wv = want.to_vector<float>({out});
    check(std::fabs(gv[0] - wv[0]) < 1e-5 && std::fabs(gv[1] - wv[1]) < 1e-5, "head.bias gradient");

    // [doc:layer_norm]
    // LayerNorm is the layer_norm op with the module's parameters; the op takes any Dim.
    Tensor h = layer_norm(x, feature, *model.final_norm.weight, *model.final_norm.bias);
    Tensor per_time = layer_norm(x, time);  // normalized over time instead, no affine parameters
    // [doc:layer_norm]
    check(h.to_vector<float>({batch, time, feature}) == model.final_norm(x).to_vector<float>({batch, time, feature}),
          "nn::LayerNorm == layer_norm");
    auto pt = per_time.to_vector<double>({batch, feature, time});
    double mean0 = 0;
    for (int t = 0; t < 6; ++t) mean0 += pt[size_t(t)] / 6;
    check(std::fabs(mean0) < 1e-6, "layer_norm over time: zero mean");
  } catch (const Error& e) {
    std::printf("FAIL dimx::Error: %s\n", e.what());
    return 1;
  }
  if (failures) std::printf("%d check(s) failed\n", failures);
  return failures ? 1 : 0;
}

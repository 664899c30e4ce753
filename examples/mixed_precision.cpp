// mixed_precision: autocast (which ops run in bf16/f16 and which in f32), dynamic loss scaling
// with GradScaler, clipping after unscale, and saving the scaler with a checkpoint. A small
// classifier is trained in f32 and under autocast, and the two runs are compared.
// docs/tutorials/10-mixed-precision.md walks through it. Exits non-zero if a check fails.
#include <dimx/autocast.h>
#include <dimx/autograd.h>
#include <dimx/nn.h>
#include <dimx/optim.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>

#include <unistd.h>

using namespace dimx;

// A two-layer classifier: features -> hidden (GELU) -> classes.
struct Classifier : nn::Module {
  BOOST_HANA_DEFINE_STRUCT(Classifier, (nn::Linear, fc1), (nn::Linear, fc2));
  Classifier(Dim in, Dim hidden, Dim classes, Generator& gen) : fc1(in, hidden, gen), fc2(hidden, classes, gen) {}
  Tensor operator()(const Tensor& x) const { return fc2(nn::gelu(fc1(x))); }
};

struct Result {
  double first_loss = 0, last_loss = 0, held_out = 0;
  int skipped = 0;
  double final_scale = 1;
};

int main() {
  bool ok = true;
  auto check = [&ok](const char* what, bool good) {
    if (!good) std::cout << "WRONG: " << what << "\n";
    ok = ok && good;
  };

  // 1. What autocast does to each op. Inside the guard, contractions run in the low dtype,
  //    precision-sensitive ops in f32, and mixed floating dtypes meet at the wider one.
  Generator gen(1);
  Dim batch(4, "batch"), feat(8, "feat"), classes(3, "classes");
  Tensor x = random_normal({batch, feat}, gen);
  Tensor w = random_normal({classes, feat}, gen).with_requires_grad();  // a parameter: f32
  {
    NoGradGuard no_grad;  // inference only in this part
    AutocastGuard amp(DType::bf16);
    Tensor logits = matmul(x, w, feat);             // bf16 (f32 accumulation inside)
    Tensor probs = softmax(logits, classes);         // f32: softmax is on the f32 list
    Tensor mixed = probs + logits;                   // f32 + bf16 -> f32
    Tensor total = reduce_sum(logits, {classes});    // f32: sums are on the f32 list
    std::cout << "under bf16 autocast: matmul " << dtype_name(logits.dtype()) << ", softmax "
              << dtype_name(probs.dtype()) << ", f32 + bf16 " << dtype_name(mixed.dtype()) << ", sum "
              << dtype_name(total.dtype()) << "\n";
    check("matmul runs in bf16", logits.dtype() == DType::bf16);
    check("softmax runs in f32", probs.dtype() == DType::f32 && mixed.dtype() == DType::f32);
    // The same as casting by hand.
    check("autocast matmul = matmul of the cast inputs",
          logits.to_vector<float>() == matmul(x.astype(DType::bf16), w.astype(DType::bf16), feat).to_vector<float>());

    // Overriding the policy for one op: switch autocast off in a scope.
    {
      AutocastGuard off(DType::f32, /*enabled=*/false);
      check("autocast off: matmul in f32", matmul(x, w, feat).dtype() == DType::f32);
    }
  }

  // 2. Training. Data: 2048 points labelled by a random teacher network.
  Dim n(2048, "n"), held(256, "held"), hidden(32, "hidden");
  Classifier teacher(feat, Dim(16, "teacher_hidden"), classes, gen);
  Tensor x_train = random_normal({n, feat}, gen), x_test = random_normal({held, feat}, gen);
  Tensor y_train, y_test;
  {
    NoGradGuard no_grad;
    for (auto& [name, p] : nn::named_parameters(teacher)) p->copy_from(*p * 4.0);
    y_train = reduce_argmax(teacher(x_train), classes);  // i64 over {n}, sparse_dim = classes
    y_test = reduce_argmax(teacher(x_test), classes);
  }

  // One training run: under autocast to `low` (nullopt: plain f32), with a GradScaler when
  // `scaling`. The loop is the same for every mode: disabled guards and scalers pass through.
  auto train = [&](std::optional<DType> low, bool scaling, int steps, const std::string& save_dir) {
    Generator init(7);
    Classifier model(feat, hidden, classes, init);
    auto params = nn::named_parameters(model);
    optim::AdamW opt(params, {.lr = 1e-2});
    const bool amp = low.has_value();
    optim::GradScaler scaler({.enabled = amp && scaling});
    Result r;
    for (int step = 0; step < steps; ++step) {
      opt.zero_grad();
      Tensor loss;
      {
        // Forward and loss under autocast; the parameters stay f32.
        AutocastGuard guard(low.value_or(DType::bf16), /*enabled=*/amp);
        loss = cross_entropy(model(x_train), y_train, classes);  // f32: cross_entropy is on the f32 list
      }
      backward(scaler.scale(loss));  // gradients of loss * scale: small f16 gradients stay representable
      scaler.unscale(opt);           // true gradients again, so clipping sees their real norm
      optim::clip_grad_norm(params, /*max_norm=*/5.0);
      if (!scaler.step(opt)) ++r.skipped;  // skipped when a gradient overflowed
      scaler.update();                     // halve the scale after an overflow, grow it after clean steps
      const double l = loss.item<double>();
      if (step == 0) r.first_loss = l;
      r.last_loss = l;
    }
    r.final_scale = scaler.scale();
    {
      NoGradGuard no_grad;
      r.held_out = cross_entropy(model(x_test), y_test, classes).item<double>();
    }
    // A checkpoint: the scaler's state goes next to the optimizer's, so a resumed run scales
    // exactly as this one would have.
    if (!save_dir.empty() && scaler.enabled()) {
      scaler.save_state(save_dir + "/scaler.safetensors");
      opt.save_state(save_dir + "/optimizer.safetensors");
      optim::GradScaler resumed;
      resumed.load_state(save_dir + "/scaler.safetensors");
      check("the resumed scaler has the same scale", resumed.scale() == scaler.scale());
      check("the resumed scaler has the same growth count", resumed.growth_tracker() == scaler.growth_tracker());
    }
    return r;
  };

  auto dir = std::filesystem::temp_directory_path() / ("dimx_mixed_precision_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const int steps = 200;
  Result f32 = train(std::nullopt, false, steps, "");
  Result bf16 = train(DType::bf16, false, steps, "");
  Result f16 = train(DType::f16, true, steps, dir.string());
  std::filesystem::remove_all(dir);

  std::printf("%-22s %10s %10s %10s %8s %10s\n", "run", "first", "last", "held-out", "skipped", "scale");
  for (const auto& [name, r] : {std::pair{"f32", f32}, std::pair{"bf16 autocast", bf16},
                                std::pair{"f16 autocast + scaler", f16}})
    std::printf("%-22s %10.4f %10.4f %10.4f %8d %10g\n", name, r.first_loss, r.last_loss, r.held_out, r.skipped,
                r.final_scale);

  check("f32 training learns", f32.last_loss < 0.5 * f32.first_loss);
  for (const Result* r : {&bf16, &f16}) {
    check("autocast training learns", r->last_loss < 0.5 * r->first_loss);
    check("autocast ends near the f32 run", std::abs(r->held_out - f32.held_out) <= 0.1 * f32.held_out + 0.02);
  }
  check("the scaler skips few steps", f16.skipped < 20);
  return ok ? 0 : 1;
}

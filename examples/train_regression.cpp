// train_regression: autograd, a module with named parameters, AdamW, gradient clipping and
// saving/resuming a run. A small MLP learns a synthetic regression task (the outputs of a
// random "teacher" network). docs/tutorials/02-autograd-and-modules.md walks through it.
// Exits non-zero unless the training loss drops by more than 100x.
#include <dimx/autograd.h>
#include <dimx/nn.h>
#include <dimx/optim.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <numbers>
#include <string>

#include <unistd.h>

using namespace dimx;

// 1. A module is a plain struct. The members listed in BOOST_HANA_DEFINE_STRUCT are reflected,
//    so named_parameters() finds "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias".
struct Regressor : nn::Module {
  BOOST_HANA_DEFINE_STRUCT(Regressor, (nn::Linear, fc1), (nn::Linear, fc2));

  Regressor(Dim in, Dim hidden, Dim out, Generator& gen) : fc1(in, hidden, gen), fc2(hidden, out, gen) {}
  Tensor operator()(const Tensor& x) const { return fc2(nn::tanh(fc1(x))); }
};

// Mean squared error over every Dim of the prediction.
Tensor mse(const Tensor& pred, const Tensor& target) { return reduce_mean(square(pred - target), pred.dims()); }

int main() {
  bool ok = true;
  auto check = [&ok](const char* what, bool good) {
    if (!good) std::cout << "WRONG: " << what << "\n";
    ok = ok && good;
  };

  // 2. Autograd on a toy function: loss = sum_k (w_k * x_k - 1)^2.
  {
    Dim k(3, "k");
    Tensor w = Tensor::from_vector<float>({k}, std::vector<float>{0.5f, -1.0f, 2.0f}).with_requires_grad();
    Tensor x = Tensor::from_vector<float>({k}, std::vector<float>{1.0f, 2.0f, 3.0f});
    Tensor loss = reduce_sum(square(w * x - 1.0), {k});
    backward(loss);  // accumulates d loss / d w into w.grad()
    std::cout << "d loss / d w = " << w.grad().to_string() << "\n";  // 2 (w x - 1) x = [-1, -12, 30]
    std::vector<float> gw = w.grad().to_vector<float>();
    check("backward", gw[0] == -1.0f && gw[1] == -12.0f && gw[2] == 30.0f);

    // grad() returns gradients without touching w.grad().
    std::vector<Tensor> g = grad(reduce_sum(w * w, {k}), {w});  // 2 w
    check("grad", g[0].to_vector<float>() == std::vector<float>({1.0f, -2.0f, 4.0f}));

    // Under a NoGradGuard nothing is recorded.
    NoGradGuard no_grad;
    check("no_grad", !(w * 2.0).requires_grad());
  }

  // 3. Data: 512 samples from a random teacher network, split into training and held-out data.
  Generator gen(42);
  Dim in(8, "in"), hidden(32, "hidden"), out(2, "out");
  Dim batch(384, "batch"), held_out(128, "held_out");
  Regressor teacher(in, Dim(16, "teacher_hidden"), out, gen);
  {
    NoGradGuard no_grad;  // scale the teacher up so the task is not almost linear
    for (auto& [name, p] : nn::named_parameters(teacher)) p->copy_from(*p * 3.0);
  }
  Tensor x_train = random_normal({batch, in}, gen), x_test = random_normal({held_out, in}, gen);
  Tensor y_train, y_test;
  {
    NoGradGuard no_grad;
    y_train = teacher(x_train);
    y_test = teacher(x_test);
  }

  // 4. The model and its optimizer. The optimizer holds pointers to the parameters, by name.
  Regressor model(in, hidden, out, gen);
  std::cout << nn::describe(model);
  auto params = nn::named_parameters(model);
  optim::AdamW opt(params, {.lr = 1e-2, .weight_decay = 1e-4});

  // 5. Training: zero_grad, forward, backward, clip, step.
  const int steps = 800;
  double first_loss = 0, last_loss = 0;
  for (int step = 0; step < steps; ++step) {
    opt.set_lr(1e-3 + 0.5 * (1e-2 - 1e-3) * (1 + std::cos(std::numbers::pi * step / steps)));  // cosine schedule
    opt.zero_grad();
    Tensor loss = mse(model(x_train), y_train);
    backward(loss);
    double grad_norm = optim::clip_grad_norm(params, /*max_norm=*/1.0);
    opt.step();
    last_loss = loss.item<double>();
    if (step == 0) first_loss = last_loss;
    if (step % 100 == 0 || step == steps - 1) {
      NoGradGuard no_grad;
      double test_loss = mse(model(x_test), y_test).item<double>();
      std::printf("step %4d  loss %.6f  held-out %.6f  grad norm %.4f  lr %.5f\n", step, last_loss, test_loss,
                  grad_norm, opt.lr());
    }
  }
  std::printf("loss %.6f -> %.6f (%.0fx lower)\n", first_loss, last_loss, first_loss / last_loss);
  check("loss dropped by more than 100x", last_loss * 100 < first_loss);

  // 6. Save the model and the optimizer state, load them into a fresh model and optimizer,
  //    and check that one more step gives the same parameters on both.
  auto dir = std::filesystem::temp_directory_path() / ("dimx_train_regression_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string model_file = (dir / "model.safetensors").string();
  const std::string optimizer_file = (dir / "optimizer.safetensors").string();
  nn::save_state(model, model_file);
  opt.save_state(optimizer_file);

  Regressor resumed(in, hidden, out, gen);  // fresh random weights, overwritten below
  nn::load_state(resumed, model_file);
  auto resumed_params = nn::named_parameters(resumed);
  optim::AdamW resumed_opt(resumed_params, {});
  resumed_opt.load_state(optimizer_file);  // restores lr, betas, ... too
  std::filesystem::remove_all(dir);

  for (auto* m : {&model, &resumed}) {
    optim::AdamW& o = m == &model ? opt : resumed_opt;
    o.zero_grad();
    backward(mse((*m)(x_train), y_train));
    o.step();
  }
  bool same = true;
  for (size_t i = 0; i < params.size(); ++i)
    same = same && params[i].second->to_vector<float>() == resumed_params[i].second->to_vector<float>();
  std::cout << "resumed run matches: " << (same ? "yes" : "no") << "\n";
  check("resumed run matches", same);

  // 7. Where the time of a step goes: a Profiler times every primitive while it lives, keyed by
  //    the op whose backward issued it, "optimizer step", or "forward" for the rest.
  {
    Profiler prof;
    opt.zero_grad();
    backward(mse(model(x_train), y_train));
    opt.step();
    std::cout << prof.report(8);
    int64_t backward_gemms = 0;
    for (const Profiler::Entry& e : prof.entries())
      if (e.context.rfind("matmul", 0) == 0 && e.primitive.rfind("gemm", 0) == 0) backward_gemms += e.calls;
    // Each of the model's Linear layers (matmul_add: the product and its bias) has two gradient
    // GEMMs (input and weight), the first layer's one (its input needs no gradient).
    check("the profiler saw the backward's GEMMs", backward_gemms >= 3);
    bool optimizer_seen = false;
    for (const Profiler::Entry& e : prof.by_context()) optimizer_seen = optimizer_seen || e.context == "optimizer step";
    check("the profiler saw the optimizer step", optimizer_seen);
  }

  return ok ? 0 : 1;
}

// Host overhead per call: add, mul, matmul, softmax and reduce_sum on 8 x 8 float32 tensors,
// and one training step (forward + backward) of a tiny MLP, dimx against libtorch's C++ API
// (Debian's libtorch-dev) in the same process, both on the CPU with one thread. Tiny tensors
// make the arithmetic negligible, so the times are what a call costs before and around its
// kernel: allocation, dispatch, Dim resolution or shape checks, and the autograd tape.
//
//   bench_overhead [--json] [--calls N]
#include <dimx/dimx.h>
#include <dimx/nn.h>

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "timer.h"

namespace {

using Clock = std::chrono::steady_clock;

// Median over 7 rounds of the mean time per call (microseconds) of `calls` calls.
double us_per_call(int calls, const std::function<void()>& f) {
  for (int i = 0; i < calls / 10 + 1; ++i) f();
  std::vector<double> t;
  for (int r = 0; r < 7; ++r) {
    const auto a = Clock::now();
    for (int i = 0; i < calls; ++i) f();
    t.push_back(std::chrono::duration<double, std::micro>(Clock::now() - a).count() / calls);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  bool json = false;
  int calls = 20000;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json") json = true;
    else if (a == "--calls" && i + 1 < argc) calls = std::max(1, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: bench_overhead [--json] [--calls N]\n");
      return 2;
    }
  }
  dimx::bench::print_runtime(json);
  torch::set_num_threads(1);
  at::set_num_interop_threads(1);

  struct Row {
    std::string name;
    double dimx_us, torch_us;
  };
  std::vector<Row> rows;
  // ---- single ops on 8 x 8
  {
    using namespace dimx;
    Dim r(8, "r"), c(8, "c"), k(8, "k");
    Generator gen(0);
    Tensor a = random_normal({r, c}, gen), b = random_normal({r, c}, gen), w = random_normal({c, k}, gen);
    torch::NoGradGuard ng;
    NoGradGuard dng;
    torch::Tensor ta = torch::randn({8, 8}), tb = torch::randn({8, 8}), tw = torch::randn({8, 8});
    rows.push_back({"add 8x8", us_per_call(calls, [&] { (void)(a + b); }), us_per_call(calls, [&] { (void)(ta + tb); })});
    rows.push_back({"mul 8x8", us_per_call(calls, [&] { (void)(a * b); }), us_per_call(calls, [&] { (void)(ta * tb); })});
    rows.push_back({"matmul 8x8 @ 8x8", us_per_call(calls, [&] { (void)matmul(a, w, c); }),
                    us_per_call(calls, [&] { (void)torch::matmul(ta, tw); })});
    rows.push_back({"softmax 8x8 (rows)", us_per_call(calls, [&] { (void)softmax(a, c); }),
                    us_per_call(calls, [&] { (void)torch::softmax(ta, 1); })});
    rows.push_back({"reduce_sum 8x8 (all)", us_per_call(calls, [&] { (void)reduce_sum(a, {r, c}); }),
                    us_per_call(calls, [&] { (void)ta.sum(); })});
  }
  // ---- a tiny MLP's training step: x [8, 16] -> Linear(16, 32) -> ReLU -> Linear(32, 4),
  // loss = mean squared error; forward and backward (the gradients of the four parameters).
  {
    using namespace dimx;
    Dim batch(8, "batch"), in(16, "in"), hid(32, "hid"), out(4, "out");
    Generator gen(1);
    nn::Linear l1(in, hid, gen), l2(hid, out, gen);
    Tensor x = random_normal({batch, in}, gen), y = random_normal({batch, out}, gen);
    std::vector<Tensor> params{l1.weight, *l1.bias, l2.weight, *l2.bias};
    torch::nn::Linear t1(16, 32), t2(32, 4);
    torch::Tensor tx = torch::randn({8, 16}), ty = torch::randn({8, 4});
    const int steps = std::max(1, calls / 20);
    rows.push_back({"tiny MLP step (fwd + bwd)", us_per_call(steps, [&] {
                      Tensor h = relu(l1(x));
                      Tensor d = l2(h) - y;
                      grad(reduce_mean(d * d, {batch, out}), params);
                    }),
                    us_per_call(steps, [&] {
                      torch::Tensor d = t2(torch::relu(t1(tx))) - ty;
                      torch::Tensor loss = (d * d).mean();
                      torch::autograd::grad({loss}, {t1->weight, t1->bias, t2->weight, t2->bias});
                    })});
  }
  if (!json) std::printf("%-30s %12s %12s %8s\n", "case", "dimx us", "libtorch us", "ratio");
  for (const Row& r : rows) {
    if (json)
      std::printf("{\"bench\": \"overhead\", \"case\": \"%s\", \"unit\": \"us per call\", \"dimx\": %.3f, "
                  "\"peer\": %.3f, \"peer_name\": \"libtorch %s\", \"ratio\": %.3f}\n",
                  r.name.c_str(), r.dimx_us, r.torch_us, TORCH_VERSION, r.dimx_us / r.torch_us);
    else
      std::printf("%-30s %12.3f %12.3f %8.2f\n", r.name.c_str(), r.dimx_us, r.torch_us, r.dimx_us / r.torch_us);
  }
  return 0;
}

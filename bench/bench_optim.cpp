// One optimizer step (AdamW, SGD with momentum) over 12 matrices [768, 768] and 12 vectors
// [768] (f32, gradients set once), dimx's fused multi-tensor step and its per-parameter
// update, against torch.optim's multi-tensor paths (foreach, and fused where torch has it) in
// the same run (bench_optim_peer.py).
//
//   bench_optim [--device cpu|cuda] [--reps N] [--peer script.py]
#include <dimx/dimx.h>
#include <dimx/optim.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <string>

#include "peer.h"
#include "timer.h"

using namespace dimx;

int main(int argc, char** argv) {
  std::string device = "cpu", peer_script = std::string(argv[0]) + "_peer.py";
  int reps = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (a == "--peer" && i + 1 < argc) peer_script = argv[++i];
    else {
      std::cerr << "usage: bench_optim [--device cpu|cuda] [--reps N] [--peer script.py]\n";
      return 2;
    }
  }
  bench::print_runtime(false);
  const Device dev = device == "cuda" ? Device::cuda(0) : Device::cpu();
  const int n = reps > 0 ? reps : (dev.is_cpu() ? 20 : 100);
  Generator gen(0);
  std::vector<Tensor> ps;
  for (int i = 0; i < 24; ++i) {
    Dims dims{Dim(768, "rows" + std::to_string(i))};
    if (i % 2) dims.push_back(Dim(768, "cols" + std::to_string(i)));
    ps.push_back(random_normal(dims, gen).to(dev).with_requires_grad());
    ps.back().set_grad(random_normal(dims, gen).to(dev));
  }
  optim::NamedParameters named;
  for (size_t i = 0; i < ps.size(); ++i) named.emplace_back("p" + std::to_string(i), &ps[i]);

  std::map<std::string, double> rows;
  for (bool fused : {true, false}) {
    const std::string how = fused ? " (dimx fused)" : " (dimx per parameter)";
    optim::AdamWOptions ao;
    ao.fused = fused;
    optim::AdamW adamw(named, ao);
    rows["AdamW step" + how] = bench::median_ms(n, dev, [&] { adamw.step(); });
    optim::SGDOptions so;
    so.lr = 0.1;
    so.momentum = 0.9;
    so.fused = fused;
    optim::SGD sgd(named, so);
    rows["SGD momentum step" + how] = bench::median_ms(n, dev, [&] { sgd.step(); });
  }
  const std::map<std::string, double> peer = bench::run_peer(peer_script, device);
  std::printf("%-40s %10s\n", "case", "ms");
  for (const auto& [name, ms] : rows) std::printf("%-40s %10.3f\n", name.c_str(), ms);
  for (const auto& [name, ms] : peer) std::printf("%-40s %10.3f   (torch)\n", name.c_str(), ms);
  // The ratios the performance notes quote: dimx fused against torch's best path.
  for (const char* opt : {"AdamW step", "SGD momentum step"}) {
    double best = -1;
    for (const auto& [name, ms] : peer)
      if (name.rfind(opt, 0) == 0 && (best < 0 || ms < best)) best = ms;
    if (best > 0)
      std::printf("ratio %-34s %10.3f   (dimx fused / torch's fastest)\n", opt,
                  rows[std::string(opt) + " (dimx fused)"] / best);
  }
  return 0;
}

// bench_ema: MEGA's multi-head damped EMA (nn::mega::MultiHeadDampedEMA, full sequence, ReLU, no
// mask, no truncation) against the original's path in PyTorch (bench_ema_peer.py: the kernel,
// rfft/irfft of length 2L in float32) in the same run. Forward, and forward + backward (the
// gradients of x and the five parameters for a fixed upstream gradient).
//
//   bench_ema [--json] [--device cpu|cuda] [--reps N] [--peer script.py]
//
// CPU: (B, D, L) = (4, 256, 2048), H = 16, 2 threads on both sides. CUDA: (8, 1024, 4096) and
// (16, 512, 1024), H = 16, float32. Before timing, the FFT path is checked against the direct one.
#include <dimx/nn.h>
#ifdef DIMX_BENCH_CUDA
#include <dimx/gpu/runtime.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "peer.h"
#include "timer.h"

using namespace dimx;

namespace {

using bench::median_ms;

struct Shape {
  int64_t B, D, L;
};

}  // namespace

int main(int argc, char** argv) {
  bool json = false, sweep = false;
  std::string device = "cpu", peer_script = std::string(argv[0]) + "_peer.py";
  int reps = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json") json = true;
    else if (a == "--profile") bench::profiling() = true;
    else if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (a == "--peer" && i + 1 < argc) peer_script = argv[++i];
    else if (a == "--sweep") sweep = true;
    else {
      std::cerr << "usage: bench_ema [--json] [--device cpu|cuda] [--reps N] [--peer script.py] [--sweep] [--profile]\n";
      return 2;
    }
  }
  bench::print_runtime(json);
  const bool cuda = device == "cuda";
#ifndef DIMX_BENCH_CUDA
  if (cuda) {
    std::cerr << "bench_ema: built without the CUDA layer\n";
    return 1;
  }
#endif
  const Device dev = cuda ? Device::cuda(0) : Device::cpu();
  if (sweep) {
    // How the forward + backward grows with L (B = 4, D = 256, H = 16): time / (L log2 L),
    // relative to the shortest length, stays flat if the growth is no faster than L log L.
    double base = 0;
    std::printf("%8s %10s %14s\n", "L", "fwd+bwd ms", "per L log L");
    for (int64_t L : {512, 1024, 2048, 4096, 8192, 16384}) {
      Generator gen(0);
      Dim batch(4, "batch"), size(256, "size"), time(L, "time");
      nn::mega::Options o;
      o.num_heads = 16;
      nn::mega::MultiHeadDampedEMA m(size, gen, o);
      nn::to(m, dev);
      Tensor x = random_normal({time, batch, size}, gen).to(dev);
      std::vector<Tensor> wrt;
      for (auto& [name, t] : nn::named_parameters(m)) wrt.push_back(*t);
      const double ms = median_ms(reps > 0 ? reps : 5, dev, [&] {
        Tensor xg = x.with_requires_grad();
        wrt.push_back(xg);
        grad(reduce_sum(m(xg, time).first, {time, batch, size}), wrt);
        wrt.pop_back();
      });
      const double per = ms / (double(L) * std::log2(double(L)));
      if (base == 0) base = per;
      std::printf("%8lld %10.2f %14.2f\n", static_cast<long long>(L), ms, per / base);
    }
    return 0;
  }
  const std::vector<Shape> shapes = cuda ? std::vector<Shape>{{8, 1024, 4096}, {16, 512, 1024}} : std::vector<Shape>{{4, 256, 2048}};
  const int n = reps > 0 ? reps : (cuda ? 20 : 10);
  const int64_t H = 16;

  struct Row {
    std::string name;
    double ms;
    std::string peer_key;  // the peer's case it is compared with
  };
  std::vector<Row> rows;
  double worst_check = 0;
  for (const Shape& s : shapes) {
    Generator gen(0);
    Dim batch(s.B, "batch"), size(s.D, "size"), time(s.L, "time");
    nn::mega::Options o;
    o.num_heads = H;
    nn::mega::MultiHeadDampedEMA m(size, gen, o);
    nn::to(m, dev);
    Tensor x = random_normal({time, batch, size}, gen).to(dev), r = random_normal({time, batch, size}, gen).to(dev);
    {
      // The FFT path against the direct one, on the first 512 frames.
      NoGradGuard ng;
      Dim taps(512, "taps");
      auto [xs, ts] = slice(x, time, 0, 512);
      Tensor k = m.compute_ema_kernel(taps);
      auto a = causal_conv(xs, k, ts, taps, ConvMethod::direct).to_vector<double>({ts, batch, size});
      auto b = causal_conv(xs, k, ts, taps, ConvMethod::fft).to_vector<double>({ts, batch, size});
      // The module's scan (untruncated) against the convolution by its kernel.
      auto c = m(xs, ts).first.to_vector<double>({ts, batch, size});
      auto d = relu(causal_conv(xs, k, ts, taps, ConvMethod::fft) + xs * m.residual_weight).to_vector<double>({ts, batch, size});
      for (size_t i = 0; i < a.size(); ++i) worst_check = std::max(worst_check, std::abs(a[i] - b[i]));
      for (size_t i = 0; i < c.size(); ++i) worst_check = std::max(worst_check, std::abs(c[i] - d[i]) / (1 + std::abs(d[i])));
    }
    const std::string tag = "B" + std::to_string(s.B) + " D" + std::to_string(s.D) + " L" + std::to_string(s.L) + " H" +
                            std::to_string(H);
    // The module (its untruncated EMA runs as the scan), and the same layer through the
    // convolution by its kernel (FFT), the original's formulation.
    const Dim taps(s.L, "taps");
    auto by_conv = [&](const Tensor& xi) {
      return relu(causal_conv(xi, m.compute_ema_kernel(taps), time, taps) + xi * m.residual_weight);
    };
    rows.push_back({"ema fwd " + tag, median_ms(n, dev, [&] {
                      NoGradGuard ng;
                      m(x, time);
                    }), "ema fwd " + tag});
    rows.push_back({"ema conv fwd " + tag, median_ms(n, dev, [&] {
                      NoGradGuard ng;
                      by_conv(x);
                    }), "ema fwd " + tag});
    std::vector<Tensor> wrt;
    for (auto& [name, t] : nn::named_parameters(m)) wrt.push_back(*t);
    rows.push_back({"ema fwd_bwd " + tag, median_ms(n, dev, [&] {
                      Tensor xg = x.with_requires_grad();
                      wrt.push_back(xg);
                      grad(reduce_sum(m(xg, time).first * r, {time, batch, size}), wrt);
                      wrt.pop_back();
                    }), "ema fwd_bwd " + tag});
    rows.push_back({"ema conv fwd_bwd " + tag, median_ms(n, dev, [&] {
                      Tensor xg = x.with_requires_grad();
                      wrt.push_back(xg);
                      grad(reduce_sum(by_conv(xg) * r, {time, batch, size}), wrt);
                      wrt.pop_back();
                    }), "ema fwd_bwd " + tag});
  }
  const bool ok = worst_check < 1e-3;
  std::string args = "--format tsv --device " + device + " --heads 16 --reps " + std::to_string(n) + " --shapes ";
  for (size_t i = 0; i < shapes.size(); ++i)
    args += (i ? "," : "") + std::to_string(shapes[i].B) + "x" + std::to_string(shapes[i].D) + "x" + std::to_string(shapes[i].L);
  if (!cuda) args += " --threads 2";
  std::map<std::string, double> peer = bench::run_peer(peer_script, args);
  if (!json)
    std::printf("check: direct vs FFT, scan vs FFT max diff %.2e (%s)\n%-36s %10s %10s %8s\n", worst_check, ok ? "ok" : "FAILED",
                "case", "dimx ms", "torch ms", "ratio");
  for (const Row& r : rows) {
    auto it = peer.find(r.peer_key);
    double p = it == peer.end() ? -1 : it->second;
    if (json)
      std::printf("{\"bench\": \"ema\", \"device\": \"%s\", \"case\": \"%s\", \"unit\": \"ms\", \"dimx\": %.3f, \"peer\": %s, "
                  "\"peer_name\": \"torch rfft/irfft (MEGA's path)\", \"ratio\": %s, \"check_max_abs_diff\": %.3g}\n",
                  device.c_str(), r.name.c_str(), r.ms, p < 0 ? "null" : std::to_string(p).c_str(),
                  p < 0 ? "null" : std::to_string(r.ms / p).c_str(), worst_check);
    else
      std::printf("%-36s %10.3f %10.3f %8.3f\n", r.name.c_str(), r.ms, p, p > 0 ? r.ms / p : 0.0);
  }
  return ok ? 0 : 1;
}

// bench_wkv: the WKV scan (dimx::wkv) against its peers in the same run.
//
//   bench_wkv [--json] [--device cpu|cuda] [--reps N]
//
// CUDA: forward and backward on (B, T, C) = (8,1024,768), (32,1024,2048), (1,4096,768),
// (4,4096,1024), f32, against the classic kernel (one thread per channel, sequential in T,
// bench/wkv_classic.cu) on the same data; results are checked against it first. Bandwidth is
// the bytes a pass must move (forward: k, v, y; backward: k, v, y, log D, gy, gk, gv) over
// the time. CPU: the forward scan's bandwidth (k, v, y) against std::memcpy of 256 MiB.
// Times are medians, measured with the host clock after a device synchronize; dimx's times
// include its op overhead (argument checks, w = -exp(time_decay)), not just the kernels.
#include <dimx/dimx.h>
#ifdef DIMX_BENCH_CUDA
#include <dimx/gpu/runtime.h>

#include "wkv_classic.h"
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

using namespace dimx;

namespace {

double median_ms(int reps, const std::function<void()>& f, const std::function<void()>& sync) {
  for (int i = 0; i < 3; ++i) f();
  sync();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto a = std::chrono::steady_clock::now();
    f();
    sync();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  auto x = a.to_vector<double>(a.dims()), y = b.to_vector<double>(a.dims());
  double d = 0;
  for (size_t i = 0; i < x.size(); ++i) d = std::max(d, std::abs(x[i] - y[i]) / (1 + std::abs(y[i])));
  return d;
}

struct Shape3 {
  int64_t B, T, C;
};

int run_cpu(bool json, int reps) {
  Generator gen(0);
  const size_t bytes = size_t(256) << 20;
  std::vector<char> src(bytes, 1), dst(bytes);
  const double copy_ms = median_ms(reps, [&] { std::memcpy(dst.data(), src.data(), bytes); }, [] {});
  const double copy_gbps = 2.0 * double(bytes) / copy_ms / 1e6;
  int failed = 0;
  for (Shape3 s : {Shape3{8, 1024, 768}, Shape3{4, 2048, 1024}, Shape3{16, 512, 512}}) {
    Dim batch(s.B, "batch"), time(s.T, "time"), chan(s.C, "chan");
    Tensor td = random_uniform({chan}, gen, -6, 2), tf = random_uniform({chan}, gen, -1, 1);
    Tensor k = random_uniform({batch, time, chan}, gen, -3, 3), v = random_normal({batch, time, chan}, gen);
    NoGradGuard ng;
    const double ms = median_ms(reps, [&] { wkv(td, tf, k, v, time, chan); }, [] {});
    const double gbps = 12.0 * double(s.B * s.T * s.C) / ms / 1e6, frac = gbps / copy_gbps;
    const bool met = frac >= 0.5;
    failed += !met;
    char name[64];
    std::snprintf(name, sizeof name, "wkv forward B%lld T%lld C%lld", (long long)s.B, (long long)s.T, (long long)s.C);
    if (json)
      std::printf("{\"bench\": \"wkv\", \"device\": \"cpu\", \"case\": \"%s\", \"unit\": \"ms\", \"dimx\": %.3f, "
                  "\"gbps\": %.2f, \"peer_name\": \"memcpy\", \"peer_gbps\": %.2f, \"bw_fraction\": %.3f, "
                  "\"target\": \">= 0.5 of memcpy bandwidth\", \"target_met\": %s}\n",
                  name, ms, gbps, copy_gbps, frac, met ? "true" : "false");
    else
      std::printf("%-34s %9.3f ms %8.2f GB/s  memcpy %8.2f GB/s  fraction %.2f %s\n", name, ms, gbps, copy_gbps, frac,
                  met ? "(target met)" : "(target missed)");
  }
  return 0;
}

#ifdef DIMX_BENCH_CUDA
int run_cuda(bool json, int reps) {
  if (gpu::device_count() == 0) {
    std::cerr << "bench_wkv: no CUDA device\n";
    return 1;
  }
  const Device dev = Device::cuda(0);
  auto sync = [] {
    gpu::synchronize(0);
    bench::classic_sync();
  };
  Generator gen(0);
  bool ok = true;
  for (Shape3 s : {Shape3{8, 1024, 768}, Shape3{32, 1024, 2048}, Shape3{1, 4096, 768}, Shape3{4, 4096, 1024}}) {
    Dim batch(s.B, "batch"), time(s.T, "time"), chan(s.C, "chan");
    Tensor td = random_uniform({chan}, gen, -6, 2, DType::f32, dev), tf = random_uniform({chan}, gen, -1, 1, DType::f32, dev);
    Tensor k = random_uniform({batch, time, chan}, gen, -3, 3, DType::f32, dev);
    Tensor v = random_normal({batch, time, chan}, gen, 0, 1, DType::f32, dev);
    Tensor gy = random_normal({batch, time, chan}, gen, 0, 1, DType::f32, dev);
    Tensor w = neg(exp(td)).contiguous();
    auto f = [](const Tensor& t) { return static_cast<float*>(const_cast<void*>(t.data_ptr())); };
    Tensor y_ref = Tensor::zeros({batch, time, chan}, DType::f32).to(dev), ld = y_ref.astype(DType::f32) + 0.0;
    Tensor gk = y_ref + 0.0, gv = y_ref + 0.0, gw = Tensor::zeros({batch, chan}).to(dev), gu = gw + 0.0;
    sync();
    const int B = int(s.B), T = int(s.T), C = int(s.C);
    bench::classic_wkv_forward(B, T, C, f(w), f(tf), f(k), f(v), f(y_ref), f(ld));
    sync();
    // Check before timing: forward and backward against the classic kernels.
    Tensor kg = k.with_requires_grad(), vg = v.with_requires_grad(), tdg = td.with_requires_grad(), tfg = tf.with_requires_grad();
    WkvOutput o = wkv(tdg, tfg, kg, vg, time, chan);
    std::vector<Tensor> g = grad(o.y, {tdg, tfg, kg, vg}, gy);
    bench::classic_wkv_backward(B, T, C, f(w), f(tf), f(k), f(v), f(y_ref), f(ld), f(gy), f(gk), f(gv), f(gw), f(gu));
    sync();
    const double err = std::max({max_abs_diff(o.y.detach(), y_ref), max_abs_diff(g[2], gk), max_abs_diff(g[3], gv),
                                 max_abs_diff(g[1], reduce_sum(gu, {batch}))});
    ok = ok && err < 1e-3;

    double fwd, peer_fwd, bwd, peer_bwd;
    {
      NoGradGuard ng;
      fwd = median_ms(reps, [&] { wkv(td, tf, k, v, time, chan); }, sync);
    }
    peer_fwd = median_ms(reps, [&] { bench::classic_wkv_forward(B, T, C, f(w), f(tf), f(k), f(v), f(y_ref), nullptr); }, sync);
    bwd = median_ms(reps, [&] { grad(o.y, {tdg, tfg, kg, vg}, gy); }, sync);
    peer_bwd = median_ms(reps, [&] {
      bench::classic_wkv_backward(B, T, C, f(w), f(tf), f(k), f(v), f(y_ref), f(ld), f(gy), f(gk), f(gv), f(gw), f(gu));
    }, sync);
    const double n = double(s.B * s.T * s.C);
    const double fwd_tbps = 12 * n / fwd / 1e9, bwd_tbps = 28 * n / bwd / 1e9;
    char name[64];
    std::snprintf(name, sizeof name, "B%d T%d C%d", B, T, C);
    if (json) {
      std::printf("{\"bench\": \"wkv\", \"device\": \"cuda\", \"case\": \"wkv forward %s\", \"unit\": \"ms\", \"dimx\": %.4f, "
                  "\"peer\": %.4f, \"peer_name\": \"classic kernel\", \"speedup\": %.2f, \"tbps\": %.3f, "
                  "\"bw_fraction_of_2.9TBps\": %.3f, \"check_max_rel_diff\": %.2g}\n",
                  name, fwd, peer_fwd, peer_fwd / fwd, fwd_tbps, fwd_tbps / 2.9, err);
      std::printf("{\"bench\": \"wkv\", \"device\": \"cuda\", \"case\": \"wkv backward %s\", \"unit\": \"ms\", \"dimx\": %.4f, "
                  "\"peer\": %.4f, \"peer_name\": \"classic kernel\", \"speedup\": %.2f, \"tbps\": %.3f, "
                  "\"backward_over_forward\": %.2f}\n",
                  name, bwd, peer_bwd, peer_bwd / bwd, bwd_tbps, bwd / fwd);
    } else {
      std::printf("%-18s forward  dimx %8.4f ms  classic %8.4f ms  speedup %6.2fx  %5.2f TB/s (%.0f%% of 2.9)  check %.1e\n",
                  name, fwd, peer_fwd, peer_fwd / fwd, fwd_tbps, 100 * fwd_tbps / 2.9, err);
      std::printf("%-18s backward dimx %8.4f ms  classic %8.4f ms  speedup %6.2fx  %5.2f TB/s  backward/forward %.2f\n",
                  name, bwd, peer_bwd, peer_bwd / bwd, bwd_tbps, bwd / fwd);
    }
  }
  if (!ok) std::fprintf(stderr, "bench_wkv: results differ from the classic kernel\n");
  return ok ? 0 : 1;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  bool json = false;
  std::string device = "cpu";
  int reps = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json") json = true;
    else if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else {
      std::cerr << "usage: bench_wkv [--json] [--device cpu|cuda] [--reps N]\n";
      return 2;
    }
  }
  if (device == "cpu") return run_cpu(json, reps > 0 ? reps : 10);
#ifdef DIMX_BENCH_CUDA
  if (device == "cuda") return run_cuda(json, reps > 0 ? reps : 50);
#endif
  std::cerr << "bench_wkv: device '" << device << "' is not available in this build\n";
  return 1;
}

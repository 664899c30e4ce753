// WKV scan benchmark. GPU (cuda:0): dimx::wkv forward and backward against the classic
// one-thread-per-channel kernels (bench/wkv_classic.cu), same run, same inputs, results
// checked against each other before timing. CPU (--cpu, or without a device): the scan's
// streaming rate against memcpy in the same run. One JSON object per case with --json.
//
//   bench_wkv [--json] [--cpu] [--reps N] [--sweep] [--diag]
//
// --sweep also times the GPU kernels at fixed chunk lengths (DIMX_WKV_CHUNK) for tuning;
// --diag adds per-call latencies and the host-side issue time per call.
// GPU rows: the public op as a user calls it ("gpu forward"), the same scan through the raw
// launchers ("kernels only", no host-side work), and the classic kernels (built with
// --use_fast_math, as RWKV-4 builds them). Timing: median over samples of back-to-back calls,
// each sample ending with a device-wide synchronize.
#include <dimx/dimx.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#ifdef DIMX_BENCH_CUDA
#include <dimx/gpu/runtime.h>

#include "launch.h"
#include "wkv_classic.h"
#include "timer.h"
#endif

using namespace dimx;

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  bool json = false, cpu = false, sweep = false, diag = false;
  int reps = 0;
};

// Median over `reps` samples of the time per call; each sample runs `inner` calls back to
// back and then waits for the device (`sync`), so launch and wait latency are amortized.
double median_ms(int reps, int inner, const std::function<void()>& f, const std::function<void()>& sync) {
  for (int i = 0; i < 2; ++i) f();
  sync();
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    auto a = Clock::now();
    for (int i = 0; i < inner; ++i) f();
    sync();
    t.push_back(std::chrono::duration<double, std::milli>(Clock::now() - a).count() / inner);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Calls per sample so that a sample takes about `ms` milliseconds.
int inner_for(double one_call_ms, double ms = 3) { return std::max(1, int(ms / std::max(one_call_ms, 1e-3))); }

double rel_max_err(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0, scale = 1e-30;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    err = std::max(err, double(std::fabs(got[i] - want[i])));
    scale = std::max(scale, double(std::fabs(want[i])));
  }
  return err / scale;
}

struct Row {
  std::string name;
  double ms = 0, peer_ms = -1;
  std::string peer_name;
  double bytes = 0;     // the floor: each input read once, each output written once
  double ref_gbps = 0;  // the device's copy rate measured in the same run
  double check = 0;
  std::string extra;    // more JSON fields
};

void print(const Options& o, const Row& r) {
  const double gbps = r.bytes / r.ms / 1e6;
  if (o.json) {
    std::ostringstream s;
    s << "{\"bench\": \"wkv\", \"case\": \"" << r.name << "\", \"unit\": \"ms\", \"dimx\": " << r.ms << ", \"peer\": ";
    if (r.peer_ms > 0) s << r.peer_ms; else s << "null";
    s << ", \"peer_name\": \"" << r.peer_name << "\"";
    if (r.peer_ms > 0) s << ", \"speedup\": " << r.peer_ms / r.ms;
    s << ", \"gbps\": " << gbps;
    if (r.ref_gbps > 0) s << ", \"copy_gbps\": " << r.ref_gbps << ", \"bw_fraction\": " << gbps / r.ref_gbps;
    s << ", \"check_rel_err\": " << r.check << r.extra << "}";
    std::cout << s.str() << std::endl;
  } else {
    std::printf("%-52s %9.4f ms", r.name.c_str(), r.ms);
    if (r.peer_ms > 0) std::printf("  peer %9.4f ms  speedup %6.2f", r.peer_ms, r.peer_ms / r.ms);
    std::printf("  %8.1f GB/s", gbps);
    if (r.ref_gbps > 0) std::printf("  (%.0f%% of copy)", 100 * gbps / r.ref_gbps);
    std::printf("  err %.1e%s\n", r.check, r.ref_gbps > 0 && r.peer_ms <= 0 ? "  (copy: memcpy in the same run)" : "");
  }
}

struct Inputs {
  Dim batch, time, ch;
  Tensor td, tf, k, v, gy;
};

Inputs make_inputs(int64_t B, int64_t T, int64_t C, Device dev, uint64_t salt = 0) {
  Generator gen(uint64_t(B * 1000003 + T * 1009 + C) + 7919 * salt);
  Inputs in{Dim(B, "batch"), Dim(T, "time"), Dim(C, "channel"), {}, {}, {}, {}, {}};
  in.td = random_uniform({in.ch}, gen, -6, 1, DType::f32, dev);
  in.tf = random_uniform({in.ch}, gen, -1, 1, DType::f32, dev);
  in.k = random_uniform({in.batch, in.time, in.ch}, gen, -3, 3, DType::f32, dev);
  in.v = random_normal({in.batch, in.time, in.ch}, gen, 0, 1, DType::f32, dev);
  in.gy = random_normal({in.batch, in.time, in.ch}, gen, 0, 1, DType::f32, dev);
  return in;
}

std::string shape_name(int64_t B, int64_t T, int64_t C) {
  return "(" + std::to_string(B) + "," + std::to_string(T) + "," + std::to_string(C) + ")";
}

// ---------------------------------------------------------------- CPU

double memcpy_gbps(int reps) {
  const size_t n = size_t(64) << 20;
  std::vector<char> a(n, 1), b(n, 2);
  double ms = median_ms(reps, 1, [&] { std::memcpy(b.data(), a.data(), n); }, [] {});
  return 2.0 * double(n) / ms / 1e6;
}

void run_cpu(const Options& o) {
  const int reps = o.reps ? o.reps : 15;
  const double copy = memcpy_gbps(reps);
  for (auto [B, T, C] : std::vector<std::array<int64_t, 3>>{{8, 1024, 768}, {4, 2048, 1024}, {1, 4096, 4096}, {1, 4096, 768}}) {
    Inputs in = make_inputs(B, T, C, Device::cpu());
    const double n = double(B * T * C);
    // Check the first channels against a scalar loop of the recurrence in double.
    WkvResult r;
    {
      NoGradGuard ng;
      r = wkv(in.td, in.tf, in.k, in.v, in.time, in.ch);
    }
    auto y = r.y.to_vector<float>(), k = in.k.to_vector<float>(), v = in.v.to_vector<float>();
    auto td = in.td.to_vector<float>(), tf = in.tf.to_vector<float>();
    double err = 0;
    for (int64_t c = 0; c < std::min<int64_t>(C, 8); ++c) {
      double aa = 0, bb = 0, pp = -1e38, w = -std::exp(double(td[size_t(c)])), u = tf[size_t(c)];
      for (int64_t t = 0; t < T; ++t) {
        const size_t i = size_t(t * C + c);
        double kk = k[i], vv = v[i], p = std::max(pp, u + kk), e1 = std::exp(pp - p), e2 = std::exp(u + kk - p);
        err = std::max(err, std::fabs((e1 * aa + e2 * vv) / (e1 * bb + e2) - y[i]));
        p = std::max(w + pp, kk);
        e1 = std::exp(w + pp - p);
        e2 = std::exp(kk - p);
        aa = e1 * aa + e2 * vv;
        bb = e1 * bb + e2;
        pp = p;
      }
    }
    auto noop = [] {};
    Row f;
    f.name = "cpu forward " + shape_name(B, T, C);
    f.ms = median_ms(reps, 1, [&] { NoGradGuard ng; wkv(in.td, in.tf, in.k, in.v, in.time, in.ch); }, noop);
    f.peer_name = "memcpy";
    f.bytes = 3 * 4 * n;
    f.ref_gbps = copy;
    f.check = err;
    f.extra = ", \"target_bw_fraction\": 0.5, \"target_met\": " +
              std::string(f.bytes / f.ms / 1e6 >= 0.5 * copy ? "true" : "false");
    print(o, f);
    Tensor k_ = in.k.with_requires_grad(), v_ = in.v.with_requires_grad();
    WkvResult rg = wkv(in.td, in.tf, k_, v_, in.time, in.ch);
    Row b;
    b.name = "cpu backward " + shape_name(B, T, C);
    b.ms = median_ms(reps, 1, [&] { grad(rg.y, {k_, v_}, in.gy); }, noop);
    b.peer_name = "memcpy";
    b.bytes = 5 * 4 * n;  // reads k, v, gy; writes gk, gv
    b.ref_gbps = copy;
    b.extra = ", \"backward_over_forward\": " + std::to_string(b.ms / f.ms);
    print(o, b);
  }
}

// ---------------------------------------------------------------- GPU

#ifdef DIMX_BENCH_CUDA

const float* fptr(const Tensor& t) { return static_cast<const float*>(t.impl_ptr() ? t.data_ptr() : nullptr); }
float* mptr(const Tensor& t) { return const_cast<float*>(fptr(t)); }

void check_classic(const char* what) {
  std::string e = wkv_classic::sync();
  if (!e.empty()) {
    std::cerr << "bench_wkv: classic " << what << " failed: " << e << "\n";
    std::exit(1);
  }
}

// One input set with every buffer the timed calls need.
struct Set {
  Inputs in;
  Tensor w, y_c, gw, gu, gk, gv, y_raw, ld_raw;  // classic outputs; raw launcher outputs
  Tensor td, tf, k, v;                            // leaves of the recorded forward
  WkvResult r;
  gpu::WkvLaunch la;
};

Set make_set(int64_t B, int64_t T, int64_t C, Device dev, uint64_t salt) {
  Set s{make_inputs(B, T, C, dev, salt), {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  const Inputs& in = s.in;
  s.w = neg(exp(in.td));
  auto zeros = [&](Dims d) { return Tensor::zeros(std::move(d)).to(dev); };
  s.y_c = zeros({in.batch, in.time, in.ch});
  s.gk = zeros({in.batch, in.time, in.ch});
  s.gv = zeros({in.batch, in.time, in.ch});
  s.y_raw = zeros({in.batch, in.time, in.ch});
  s.ld_raw = zeros({in.batch, in.time, in.ch});
  s.gw = zeros({in.batch, in.ch});
  s.gu = zeros({in.batch, in.ch});
  s.td = in.td.with_requires_grad();
  s.tf = in.tf.with_requires_grad();
  s.k = in.k.with_requires_grad();
  s.v = in.v.with_requires_grad();
  s.r = wkv(s.td, s.tf, s.k, s.v, in.time, in.ch);
  s.la = gpu::WkvLaunch{B, T, C, fptr(in.td), fptr(in.tf), fptr(in.k), fptr(in.v), nullptr, {nullptr, nullptr, nullptr}};
  return s;
}

// Device-to-device copy rate (bytes read + written), the bandwidth reference.
double copy_gbps(int reps) {
  const size_t bytes = size_t(1) << 30;
  void* a = wkv_classic::device_alloc(bytes);
  void* b = wkv_classic::device_alloc(bytes);
  double ms = median_ms(reps, 5, [&] { wkv_classic::copy(b, a, bytes); }, [] { check_classic("copy"); });
  wkv_classic::device_free(a);
  wkv_classic::device_free(b);
  return 2.0 * double(bytes) / ms / 1e6;
}

void run_gpu(const Options& o) {
  const int reps = o.reps ? o.reps : 30;
  const Device dev = Device::cuda(0);
  // Every sample waits for the whole device (dimx's stream and the default stream alike).
  auto sync = [] {
    gpu::synchronize();
    check_classic("run");
  };
  const double copy = copy_gbps(reps);
  if (o.json)
    std::cout << "{\"bench\": \"wkv\", \"case\": \"device-to-device copy 1 GiB\", \"device\": \"" << gpu::device_name(0)
              << "\", \"gbps\": " << copy << "}" << std::endl;
  else
    std::printf("device %s; device-to-device copy 1 GiB (read + written): %.0f GB/s\n", gpu::device_name(0).c_str(), copy);
  for (auto [B, T, C] : std::vector<std::array<int64_t, 3>>{{8, 1024, 768}, {32, 1024, 2048}, {1, 4096, 768}, {4, 4096, 1024}}) {
    const double n = double(B * T * C);
    const std::string shape = shape_name(B, T, C);
    // Rotate over enough input sets that each call starts with cold caches (k, v and y of all
    // sets together are at least 4x the 50 MB L2), for dimx and the classic kernels alike.
    const int nsets = int(std::clamp(std::ceil(200e6 / (3 * 4 * n)), 1.0, 8.0));
    std::vector<Set> sets;
    for (int i = 0; i < nsets; ++i) sets.push_back(make_set(B, T, C, dev, uint64_t(i)));
    int cur = 0;
    auto next = [&]() -> Set& { cur = (cur + 1) % nsets; return sets[size_t(cur)]; };
    gpu::synchronize();
    auto classic_fwd = [&] {
      Set& st = next();
      wkv_classic::forward(int(B), int(T), int(C), fptr(st.w), fptr(st.in.tf), fptr(st.in.k), fptr(st.in.v), mptr(st.y_c));
    };
    auto classic_bwd = [&] {
      Set& st = next();
      wkv_classic::backward(int(B), int(T), int(C), fptr(st.w), fptr(st.in.tf), fptr(st.in.k), fptr(st.in.v),
                            fptr(st.y_c), fptr(st.in.gy), mptr(st.gw), mptr(st.gu), mptr(st.gk), mptr(st.gv));
    };
    for (int i = 0; i < nsets; ++i) classic_fwd();
    check_classic("forward");
    for (int i = 0; i < nsets; ++i) classic_bwd();
    check_classic("backward");

    // Results first: dimx against the classic kernels on the same inputs.
    Set& s0 = sets[0];
    const Inputs& in = s0.in;
    std::vector<Tensor> g = grad(s0.r.y, {s0.td, s0.tf, s0.k, s0.v}, in.gy);
    const Dims order{in.batch, in.time, in.ch};
    double err_y = rel_max_err(s0.r.y.to_vector<float>(order), s0.y_c.to_vector<float>(order));
    double err_g = std::max({rel_max_err(g[2].to_vector<float>(order), s0.gk.to_vector<float>(order)),
                             rel_max_err(g[3].to_vector<float>(order), s0.gv.to_vector<float>(order)),
                             rel_max_err(g[0].to_vector<float>(), reduce_sum(s0.gw, {in.batch}).to_vector<float>()),
                             rel_max_err(g[1].to_vector<float>(), reduce_sum(s0.gu, {in.batch}).to_vector<float>())});

    auto dimx_fwd = [&] {
      Set& st = next();
      NoGradGuard ng;
      wkv(st.in.td, st.in.tf, st.in.k, st.in.v, st.in.time, st.in.ch);
    };
    auto dimx_fwd_grad = [&] {
      Set& st = next();
      wkv(st.td, st.tf, st.k, st.v, st.in.time, st.in.ch);
    };
    auto dimx_bwd = [&] {
      Set& st = next();
      grad(st.r.y, {st.td, st.tf, st.k, st.v}, st.in.gy);
    };
    // The same scans through the raw launchers on the default stream, as the classic kernels
    // run: the GPU time without the op's host-side work (checks, allocations, autograd).
    auto raw_fwd = [&] {
      Set& st = next();
      gpu::launch_wkv_forward(st.la, mptr(st.y_raw), nullptr, nullptr, nullptr);
    };
    auto raw_bwd = [&] {
      Set& st = next();
      gpu::launch_wkv_backward(st.la, fptr(st.y_raw), fptr(st.ld_raw), fptr(st.in.gy), mptr(st.gk), mptr(st.gv),
                               mptr(st.gw), mptr(st.gu), nullptr);
    };
    for (Set& st : sets) gpu::launch_wkv_forward(st.la, mptr(st.y_raw), mptr(st.ld_raw), nullptr, nullptr);
    check_classic("raw forward");
    auto time_one = [&](const std::function<void()>& f) {
      return median_ms(reps, inner_for(median_ms(3, 1, f, sync)), f, sync);
    };
    Row f, fk, fg, bw, bk;
    f.ms = time_one(dimx_fwd);
    f.peer_ms = time_one(classic_fwd);
    fk.ms = time_one(raw_fwd);
    fg.ms = time_one(dimx_fwd_grad);
    bw.ms = time_one(dimx_bwd);
    bw.peer_ms = time_one(classic_bwd);
    bk.ms = time_one(raw_bwd);
    const double target = B * C >= 65536 ? 1.0 : (T >= 4096 ? 5.0 : 0.0);
    const std::string sets_field = ", \"input_sets\": " + std::to_string(nsets);
    f.name = "gpu forward " + shape;
    f.peer_name = "classic kernel";
    f.bytes = 3 * 4 * n;
    f.ref_gbps = copy;
    f.check = err_y;
    f.extra = sets_field;
    if (target > 0)
      f.extra += ", \"target_speedup\": " + std::to_string(target) + ", \"target_met\": " +
                 (f.peer_ms / f.ms >= target ? "true" : "false");
    fk = Row{"gpu forward kernels only " + shape, fk.ms, f.peer_ms, "classic kernel", f.bytes, copy, err_y, sets_field};
    fg.name = "gpu forward saving log_den for backward " + shape;
    fg.bytes = 4 * 4 * n;
    fg.ref_gbps = copy;
    fg.check = err_y;
    fg.extra = sets_field;
    bw.name = "gpu backward " + shape;
    bw.peer_name = "classic kernel";
    bw.bytes = 5 * 4 * n;  // reads k, v, gy; writes gk, gv
    bw.ref_gbps = copy;
    bw.check = err_g;
    bw.extra = sets_field + ", \"backward_over_forward\": " + std::to_string(bw.ms / f.ms) +
               ", \"target_backward_over_forward\": 3, \"target_met\": " + (bw.ms <= 3 * f.ms ? "true" : "false");
    bk = Row{"gpu backward kernels only " + shape, bk.ms, bw.peer_ms, "classic kernel", bw.bytes, copy, err_g,
             sets_field + ", \"backward_over_forward\": " + std::to_string(bk.ms / fk.ms)};
    for (const Row* row : {&f, &fk, &fg, &bw, &bk}) print(o, *row);
    if (o.diag) {
      // Host-side cost per call: issuing 50 calls without waiting (the GPU runs behind).
      auto issue_ms = [&](const std::function<void()>& fn) {
        sync();
        auto a = Clock::now();
        for (int i = 0; i < 50; ++i) fn();
        double ms = std::chrono::duration<double, std::milli>(Clock::now() - a).count() / 50;
        sync();
        return ms;
      };
      std::cout << "{\"bench\": \"wkv_diag\", \"shape\": \"" << shape << "\", \"sets\": " << nsets
                << ", \"latency_ms\": {\"op_fwd\": " << median_ms(15, 1, dimx_fwd, sync)
                << ", \"kernels_fwd\": " << median_ms(15, 1, raw_fwd, sync)
                << ", \"classic_fwd\": " << median_ms(15, 1, classic_fwd, sync)
                << ", \"op_bwd\": " << median_ms(15, 1, dimx_bwd, sync) << ", \"kernels_bwd\": " << median_ms(15, 1, raw_bwd, sync)
                << "}, \"issue_ms\": {\"op_fwd\": " << issue_ms(dimx_fwd) << ", \"kernels_fwd\": " << issue_ms(raw_fwd)
                << ", \"op_bwd\": " << issue_ms(dimx_bwd) << "}}" << std::endl;
    }
    if (o.sweep) {
      for (int64_t L : {16, 32, 64, 128, 256, 512, 1024, 4096}) {
        if (L > T) continue;
        setenv("DIMX_WKV_CHUNK", std::to_string(L).c_str(), 1);
        double tf = median_ms(reps / 2 + 1, inner_for(fk.ms), raw_fwd, sync);
        double tb = median_ms(reps / 2 + 1, inner_for(bk.ms), raw_bwd, sync);
        unsetenv("DIMX_WKV_CHUNK");
        if (o.json)
          std::cout << "{\"bench\": \"wkv_sweep\", \"shape\": \"" << shape << "\", \"chunk\": " << L
                    << ", \"forward_kernels_ms\": " << tf << ", \"backward_kernels_ms\": " << tb << "}" << std::endl;
        else
          std::printf("  sweep %s chunk %5lld: forward %.4f ms, backward %.4f ms\n", shape.c_str(), (long long)L, tf, tb);
      }
    }
  }
}
#endif

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json") o.json = true;
    else if (a == "--cpu") o.cpu = true;
    else if (a == "--sweep") o.sweep = true;
    else if (a == "--diag") o.diag = true;
    else if (a == "--reps" && i + 1 < argc) o.reps = std::atoi(argv[++i]);
    else {
      std::cerr << "usage: bench_wkv [--json] [--cpu] [--reps N] [--sweep] [--diag]\n";
      return 2;
    }
  }
  bench::print_runtime(o.json);
#ifdef DIMX_BENCH_CUDA
  if (!o.cpu && gpu::device_count() > 0) {
    run_gpu(o);
    return 0;
  }
#endif
  run_cpu(o);
  return 0;
}

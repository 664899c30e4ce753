// bench_core: dimx core ops on the CPU against a peer measured in the same run.
//
//   bench_core [--json] [--reps N] [--filter SUBSTR]
//
// Cases: matmul (vs raw cblas_sgemm on the same data), attention-shaped batched contractions
// (vs a loop of cblas_sgemm calls), elementwise add / exp and softmax (vs std::memcpy of the
// same bytes into a preallocated buffer). Inputs are random, non-zero, from a seeded RNG.
// Every case checks dimx's result against a reference before timing, warms up, then times
// dimx and the peer interleaved (so load changes hit both alike) and reports the medians.
#include <cblas.h>
#include <dimx/dimx.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "timer.h"

extern "C" {
// OpenBLAS extensions (declared in OpenBLAS's cblas.h; repeated here in case another cblas.h is found).
int openblas_get_num_threads(void);
char* openblas_get_config(void);
}

using namespace dimx;

namespace {

// ------------------------------------------------------------------------------------------
// Options and output

struct Options {
  bool json = false;
  int reps = 0;  // 0: automatic (about 1 s per case)
  std::string filter;
};

Options g_opt;
int g_failed_checks = 0;

struct Result {
  std::string name;
  std::string peer_name;
  double dimx_ms = 0, peer_ms = 0;
  int reps = 0;
  // Work per call: flops (GEMM cases) or bytes moved (memory-bound cases), for each side.
  double dimx_flops = 0, peer_flops = 0;
  double dimx_bytes = 0, peer_bytes = 0;
  double max_abs_diff = 0, tol = 0;
  bool check_ok = true;
  std::string target;            // human-readable target, empty if informational
  std::optional<bool> target_met;
  double target_value = 0;       // the figure the target is judged on (ratio or bandwidth fraction)
};

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

void print_json(const Result& r) {
  std::string s = "{\"bench\": \"core\", \"case\": \"" + r.name + "\", \"unit\": \"ms\"";
  s += ", \"dimx\": " + fmt("%.4f", r.dimx_ms);
  s += ", \"peer\": " + fmt("%.4f", r.peer_ms);
  s += ", \"peer_name\": \"" + r.peer_name + "\"";
  s += ", \"ratio\": " + fmt("%.4f", r.dimx_ms / r.peer_ms);
  if (r.dimx_flops > 0) {
    s += ", \"gflops\": " + fmt("%.2f", r.dimx_flops / (r.dimx_ms * 1e6));
    s += ", \"peer_gflops\": " + fmt("%.2f", r.peer_flops / (r.peer_ms * 1e6));
  }
  if (r.dimx_bytes > 0) {
    double g = r.dimx_bytes / (r.dimx_ms * 1e6), pg = r.peer_bytes / (r.peer_ms * 1e6);
    s += ", \"gbps\": " + fmt("%.2f", g);
    s += ", \"peer_gbps\": " + fmt("%.2f", pg);
    s += ", \"bw_fraction\": " + fmt("%.4f", g / pg);
  }
  s += ", \"reps\": " + std::to_string(r.reps);
  s += ", \"blas_threads\": " + std::to_string(openblas_get_num_threads());
  s += ", \"check_max_abs_diff\": " + fmt("%.3g", r.max_abs_diff);
  s += std::string(", \"check\": \"") + (r.check_ok ? "ok" : "FAIL") + "\"";
  if (!r.target.empty()) {
    s += ", \"target\": \"" + r.target + "\"";
    s += std::string(", \"target_met\": ") + (*r.target_met ? "true" : "false");
  }
  s += "}";
  std::printf("%s\n", s.c_str());
  std::fflush(stdout);
}

void print_table_header() {
  std::printf("%-40s %10s %10s %7s %12s %12s  %-22s %s\n", "case", "dimx ms", "peer ms", "ratio", "dimx rate",
              "peer rate", "peer", "target");
}

void print_row(const Result& r) {
  std::string rate, prate;
  if (r.dimx_flops > 0) {
    rate = fmt("%.1f GFLOP/s", r.dimx_flops / (r.dimx_ms * 1e6));
    prate = fmt("%.1f GFLOP/s", r.peer_flops / (r.peer_ms * 1e6));
  } else {
    rate = fmt("%.1f GB/s", r.dimx_bytes / (r.dimx_ms * 1e6));
    prate = fmt("%.1f GB/s", r.peer_bytes / (r.peer_ms * 1e6));
  }
  std::string tgt = r.target.empty() ? "(info)" : r.target + (*r.target_met ? "  met" : "  MISSED");
  std::printf("%-40s %10.3f %10.3f %7.3f %12s %12s  %-22s %s\n", r.name.c_str(), r.dimx_ms, r.peer_ms,
              r.dimx_ms / r.peer_ms, rate.c_str(), prate.c_str(), r.peer_name.c_str(), tgt.c_str());
  std::fflush(stdout);
}

void report_check(const std::string& name, double diff, double tol, const std::string& what) {
  bool ok = diff <= tol;
  if (!ok) ++g_failed_checks;
  // The check goes to stderr in --json mode so stdout stays one JSON object per line.
  std::FILE* f = g_opt.json ? stderr : stdout;
  std::fprintf(f, "check %-40s max abs diff %.3g vs %s (tol %.1g): %s\n", name.c_str(), diff, what.c_str(), tol,
               ok ? "ok" : "FAIL");
  std::fflush(f);
}

// ------------------------------------------------------------------------------------------
// Timing

using Clock = std::chrono::steady_clock;

double time_ms(const std::function<void()>& f) {
  auto t0 = Clock::now();
  f();
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Warm-up, then reps interleaved (alternating which side goes first); medians in ms.
void time_pair(const std::function<void()>& dimx_fn, const std::function<void()>& peer_fn, Result& r) {
  double wd = 0, wp = 0;
  for (int i = 0; i < 2; ++i) {
    wd = time_ms(dimx_fn);
    wp = time_ms(peer_fn);
  }
  int reps = g_opt.reps;
  if (reps <= 0) reps = std::clamp(int(std::ceil(1000.0 / std::max(1e-3, wd + wp))), 7, 2000);
  std::vector<double> td, tp;
  td.reserve(size_t(reps));
  tp.reserve(size_t(reps));
  for (int i = 0; i < reps; ++i) {
    if (i % 2 == 0) {
      td.push_back(time_ms(dimx_fn));
      tp.push_back(time_ms(peer_fn));
    } else {
      tp.push_back(time_ms(peer_fn));
      td.push_back(time_ms(dimx_fn));
    }
  }
  r.reps = reps;
  r.dimx_ms = median(td);
  r.peer_ms = median(tp);
}

void finish(Result& r) {
  if (!r.target.empty()) {
    // Targets: "time ratio <= X" (dimx / peer time) or "bandwidth >= P% ..." (of the peer's GB/s).
    if (r.target.rfind("time ratio <= ", 0) == 0) {
      double lim = std::atof(r.target.c_str() + 14);
      r.target_value = r.dimx_ms / r.peer_ms;
      r.target_met = r.target_value <= lim;
    } else if (r.target.rfind("bandwidth >= ", 0) == 0) {
      double lim = std::atof(r.target.c_str() + 13) / 100.0;
      r.target_value = (r.dimx_bytes / r.dimx_ms) / (r.peer_bytes / r.peer_ms);
      r.target_met = r.target_value >= lim;
    }
  }
  if (g_opt.json) print_json(r);
  else print_row(r);
}

bool selected(const std::string& name) { return g_opt.filter.empty() || name.find(g_opt.filter) != std::string::npos; }

// ------------------------------------------------------------------------------------------
// Data

std::vector<float> random_floats(size_t n, uint64_t seed, float lo, float hi) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) {
    do x = u(g);
    while (x == 0.0f);
  }
  return v;
}

// A 64-byte aligned float buffer (for the peers' inputs and outputs).
struct Buf {
  float* p = nullptr;
  size_t n = 0;
  explicit Buf(size_t n_) : n(n_) {
    p = static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64));
    std::memset(p, 0, n * sizeof(float));  // touch every page before timing
  }
  Buf(const std::vector<float>& v) : Buf(v.size()) { std::memcpy(p, v.data(), n * sizeof(float)); }
  ~Buf() { std::free(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

double max_abs_diff(const float* a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) {
    double d = std::fabs(double(a[i]) - double(b[i]));
    if (!(d <= m)) m = d;  // NaN propagates as a failure
  }
  return m;
}

volatile float g_sink;
void sink(const Tensor& t) { g_sink = *static_cast<const float*>(t.data_ptr()); }

// ------------------------------------------------------------------------------------------
// Cases

void bench_matmul(int64_t n) {
  std::string name = "matmul " + std::to_string(n) + "^3";
  if (!selected(name)) return;
  Dim M(n, "m"), K(n, "k"), N(n, "n");
  auto av = random_floats(size_t(n * n), 1, -1, 1), bv = random_floats(size_t(n * n), 2, -1, 1);
  Tensor a = Tensor::from_vector<float>({M, K}, av), b = Tensor::from_vector<float>({K, N}, bv);
  Buf pa(av), pb(bv), pc(size_t(n * n));
  auto peer = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(n), blasint(n), blasint(n), 1.0f, pa.p,
                blasint(n), pb.p, blasint(n), 0.0f, pc.p, blasint(n));
  };
  peer();
  auto y = matmul(a, b, K).to_vector<float>({M, N});
  Result r;
  r.name = name;
  r.peer_name = "cblas_sgemm";
  r.max_abs_diff = max_abs_diff(y.data(), pc.p, y.size());
  r.tol = 1e-3;
  report_check(name, r.max_abs_diff, r.tol, "cblas_sgemm");
  r.check_ok = r.max_abs_diff <= r.tol;
  time_pair([&] { sink(matmul(a, b, K)); }, peer, r);
  r.dimx_flops = r.peer_flops = 2.0 * double(n) * double(n) * double(n);
  r.target = "time ratio <= 1.10";
  finish(r);
}

// q{batch, time, feat} . k{batch, key, feat} over feat -> {batch, time, key}
void bench_attention_scores() {
  const int64_t B = 64, T = 512, F = 64;
  std::string name = "attn qk: 64x(512x64 @ 64x512)";
  if (!selected(name)) return;
  Dim batch(B, "batch"), time(T, "time"), key(T, "key"), feat(F, "feat");
  auto qv = random_floats(size_t(B * T * F), 3, -1, 1), kv = random_floats(size_t(B * T * F), 4, -1, 1);
  Tensor q = Tensor::from_vector<float>({batch, time, feat}, qv), k = Tensor::from_vector<float>({batch, key, feat}, kv);
  Buf pq(qv), pk(kv), pc(size_t(B * T * T));
  auto peer = [&] {
    for (int64_t i = 0; i < B; ++i)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(T), blasint(T), blasint(F), 1.0f, pq.p + i * T * F,
                  blasint(F), pk.p + i * T * F, blasint(F), 0.0f, pc.p + i * T * T, blasint(T));
  };
  peer();
  auto y = matmul(q, k, feat).to_vector<float>({batch, time, key});
  Result r;
  r.name = name;
  r.peer_name = "64x cblas_sgemm (N,T)";
  r.max_abs_diff = max_abs_diff(y.data(), pc.p, y.size());
  r.tol = 1e-4;
  report_check(name, r.max_abs_diff, r.tol, "sgemm loop");
  r.check_ok = r.max_abs_diff <= r.tol;
  time_pair([&] { sink(matmul(q, k, feat)); }, peer, r);
  r.dimx_flops = r.peer_flops = 2.0 * double(B) * double(T) * double(T) * double(F);
  r.target = "time ratio <= 1.10";
  finish(r);
}

// w{batch, time, key} . v{batch, key, feat} over key -> {batch, time, feat}
void bench_attention_values() {
  const int64_t B = 64, T = 512, F = 64;
  std::string name = "attn wv: 64x(512x512 @ 512x64)";
  if (!selected(name)) return;
  Dim batch(B, "batch"), time(T, "time"), key(T, "key"), feat(F, "feat");
  auto wv = random_floats(size_t(B * T * T), 5, 0.001f, 1.0f / 256), vv = random_floats(size_t(B * T * F), 6, -1, 1);
  Tensor w = Tensor::from_vector<float>({batch, time, key}, wv), v = Tensor::from_vector<float>({batch, key, feat}, vv);
  Buf pw(wv), pv(vv), pc(size_t(B * T * F));
  auto peer = [&] {
    for (int64_t i = 0; i < B; ++i)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(T), blasint(F), blasint(T), 1.0f,
                  pw.p + i * T * T, blasint(T), pv.p + i * T * F, blasint(F), 0.0f, pc.p + i * T * F, blasint(F));
  };
  peer();
  auto y = matmul(w, v, key).to_vector<float>({batch, time, feat});
  Result r;
  r.name = name;
  r.peer_name = "64x cblas_sgemm (N,N)";
  r.max_abs_diff = max_abs_diff(y.data(), pc.p, y.size());
  r.tol = 1e-4;
  report_check(name, r.max_abs_diff, r.tol, "sgemm loop");
  r.check_ok = r.max_abs_diff <= r.tol;
  time_pair([&] { sink(matmul(w, v, key)); }, peer, r);
  r.dimx_flops = r.peer_flops = 2.0 * double(B) * double(T) * double(T) * double(F);
  r.target = "time ratio <= 1.10";
  finish(r);
}

// 16M floats = 64 MiB per tensor, as {batch:64, time:512, feat:512}.
constexpr int64_t kB = 64, kT = 512, kF = 512;
constexpr size_t kElems = size_t(kB * kT * kF);
constexpr double kBytes = double(kElems) * sizeof(float);

struct MemcpyPeer {
  Buf src, dst;
  MemcpyPeer() : src(random_floats(kElems, 99, -1, 1)), dst(kElems) {}
  void operator()() { std::memcpy(dst.p, src.p, kElems * sizeof(float)); }
};

void bench_add(MemcpyPeer& mc) {
  std::string name = "add 16M f32";
  if (!selected(name)) return;
  Dim batch(kB, "batch"), time(kT, "time"), feat(kF, "feat");
  auto av = random_floats(kElems, 7, -1, 1), bv = random_floats(kElems, 8, -1, 1);
  Tensor a = Tensor::from_vector<float>({batch, time, feat}, av), b = Tensor::from_vector<float>({batch, time, feat}, bv);
  auto y = add(a, b).to_vector<float>({batch, time, feat});
  std::vector<float> ref(kElems);
  for (size_t i = 0; i < kElems; ++i) ref[i] = av[i] + bv[i];
  Result r;
  r.name = name;
  r.peer_name = "memcpy 64 MiB";
  r.max_abs_diff = max_abs_diff(y.data(), ref.data(), kElems);
  r.tol = 0;
  report_check(name, r.max_abs_diff, r.tol, "scalar loop");
  r.check_ok = r.max_abs_diff <= r.tol;
  time_pair([&] { sink(add(a, b)); }, [&] { mc(); }, r);
  r.dimx_bytes = 3 * kBytes;  // read a, read b, write y
  r.peer_bytes = 2 * kBytes;  // read src, write dst
  r.target = "bandwidth >= 70% of memcpy";
  finish(r);
}

void bench_exp(MemcpyPeer& mc) {
  std::string name = "exp 16M f32";
  if (!selected(name)) return;
  Dim batch(kB, "batch"), time(kT, "time"), feat(kF, "feat");
  auto xv = random_floats(kElems, 9, -4, 4);
  Tensor x = Tensor::from_vector<float>({batch, time, feat}, xv);
  auto y = exp(x).to_vector<float>({batch, time, feat});
  // Reference in double; the check is relative to each value's magnitude (exp(4) ~ 55).
  double worst = 0;
  for (size_t i = 0; i < kElems; ++i) {
    double e = std::exp(double(xv[i]));
    worst = std::max(worst, std::fabs(double(y[i]) - e) / e);
  }
  Result r;
  r.name = name;
  r.peer_name = "memcpy 64 MiB";
  std::vector<float> ref(kElems);
  for (size_t i = 0; i < kElems; ++i) ref[i] = std::exp(xv[i]);
  r.max_abs_diff = max_abs_diff(y.data(), ref.data(), kElems);
  r.tol = 1e-4;  // abs, on values up to ~55
  report_check(name, r.max_abs_diff, r.tol, "std::exp");
  std::fprintf(g_opt.json ? stderr : stdout, "check %-40s max rel diff %.3g vs exp in double\n", name.c_str(), worst);
  r.check_ok = r.max_abs_diff <= r.tol;
  time_pair([&] { sink(exp(x)); }, [&] { mc(); }, r);
  r.dimx_bytes = r.peer_bytes = 2 * kBytes;
  r.target = "time ratio <= 3";
  finish(r);
}

// Reference softmax of each row of length `n` over its first `len` entries (the rest 0).
void softmax_ref(const float* x, float* y, int64_t n, int64_t len) {
  double m = -INFINITY, s = 0;
  for (int64_t i = 0; i < len; ++i) m = std::max(m, double(x[i]));
  for (int64_t i = 0; i < len; ++i) s += std::exp(double(x[i]) - m);
  for (int64_t i = 0; i < n; ++i) y[i] = i < len ? float(std::exp(double(x[i]) - m) / s) : 0.0f;
}

void bench_softmax(MemcpyPeer& mc) {
  std::string name = "softmax {64,512,512} over key";
  if (!selected(name)) return;
  Dim batch(kB, "batch"), time(kT, "time"), key(kF, "key");
  auto xv = random_floats(kElems, 10, -4, 4);
  Tensor x = Tensor::from_vector<float>({batch, time, key}, xv);
  auto y = softmax(x, key).to_vector<float>({batch, time, key});
  std::vector<float> ref(kElems);
  for (int64_t row = 0; row < kB * kT; ++row) softmax_ref(&xv[size_t(row * kF)], &ref[size_t(row * kF)], kF, kF);
  Result r;
  r.name = name;
  r.peer_name = "memcpy 64 MiB";
  r.max_abs_diff = max_abs_diff(y.data(), ref.data(), kElems);
  r.tol = 1e-6;
  report_check(name, r.max_abs_diff, r.tol, "reference in double");
  r.check_ok = r.max_abs_diff <= r.tol;
  time_pair([&] { sink(softmax(x, key)); }, [&] { mc(); }, r);
  r.dimx_bytes = r.peer_bytes = 2 * kBytes;
  r.target = "time ratio <= 3";
  finish(r);
}

// Informational: key is a dynamic Dim (lengths per batch entry, 256..512), masked softmax.
void bench_softmax_masked(MemcpyPeer& mc) {
  std::string name = "softmax masked (dyn key) {64,512,<=512}";
  if (!selected(name)) return;
  Dim batch(kB, "batch"), time(kT, "time");
  std::mt19937_64 g(11);
  std::uniform_int_distribution<int32_t> u(256, int32_t(kF));
  std::vector<int32_t> lens(static_cast<size_t>(kB));
  for (auto& l : lens) l = u(g);
  lens[0] = int32_t(kF);  // extent is the max length: keep it at 512 so the bytes match the other cases
  Dim key(Tensor::from_vector<int32_t>({batch}, lens), "key");
  auto xv = random_floats(kElems, 12, -4, 4);
  Tensor x = Tensor::from_vector<float>({batch, time, key}, xv);
  auto y = softmax(x, key).to_vector<float>({batch, time, key});
  std::vector<float> ref(kElems);
  for (int64_t b = 0; b < kB; ++b)
    for (int64_t t = 0; t < kT; ++t) {
      size_t off = size_t((b * kT + t) * kF);
      softmax_ref(&xv[off], &ref[off], kF, lens[size_t(b)]);
    }
  Result r;
  r.name = name;
  r.peer_name = "memcpy 64 MiB";
  r.max_abs_diff = max_abs_diff(y.data(), ref.data(), kElems);
  r.tol = 1e-6;
  report_check(name, r.max_abs_diff, r.tol, "masked reference in double");
  r.check_ok = r.max_abs_diff <= r.tol;
  time_pair([&] { sink(softmax(x, key)); }, [&] { mc(); }, r);
  r.dimx_bytes = r.peer_bytes = 2 * kBytes;
  finish(r);
}

[[noreturn]] void usage(int rc) {
  std::fprintf(rc ? stderr : stdout,
               "usage: bench_core [--json] [--reps N] [--filter SUBSTR]\n"
               "  --json     one JSON object per case on stdout (checks go to stderr)\n"
               "  --reps N   timed repetitions per side (default: about 1 s per case, at least 7)\n"
               "  --filter S run only cases whose name contains S\n");
  std::exit(rc);
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json") g_opt.json = true;
    else if (a == "--reps" && i + 1 < argc) g_opt.reps = std::atoi(argv[++i]);
    else if (a == "--filter" && i + 1 < argc) g_opt.filter = argv[++i];
    else if (a == "-h" || a == "--help") usage(0);
    else usage(2);
  }
  bench::print_runtime(g_opt.json);
  if (!g_opt.json) {
    std::printf("bench_core: %s, %d BLAS threads; reps %s; medians of interleaved runs\n",
                openblas_get_config(), openblas_get_num_threads(),
                g_opt.reps > 0 ? std::to_string(g_opt.reps).c_str() : "auto (~1 s per case)");
  }
  try {
    if (!g_opt.json) print_table_header();
    bench_matmul(1024);
    bench_matmul(2048);
    bench_attention_scores();
    bench_attention_values();
    MemcpyPeer mc;
    bench_add(mc);
    bench_exp(mc);
    bench_softmax(mc);
    bench_softmax_masked(mc);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_core: error: %s\n", e.what());
    return 1;
  }
  if (g_failed_checks) {
    std::fprintf(stderr, "bench_core: %d result check(s) failed\n", g_failed_checks);
    return 1;
  }
  return 0;
}

// GPU benchmark: dimx on cuda:0 against PyTorch on the same GPU (bench_gpu_peer.py, run as a
// subprocess in the same invocation). Prints one JSON object per case with --json.
#include <dimx/dimx.h>
#include <dimx/gpu/runtime.h>


#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "peer.h"
#include "timer.h"

using namespace dimx;

namespace {

double median_ms(int reps, const std::function<void()>& f) {
  for (int i = 0; i < 3; ++i) f();
  gpu::synchronize();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto a = std::chrono::steady_clock::now();
    f();
    gpu::synchronize();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  bool json = false;
  std::string peer_script = std::string(argv[0]) + "_peer.py";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json") json = true;
    else if (a == "--peer" && i + 1 < argc) peer_script = argv[++i];
  }
  bench::print_runtime(json);
  if (gpu::device_count() == 0) {
    std::cerr << "bench_gpu: no CUDA device\n";
    return 1;
  }
  const Device dev = Device::cuda(0);
  Generator gen(0);
  struct Row {
    std::string name;
    double ms, bytes, flops;
  };
  std::vector<Row> rows;

  for (int64_t n : {4096, 8192}) {
    Dim m(n, "m"), k(n, "k"), c(n, "n");
    Tensor a = random_normal({m, k}, gen, 0, 1, DType::f32, dev), b = random_normal({k, c}, gen, 0, 1, DType::f32, dev);
    for (bool tf32 : {false, true}) {
      set_allow_tf32(tf32);
      double ms = median_ms(n == 8192 ? 10 : 30, [&] { matmul(a, b, k); });
      rows.push_back({std::string("matmul ") + std::to_string(n) + "^3 " + (tf32 ? "tf32" : "f32"), ms, 0,
                      2.0 * double(n) * double(n) * double(n)});
    }
    set_allow_tf32(false);
    Tensor ah = a.astype(DType::bf16), bh = b.astype(DType::bf16);
    double ms = median_ms(n == 8192 ? 20 : 50, [&] { matmul(ah, bh, k); });
    rows.push_back({std::string("matmul ") + std::to_string(n) + "^3 bf16", ms, 0, 2.0 * double(n) * double(n) * double(n)});
  }
  {
    Dim n(int64_t(256) << 20, "n");
    Tensor a = random_uniform({n}, gen, 0, 1, DType::f32, dev), b = random_uniform({n}, gen, 0, 1, DType::f32, dev);
    rows.push_back({"add 256M f32", median_ms(20, [&] { a + b; }), 3.0 * 4 * double(n.size()), 0});
  }
  {
    Dim B(64, "batch"), T(1024, "time"), K(1024, "key");
    Tensor x = random_normal({B, T, K}, gen, 0, 1, DType::f32, dev);
    rows.push_back({"softmax {64,1024,1024}", median_ms(30, [&] { softmax(x, K); }), 2.0 * 4 * double(x.numel()), 0});
    std::vector<int32_t> lens(64);
    for (int i = 0; i < 64; ++i) lens[size_t(i)] = 512 + 8 * i;
    Dim time(Tensor::from_vector<int32_t>({B}, lens), "time");
    Tensor y = random_normal({B, time, K}, gen, 0, 1, DType::f32, dev);
    rows.push_back({"masked reduce_sum over time {64,<=1024,1024}", median_ms(30, [&] { reduce_sum(y, {time}); }),
                    4.0 * double(y.numel()), 0});
  }

  std::map<std::string, double> peer = bench::run_peer(peer_script);
  if (!json) std::printf("%-46s %10s %10s %8s %12s\n", "case", "dimx ms", "torch ms", "ratio", "dimx rate");
  for (const Row& r : rows) {
    auto it = peer.find(r.name);
    double p = it == peer.end() ? -1 : it->second;
    double rate = r.flops ? r.flops / r.ms / 1e9 : r.bytes / r.ms / 1e6;  // TFLOP/s or GB/s
    const char* unit = r.flops ? "TFLOP/s" : "GB/s";
    if (json) {
      std::ostringstream o;
      o << "{\"bench\": \"gpu\", \"case\": \"" << r.name << "\", \"unit\": \"ms\", \"dimx\": " << r.ms
        << ", \"peer\": " << (p < 0 ? std::string("null") : std::to_string(p)) << ", \"peer_name\": \"torch\", \""
        << (r.flops ? "tflops" : "gbps") << "\": " << rate << "}";
      std::cout << o.str() << "\n";
    } else {
      std::printf("%-46s %10.3f %10.3f %8.3f %8.1f %s\n", r.name.c_str(), r.ms, p, p > 0 ? r.ms / p : 0.0, rate, unit);
    }
  }
  return 0;
}

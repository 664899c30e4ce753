#pragma once
// The timer of dimx's benchmarks: the median of `reps` calls after two warm-up calls, in
// milliseconds of wall time, the device synchronized around each call (built with
// DIMX_BENCH_CUDA where the CUDA layer is linked). With profiling on (a benchmark's
// --profile), one more call of each timed case runs under a dimx::Profiler and its report goes
// to stderr, numbered in the order the cases are timed.
#include <dimx/device.h>
#include <dimx/profile.h>
#include <dimx/runtime.h>
#ifdef DIMX_BENCH_CUDA
#include <dimx/gpu/runtime.h>
#endif

#include <algorithm>
#include <chrono>
#include <functional>
#include <iostream>
#include <vector>

namespace dimx::bench {

inline void sync(Device dev) {
#ifdef DIMX_BENCH_CUDA
  if (dev.type == Device::Type::cuda) gpu::synchronize(dev.index);
#else
  (void)dev;
#endif
}

// The machine and libraries a run measured (dimx::runtime_info), "# "-prefixed so JSON-line
// readers skip it; to stderr with --json, else stdout.
inline void print_runtime(bool json) {
  std::string s = runtime_info().str(), out;
  size_t start = 0;
  while (start < s.size()) {
    size_t end = s.find('\n', start);
    out += "# " + s.substr(start, end - start) + "\n";
    start = end + 1;
  }
  (json ? std::cerr : std::cout) << out;
}

inline bool& profiling() {
  static bool on = false;
  return on;
}

inline double median_ms(int reps, Device dev, const std::function<void()>& f) {
  for (int i = 0; i < 2; ++i) f();
  sync(dev);
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto a = std::chrono::steady_clock::now();
    f();
    sync(dev);
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  if (profiling()) {
    static int count = 0;
    Profiler prof;
    f();
    sync(dev);
    std::cerr << "---- profile of timed case " << ++count << " (median " << t[t.size() / 2] << " ms)\n"
              << prof.report(40);
  }
  return t[t.size() / 2];
}

}  // namespace dimx::bench

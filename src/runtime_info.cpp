// runtime_info() and the check of OpenBLAS's kernels against the CPU (dimx/runtime.h).
#include <dimx/runtime.h>

#include <dimx/gpu/runtime.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>

#include <cblas.h>

#include "backend.h"
#include "cpu/parallel.h"

#ifndef DIMX_VERSION
#define DIMX_VERSION "unknown"
#endif
#ifndef DIMX_BUILD
#define DIMX_BUILD ""
#endif

namespace dimx {

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return s;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  return "unknown";
}

bool has_avx2() { return __builtin_cpu_supports("avx2"); }
bool has_avx512f() { return __builtin_cpu_supports("avx512f"); }

std::string blas_core() {
  const char* c = openblas_get_corename();
  return c ? c : "";
}

}  // namespace

std::optional<std::string> openblas_core_advice(const std::string& core, bool cpu_avx2, bool cpu_avx512f) {
  // OpenBLAS's x86-64 cores with AVX2 (or wider) kernels.
  static const char* wide[] = {"haswell", "zen", "skylakex", "cooperlake", "sapphirerapids", "excavator"};
  const std::string c = lower(core);
  if (!cpu_avx2 || c.empty()) return std::nullopt;
  for (const char* w : wide)
    if (c == w) return std::nullopt;
  const std::string want = cpu_avx512f ? "SkylakeX" : "Haswell";
  return "OpenBLAS runs its '" + core + "' kernels on a CPU with " + (cpu_avx512f ? "AVX-512" : "AVX2") +
         " (it does not recognize the CPU), so GEMM is several times slower than it can be; set "
         "OPENBLAS_CORETYPE=" + want + " in the environment (DIMX_NO_BLAS_WARNING=1 silences this)";
}

namespace cpu {
// Called at the first CPU GEMM: warns once about slow OpenBLAS kernels.
void check_blas_kernels() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* quiet = std::getenv("DIMX_NO_BLAS_WARNING");
    if (quiet && *quiet && std::string(quiet) != "0") return;
    if (auto a = openblas_core_advice(blas_core(), has_avx2(), has_avx512f()))
      std::fprintf(stderr, "dimx: %s\n", a->c_str());
  });
}
}  // namespace cpu

RuntimeInfo runtime_info() {
  RuntimeInfo r;
  r.dimx = std::string(DIMX_VERSION) + (std::string(DIMX_BUILD).empty() ? "" : ", " + std::string(DIMX_BUILD));
  r.cpu = cpu_model();
  for (auto [name, on] : {std::pair<const char*, bool>{"avx2", has_avx2()}, {"avx512f", has_avx512f()},
                          {"fma", bool(__builtin_cpu_supports("fma"))}})
    if (on) r.cpu_features += (r.cpu_features.empty() ? "" : " ") + std::string(name);
  const char* cfg = openblas_get_config();
  r.blas = cfg ? cfg : "";
  r.blas_core = blas_core();
  r.blas_threads = openblas_get_num_threads();
  r.dimx_threads = cpu::num_threads();
  r.blas_advice = openblas_core_advice(r.blas_core, has_avx2(), has_avx512f()).value_or("");
  std::string why;
  if (const backend::DeviceLayer* l = backend::device_layer(Device::Type::cuda, &why)) {
    r.cuda = l->versions();
    const int n = l->device_count();
    for (int i = 0; i < n; ++i) r.cuda_devices.push_back("cuda:" + std::to_string(i) + " " + l->device_name(i));
  } else {
    r.cuda = "none: " + why;
  }
  return r;
}

std::string RuntimeInfo::str() const {
  std::string s;
  auto line = [&](const char* k, const std::string& v) { s += std::string(k) + ": " + v + "\n"; };
  line("dimx", dimx);
  line("cpu", cpu + (cpu_features.empty() ? "" : " (" + cpu_features + ")"));
  line("blas", blas);
  line("blas core", blas_core);
  line("blas threads", std::to_string(blas_threads));
  line("dimx threads", std::to_string(dimx_threads));
  if (!blas_advice.empty()) line("blas advice", blas_advice);
  line("cuda", cuda);
  std::string devs;
  for (const auto& d : cuda_devices) devs += (devs.empty() ? "" : "; ") + d;
  line("cuda devices", devs.empty() ? "none" : devs);
  return s;
}

}  // namespace dimx

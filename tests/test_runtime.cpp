// runtime_info() and the OpenBLAS kernel check: the advice for each kind of core name, and a
// report that names every field.
#include <dimx/dimx.h>
#include <dimx/gpu/runtime.h>

#include "test_util.h"

using namespace dimx;
using Catch::Contains;

TEST_CASE("runtime: OpenBLAS core names against the CPU's features", "[runtime]") {
  // Old kernels on a CPU with wide vectors: advice naming the kernels, the fix and the switch.
  auto a = openblas_core_advice("Prescott", true, true);
  REQUIRE(a);
  CHECK_THAT(*a, Contains("'Prescott'") && Contains("AVX-512") && Contains("OPENBLAS_CORETYPE=SkylakeX") &&
                     Contains("DIMX_NO_BLAS_WARNING"));
  auto b = openblas_core_advice("Nehalem", true, false);
  REQUIRE(b);
  CHECK_THAT(*b, Contains("OPENBLAS_CORETYPE=Haswell") && Contains("AVX2"));
  CHECK(openblas_core_advice("Sandybridge", true, false));  // AVX1 kernels only
  // Kernels that use the vector units, in any letter case: nothing to say.
  for (const char* ok : {"Haswell", "SKYLAKEX", "zen", "Cooperlake", "SapphireRapids"})
    CHECK_FALSE(openblas_core_advice(ok, true, true));
  // A CPU without AVX2 cannot do better; an empty name (not OpenBLAS) says nothing.
  CHECK_FALSE(openblas_core_advice("Prescott", false, false));
  CHECK_FALSE(openblas_core_advice("", true, true));
}

TEST_CASE("runtime: runtime_info names every field", "[runtime]") {
  RuntimeInfo r = runtime_info();
  CHECK_THAT(r.dimx, Contains("0.1"));
  CHECK_FALSE(r.cpu.empty());
  CHECK_THAT(r.blas, Contains("OpenBLAS"));
  CHECK_FALSE(r.blas_core.empty());
  CHECK(r.blas_threads >= 1);
  CHECK(r.dimx_threads >= 1);
  CHECK(r.blas_advice == openblas_core_advice(r.blas_core, r.cpu_features.find("avx2") != std::string::npos,
                                              r.cpu_features.find("avx512f") != std::string::npos)
                             .value_or(""));
  CHECK(int(r.cuda_devices.size()) == gpu::device_count());
  const std::string s = r.str();
  for (const char* k : {"dimx: ", "cpu: ", "blas: ", "blas core: ", "blas threads: ", "dimx threads: ", "cuda: ",
                        "cuda devices: "})
    CHECK_THAT(s, Contains(k));
  // Without the CUDA layer (or a device) the report says why.
  std::string why;
  if (!gpu::cuda_layer_available(&why)) {
    CHECK_THAT(r.cuda, Contains("none: ") && Contains("libdimx_cuda"));
    CHECK_THAT(why, Contains("libdimx_cuda"));
    CHECK_THROWS_WITH(gpu::device_name(0), Contains("libdimx_cuda"));
    CHECK_THROWS_WITH(gpu::memory_stats(0), Contains("memory_stats") && Contains("libdimx_cuda"));
    CHECK_THROWS_WITH(gpu::stream(0), Contains("gpu::stream") && Contains("libdimx_cuda"));
  } else {
    CHECK_THAT(r.cuda, Contains("CUDA runtime"));
    const int n = gpu::device_count();
    CHECK_THROWS_WITH(gpu::memory_stats(n), Contains("memory_stats") && Contains("no device cuda:" + std::to_string(n)));
    CHECK_THROWS_WITH(gpu::reset_peak_memory(-1), Contains("reset_peak_memory") && Contains("cuda:-1"));
    CHECK_THROWS_WITH(gpu::stream(n), Contains("gpu::stream") && Contains("no device cuda:" + std::to_string(n)));
  }
}

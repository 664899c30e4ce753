// Device errors provoked on purpose: CUDA calls that fail (an unknown device, an allocation
// larger than the device) must become dimx errors and leave the runtime usable. Kept out of
// test_gpu, which compute-sanitizer runs and where every failing CUDA call is a finding.
// Exits 4 (reported as skipped) without a device.
#include <dimx/gpu/runtime.h>
#include <dimx/random.h>
#include <dimx/tensor.h>

#include <iostream>

#include "catch_runner.h"
#include "test_util.h"

using namespace dimx;

namespace {
const Device kGpu = Device::cuda(0);
}

TEST_CASE("gpu: device errors", "[gpu][errors]") {
  Dim n(4, "n");
  Tensor c = Tensor::ones({n});
  Tensor g = c.to(kGpu);
  CHECK_THROWS_WITH(c + g, Catch::Contains("add") && Catch::Contains("different devices") && Catch::Contains("cuda:0"));
  CHECK_THROWS_WITH(g.to(Device::cuda(7)), Catch::Contains("cuda:7"));
  CHECK_THROWS_AS(gpu::device_name(gpu::device_count()), Error);
  CHECK_THROWS_WITH(gpu::memory_stats(gpu::device_count()), Catch::Contains("memory_stats"));
  // An allocation larger than the device: a dimx error, and the allocator stays usable.
  Dim huge(int64_t(1) << 40, "huge");
  Generator gen(1);
  CHECK_THROWS_WITH(random_uniform({huge}, gen, 0, 1, DType::f32, kGpu), Catch::Contains("cudaMallocAsync"));
  CHECK((g * 2.0).to_vector<float>() == std::vector<float>(4, 2.0f));
}

int main(int argc, char** argv) {
  if (gpu::device_count() == 0) {
    std::cout << "no CUDA device: skipping the GPU error tests\n";
    return 4;
  }
  return run_catch_session(argc, argv);
}

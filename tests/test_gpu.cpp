// GPU tests: skipped (exit code 4, reported by ctest as skipped) where no CUDA device exists.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <dimx/error.h>
#include <dimx/gpu/runtime.h>

#include <iostream>

TEST_CASE("gpu: device query names the device", "[gpu]") {
  REQUIRE(dimx::gpu::device_count() > 0);
  CHECK(dimx::gpu::device_name(0).find("sm_") != std::string::npos);
  CHECK_THROWS_AS(dimx::gpu::device_name(dimx::gpu::device_count()), dimx::Error);
}

int main(int argc, char** argv) {
  if (dimx::gpu::device_count() == 0) {
    std::cout << "no CUDA device: skipping the GPU tests\n";
    return 4;
  }
  return Catch::Session().run(argc, argv);
}

#include <dimx/error.h>
#include <dimx/gpu/runtime.h>

#include <cuda_runtime.h>

#include <string>

namespace dimx::gpu {

int device_count() {
  int n = 0;
  // No driver or no device is not an error here: it means zero devices.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string device_name(int index) {
  cudaDeviceProp prop{};
  cudaError_t err = cudaGetDeviceProperties(&prop, index);
  if (err != cudaSuccess) {
    cudaGetLastError();  // a failed query must not surface at the next kernel launch
    throw Error("device_name: cudaGetDeviceProperties(" + std::to_string(index) +
                ") failed: " + cudaGetErrorString(err));
  }
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) +
         ", " + std::to_string(prop.totalGlobalMem >> 30) + " GiB)";
}

}  // namespace dimx::gpu

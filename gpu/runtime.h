#pragma once
// The CUDA layer's device queries (gpu/runtime.cu), registered as libdimx's DeviceLayer.
#include <string>

namespace dimx::gpu {

int cuda_device_count();
std::string cuda_device_name(int index);
std::string cuda_versions();  // runtime, driver, cuFFT and cuBLAS versions, target archs

}  // namespace dimx::gpu

#pragma once
// The CUDA layer's device queries (gpu/runtime.cu), registered as libdimx's DeviceLayer.
#include <array>
#include <cstddef>
#include <string>

namespace dimx::gpu {

int cuda_device_count();
std::string cuda_device_name(int index);
std::string cuda_versions();  // runtime, driver, cuFFT and cuBLAS versions, target archs
// The default memory pool of device `index` (the one dimx allocates from): bytes in use,
// reserved and the most in use; and setting that high-water mark to the bytes in use now.
std::array<size_t, 3> cuda_pool_bytes(int index);
void cuda_reset_pool_peak(int index);

}  // namespace dimx::gpu

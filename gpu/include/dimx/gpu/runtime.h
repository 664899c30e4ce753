#pragma once
// CUDA runtime queries. Safe to call on a machine without a GPU or driver.
#include <string>

namespace dimx::gpu {

// Number of usable CUDA devices; 0 when there is no device or no driver.
int device_count();
// "NVIDIA H100 80GB HBM3 (sm_90, 79 GiB)"; throws dimx::Error for a bad index.
std::string device_name(int index);

// Waits until all work queued on cuda:index by dimx has finished (for timing).
void synchronize(int index = 0);

}  // namespace dimx::gpu

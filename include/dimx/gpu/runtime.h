#pragma once
/// \file
/// CUDA device queries, in libdimx itself: a program linked with dimx::dimx alone reaches the
/// GPU. The CUDA layer (libdimx_cuda, installed next to libdimx when dimx is built with it) is
/// loaded on first use of a CUDA device or of these functions. Safe to call on a machine without
/// a GPU, a driver or the CUDA layer: there are then no devices.
#include <cstddef>
#include <string>

namespace dimx::gpu {

/// Number of usable CUDA devices; 0 when there is no device, no driver or no CUDA layer.
int device_count();
/// "NVIDIA H100 80GB HBM3 (sm_90, 79 GiB)"; throws dimx::Error for a bad index or without the
/// CUDA layer (saying why it could not be loaded).
std::string device_name(int index);
/// Whether the CUDA layer is present (loaded now if needed); `why` gets the reason if not.
bool cuda_layer_available(std::string* why = nullptr);

/// Waits until all work queued on cuda:index by dimx has finished (for timing).
void synchronize(int index = 0);
/// The CUDA stream (a `cudaStream_t`, non-blocking) on which dimx queues all its work for
/// cuda:index, for work of one's own ordered with dimx's (events, NCCL, custom kernels):
/// what reads a dimx tensor goes after an event recorded on it, and dimx's later work on
/// something one wrote waits (cudaStreamWaitEvent) for one's own. Throws dimx::Error
/// (naming gpu::stream) for a bad index or without the CUDA layer.
void* stream(int index = 0);

/// Device memory of cuda:index in dimx's stream-ordered pool, read after the device's queued
/// work has finished: bytes held by tensors and kernel scratch now (`in_use`), bytes the pool
/// holds from the driver (`reserved`, at least `in_use`; freed blocks stay there for reuse) and
/// the most bytes in use since the start or the last reset_peak_memory(). Library workspaces
/// outside the pool (cuBLAS, cuFFT plans, cuDNN) are not counted.
struct MemoryStats {
  size_t in_use = 0;       ///< bytes in live tensors
  size_t reserved = 0;     ///< bytes held from the driver (at least in_use)
  size_t peak_in_use = 0;  ///< the most bytes in use since the start or the last reset_peak_memory()
};
/// Throws dimx::Error (naming memory_stats) for a bad index or without the CUDA layer.
MemoryStats memory_stats(int index = 0);
/// Starts a new high-water mark of memory_stats().peak_in_use at the bytes in use now.
void reset_peak_memory(int index = 0);

}  // namespace dimx::gpu

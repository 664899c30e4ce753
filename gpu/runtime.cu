// The CUDA layer's device queries, registered with libdimx (src/backend.h's DeviceLayer) when
// this library loads; the public functions of dimx/gpu/runtime.h live in libdimx.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cufft.h>

#include <dimx/error.h>

#include <cstdlib>
#include <string>

#include "common.cuh"
#include "runtime.h"

namespace dimx::gpu {

int cuda_device_count() {
  int n = 0;
  // No driver or no device is not an error here: it means zero devices.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string cuda_device_name(int index) {
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

std::string cuda_versions() {
  auto ver = [](int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); };
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  cudaGetLastError();
  std::string s = "CUDA runtime " + ver(runtime) + ", driver " + (driver ? ver(driver) : std::string("none"));
  int fft = 0;
  if (cufftGetVersion(&fft) == CUFFT_SUCCESS)
    s += ", cuFFT " + std::to_string(fft / 1000) + "." + std::to_string((fft % 1000) / 100) + "." + std::to_string(fft % 100);
  s += ", cuBLAS " + std::to_string(CUBLAS_VER_MAJOR) + "." + std::to_string(CUBLAS_VER_MINOR) + "." +
       std::to_string(CUBLAS_VER_PATCH) + " (built with)";
  s += ", built for sm_" + std::string(DIMX_CUDA_ARCHS);
  return s;
}

namespace {
cudaMemPool_t default_pool(int index) {
  cudaMemPool_t pool;
  cudaError_t e = cudaDeviceGetDefaultMemPool(&pool, index);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw Error("memory_stats: cudaDeviceGetDefaultMemPool(" + std::to_string(index) + ") failed: " + cudaGetErrorString(e));
  }
  return pool;
}

uint64_t pool_attribute(cudaMemPool_t pool, cudaMemPoolAttr attr) {
  uint64_t v = 0;
  cudaError_t e = cudaMemPoolGetAttribute(pool, attr, &v);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw Error(std::string("memory_stats: cudaMemPoolGetAttribute failed: ") + cudaGetErrorString(e));
  }
  return v;
}
}  // namespace

std::array<size_t, 3> cuda_pool_bytes(int index) {
  cudaMemPool_t pool = default_pool(index);
  return {size_t(pool_attribute(pool, cudaMemPoolAttrUsedMemCurrent)),
          size_t(pool_attribute(pool, cudaMemPoolAttrReservedMemCurrent)),
          size_t(pool_attribute(pool, cudaMemPoolAttrUsedMemHigh))};
}

void cuda_reset_pool_peak(int index) {
  uint64_t zero = 0;
  cudaError_t e = cudaMemPoolSetAttribute(default_pool(index), cudaMemPoolAttrUsedMemHigh, &zero);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw Error(std::string("reset_peak_memory: cudaMemPoolSetAttribute failed: ") + cudaGetErrorString(e));
  }
}

int64_t scan_chunk_frames(int64_t rows, int64_t T, const char* override_env) {
  if (const char* e = std::getenv(override_env))
    if (const int64_t n = std::atoll(e); n > 0) return n;
  static const int64_t sms = [] {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
      cudaGetLastError();
      n = 132;
    }
    return int64_t(n);
  }();
  if (rows >= sms * 256) return T < 1 ? 1 : T;
  const int64_t chunks = (sms * 512 + rows - 1) / rows;
  const int64_t L = ((T + chunks - 1) / chunks + 15) / 16 * 16;
  return L < 1 ? 1 : L;
}

}  // namespace dimx::gpu

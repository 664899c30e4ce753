#pragma once
/// \file
/// What dimx runs on, for bug reports and benchmark records: dimx's version and build, the CPU,
/// the BLAS (its version, the kernels it picked, its threads), dimx's threads, and the CUDA
/// layer (devices and library versions, or why there is none).
///
/// At the first CPU matmul dimx checks OpenBLAS's kernels against the CPU: an OpenBLAS that does
/// not know the CPU falls back to old kernels ("Prescott") and runs GEMM several times slower.
/// dimx then says so once on stderr with the remedy (OPENBLAS_CORETYPE); DIMX_NO_BLAS_WARNING=1
/// silences it.
#include <optional>
#include <string>
#include <vector>

namespace dimx {

/// A description of the runtime, as returned by runtime_info().
struct RuntimeInfo {
  std::string dimx;            ///< version and build ("0.1.0, Release, -march=native")
  std::string cpu;             ///< model name
  std::string cpu_features;    ///< "avx2 avx512f fma" (those that matter to the kernels)
  std::string blas;            ///< OpenBLAS's configuration string
  std::string blas_core;       ///< the kernels OpenBLAS picked ("SkylakeX", "Haswell", "Prescott")
  int blas_threads = 0;        ///< OpenBLAS's thread count
  int dimx_threads = 0;        ///< dimx's own CPU thread pool
  std::string blas_advice;     ///< empty, or what to do about slow BLAS kernels
  std::string cuda;            ///< library versions, or why there is no CUDA layer
  std::vector<std::string> cuda_devices;  ///< "cuda:<i> <name>" per device; empty without CUDA
  /// One "key: value" line per field.
  std::string str() const;
};

/// Collects the RuntimeInfo of this process.
RuntimeInfo runtime_info();

/// The advice for OpenBLAS kernels `core` (its core name) on a CPU with these features, or
/// nullopt when the kernels use the CPU's vector units (AVX2 kernels on an AVX2 CPU, and better).
std::optional<std::string> openblas_core_advice(const std::string& core, bool cpu_avx2, bool cpu_avx512f);

}  // namespace dimx

// The fused optimizer step (backend::OptimStep) on CUDA: up to kOptimMaxTensors tensors per launch,
// their pointers and coefficients in the kernel's parameters; blockIdx.y picks the tensor and
// the blocks along x stride over its elements.
#include <cuda_runtime.h>

#include <algorithm>

#include "common.cuh"
#include "optim_math.h"

namespace dimx::gpu {

namespace {

template <class T>
struct List {
  OptimTensor t[kOptimMaxTensors];
  optim_math::Coeffs<T> c[kOptimMaxTensors];
};

template <class T>
__global__ void optim_kernel(bool adam, List<T> list) {
  const OptimTensor& t = list.t[blockIdx.y];
  const optim_math::Coeffs<T>& c = list.c[blockIdx.y];
  T* p = static_cast<T*>(t.param);
  const T* g = static_cast<const T*>(t.grad);
  T* b0 = static_cast<T*>(t.buf[0]);
  T* b1 = static_cast<T*>(t.buf[1]);
  T* b2 = static_cast<T*>(t.buf[2]);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < t.n; i += int64_t(gridDim.x) * blockDim.x) {
    if (adam) optim_math::adam(c, p[i], g[i], b0[i], b1[i], b2 ? b2 + i : nullptr);
    else optim_math::sgd(c, p[i], g[i], b0 ? b0 + i : nullptr);
  }
}

template <class T>
void launch(bool adam, const OptimTensor* tensors, const void* coeffs, int count, cudaStream_t s) {
  List<T> list{};
  int64_t longest = 0;
  for (int i = 0; i < count; ++i) {
    list.t[i] = tensors[i];
    list.c[i] = static_cast<const optim_math::Coeffs<T>*>(coeffs)[i];
    longest = tensors[i].n > longest ? tensors[i].n : longest;
  }
  const unsigned bx = unsigned(std::min<int64_t>((longest + 255) / 256, 2048));
  optim_kernel<T><<<dim3(bx > 0 ? bx : 1, unsigned(count)), 256, 0, s>>>(adam, list);
  check_launch(adam ? "adam step" : "sgd step");
}

}  // namespace

void launch_optim_step(DType dt, bool adam, const OptimTensor* tensors, const void* coeffs, int count, cudaStream_t s) {
  if (count <= 0) return;
  if (dt == DType::f32) launch<float>(adam, tensors, coeffs, count, s);
  else if (dt == DType::f64) launch<double>(adam, tensors, coeffs, count, s);
  else throw Error(std::string("optimizer step: the fused update needs f32 or f64 on cuda, got ") + dtype_name(dt));
}

}  // namespace dimx::gpu

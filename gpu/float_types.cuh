#pragma once
// The floating element types of the fused kernels as stored (float, double, __nv_bfloat16,
// __half), each with the type it computes in: f32 and f64 as themselves, bf16 and f16 as f32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <dimx/dtype.h>
#include <dimx/error.h>

#include <string>
#include <type_traits>

namespace dimx::gpu {

template <class S>
using ComputeOf = std::conditional_t<std::is_same_v<S, double>, double, float>;

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ double widen(double v) { return v; }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }

template <class S>
__device__ __forceinline__ S narrow(ComputeOf<S> v) {
  if constexpr (std::is_same_v<S, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else if constexpr (std::is_same_v<S, __half>) return __float2half_rn(v);
  else return v;
}

// Calls f(S{}) for a floating dtype; throws naming `op` for the others.
template <class F>
void dispatch_floating(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::bf16: return f(__nv_bfloat16{});
    case DType::f16: return f(__half{});
    default: break;
  }
  throw Error(std::string(op) + ": needs a floating dtype (f32, f64, bf16, f16), got " + dtype_name(dt));
}

}  // namespace dimx::gpu

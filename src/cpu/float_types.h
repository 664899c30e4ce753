#pragma once
// The floating element types of the fused CPU kernels as stored (f32, f64, bf16, f16), each
// with the type it computes in: f32 and f64 as themselves, bf16 and f16 as f32.
#include <dimx/dtype.h>
#include <dimx/error.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "half.h"

namespace dimx::cpu {

struct Bf16 {
  uint16_t bits;
};
struct F16 {
  uint16_t bits;
};

template <class S>
using ComputeOf = std::conditional_t<std::is_same_v<S, double>, double, float>;

inline float widen(float v) { return v; }
inline double widen(double v) { return v; }
inline float widen(Bf16 v) { return half::bf16_to_f32(v.bits); }
inline float widen(F16 v) { return half::f16_to_f32(v.bits); }

template <class S>
S narrow(ComputeOf<S> v) {
  if constexpr (std::is_same_v<S, Bf16>) return Bf16{half::f32_to_bf16(v)};
  else if constexpr (std::is_same_v<S, F16>) return F16{half::f32_to_f16(v)};
  else return v;
}

// Calls f(S{}) for a floating dtype; throws naming `op` for the others.
template <class F>
void dispatch_floating(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::bf16: return f(Bf16{});
    case DType::f16: return f(F16{});
    default: break;
  }
  throw Error(std::string(op) + ": needs a floating dtype (f32, f64, bf16, f16), got " + dtype_name(dt));
}

}  // namespace dimx::cpu

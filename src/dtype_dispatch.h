#pragma once
// dispatch(dt, f): calls f(T{}) with T the C++ type of a computing dtype. Shared by the CPU
// and CUDA backends (host code only). bf16/f16 have no computing type and throw: the ops widen
// them to f32 before they reach a kernel that has no half form (src/half_compute.h).
#include <dimx/dtype.h>
#include <dimx/error.h>

#include <cstdint>
#include <string>

namespace dimx {

template <class F>
decltype(auto) dispatch(DType dt, F&& f) {
  switch (dt) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::i32: return f(int32_t{});
    case DType::i64: return f(int64_t{});
    case DType::boolean: return f(bool{});
    case DType::bf16:
    case DType::f16: break;
  }
  throw Error(std::string("internal error: dtype ") + dtype_name(dt) +
              " reached a kernel that has no half form (the op should compute it in f32)");
}

}  // namespace dimx

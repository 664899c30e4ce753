#pragma once
/// \file
/// Element types. Binary ops never promote: mixing dtypes is an error, casts are explicit.
/// bf16 and f16 are storage types: they cast, copy, gather and matmul (with f32 accumulation);
/// other ops need astype(f32) first.
#include <cstddef>
#include <cstdint>
#include <string>

namespace dimx {

enum class DType : uint8_t { f32, f64, i32, i64, boolean, bf16, f16 };

size_t dtype_size(DType dt);
const char* dtype_name(DType dt);
bool is_floating(DType dt);
bool is_integer(DType dt);
bool is_half(DType dt);  ///< bf16 or f16

template <class T>
constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<bool>() { return DType::boolean; }

}  // namespace dimx

#pragma once
/// \file
/// Element types. Binary ops never promote: mixing dtypes is an error, casts are explicit.
/// bf16 and f16 are stored in their dtype and computed in f32: every op takes them, works on
/// the values widened to f32 (matmul accumulates in f32) and rounds its result once to the
/// operands' dtype. They carry gradients, which are stored in the tensor's dtype.
#include <cstddef>
#include <cstdint>
#include <string>

namespace dimx {

/// An element type: f32, f64 (float, double), i32, i64 (int32_t, int64_t), boolean (bool,
/// stored as one byte), bf16 (bfloat16), f16 (IEEE half).
enum class DType : uint8_t { f32, f64, i32, i64, boolean, bf16, f16 };

/// Bytes per element (1 for boolean).
size_t dtype_size(DType dt);
/// "f32", "f64", "i32", "i64", "bool", "bf16" or "f16".
const char* dtype_name(DType dt);
/// f32 or f64 (not the half types; see is_half() and is_float_like()).
bool is_floating(DType dt);
/// i32 or i64.
bool is_integer(DType dt);
bool is_half(DType dt);  ///< bf16 or f16
/// f32, f64, bf16 or f16: the dtypes of real numbers, the ones that can require grad.
bool is_float_like(DType dt);

/// The DType of C++ type T (defined for float, double, int32_t, int64_t and bool).
template <class T>
constexpr DType dtype_of();
/// float is f32.
template <> constexpr DType dtype_of<float>() { return DType::f32; }
/// double is f64.
template <> constexpr DType dtype_of<double>() { return DType::f64; }
/// int32_t is i32.
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
/// int64_t is i64.
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }
/// bool is boolean.
template <> constexpr DType dtype_of<bool>() { return DType::boolean; }

}  // namespace dimx

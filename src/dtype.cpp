#include <dimx/device.h>
#include <dimx/dtype.h>
#include <dimx/error.h>

namespace dimx {

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::boolean: return 1;
    case DType::bf16: return 2;
    case DType::f16: return 2;
  }
  throw Error("dtype_size: invalid dtype");
}

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::boolean: return "bool";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
  }
  return "invalid";
}

bool is_floating(DType dt) { return dt == DType::f32 || dt == DType::f64; }
bool is_integer(DType dt) { return dt == DType::i32 || dt == DType::i64; }
bool is_half(DType dt) { return dt == DType::bf16 || dt == DType::f16; }
bool is_float_like(DType dt) { return is_floating(dt) || is_half(dt); }

std::string Device::str() const {
  return type == Type::cpu ? std::string("cpu") : "cuda:" + std::to_string(index);
}

}  // namespace dimx

#pragma once
// bf16 and f16 bit conversions on the host (round to nearest even; NaN stays NaN).
#include <bit>
#include <cstdint>
#include <cstring>

namespace dimx::half {

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

#ifdef __FLT16_MANT_DIG__
// GCC and Clang >= 15 implement _Float16 on x86-64 with correctly rounded conversions.
inline float f16_to_f32(uint16_t h) {
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return float(v);
}

inline uint16_t f32_to_f16(float f) {
  _Float16 v = _Float16(f);
  uint16_t h;
  std::memcpy(&h, &v, 2);
  return h;
}
#else
// Compilers without _Float16 (Clang 14 on x86-64): the same conversions on the bits.
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu, bits;
  if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, or NaN keeping its payload
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalized into an f32 exponent
    uint32_t e = 113;
    while (!(mant & 0x400u)) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

inline uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((u >> 13) & 0x3ffu));  // quiet NaN
  if (u >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // 65520 and up round to inf
  if (u >= 0x38800000u) {  // normal in f16: rebias, round the 13 dropped bits to nearest even
    u -= 0x38000000u;
    u += 0xfffu + ((u >> 13) & 1u);
    return uint16_t(sign | (u >> 13));
  }
  const uint32_t e = u >> 23;
  if (e < 102) return sign;  // below 2^-25: rounds to 0
  const uint32_t full = (u & 0x7fffffu) | 0x800000u, shift = 126 - e;  // subnormal: full * 2^-shift units of 2^-24
  uint32_t m = full >> shift;
  const uint32_t rest = full & ((1u << shift) - 1), half = 1u << (shift - 1);
  if (rest > half || (rest == half && (m & 1u))) ++m;
  return uint16_t(sign | m);
}
#endif

}  // namespace dimx::half

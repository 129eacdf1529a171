// Element types of the CPU kernels: activations and weights may be bf16 or fp16; all
// arithmetic is fp32.
#pragma once

#include <cstdint>
#include <cstring>

namespace sparsekit::cpu {

// 16 fp32 lanes: one AVX-512 register (two AVX2 ones); unaligned loads allowed.
typedef float vec16 __attribute__((vector_size(64), aligned(4), may_alias));

inline float to_float(float v) { return v; }
inline float to_float(uint16_t bf16_bits) {
  uint32_t u = uint32_t(bf16_bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float to_float(_Float16 v) { return float(v); }

template <typename T>
T from_float(float f);
template <>
inline float from_float<float>(float f) { return f; }
template <>
inline uint16_t from_float<uint16_t>(float f) {  // round to nearest even, NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
template <>
inline _Float16 from_float<_Float16>(float f) { return _Float16(f); }

}  // namespace sparsekit::cpu

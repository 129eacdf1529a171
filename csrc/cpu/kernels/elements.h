// Element types of the CPU kernels: activations and weights may be bf16 or fp16; all
// arithmetic is fp32.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "../../common/block_params.h"

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

// Element i of an array of dtype, as fp32.
inline float element(const void* data, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::BFloat16: return to_float(static_cast<const uint16_t*>(data)[i]);
    case DType::Float16: return to_float(static_cast<const _Float16*>(data)[i]);
    default: return static_cast<const float*>(data)[i];
  }
}

// The call's bias as fp32: K values, zeros without bias.
inline std::vector<float> bias_floats(const BlockConvParams& p) {
  std::vector<float> bias(p.shape.K, 0.f);
  if (p.bias)
    for (int64_t k = 0; k < p.shape.K; ++k) bias[k] = element(p.bias, p.dtype, k);
  return bias;
}

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

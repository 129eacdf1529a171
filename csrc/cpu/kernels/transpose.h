// A 16 x 16 fp32 transpose in AVX-512 registers: what turns the planes kernel's [channel][point]
// layouts into channels-last ones and back, 16 elements per instruction instead of one.
#pragma once

#include <cstdint>

namespace sparsekit::cpu {

// Whether the CPU has AVX-512F, which transpose16 needs.
bool has_transpose16();

// dst[i * dst_stride + j] = src[j * src_stride + i] for i, j in [0, 16); strides in floats, no
// alignment needed.
void transpose16(const float* src, int64_t src_stride, float* dst, int64_t dst_stride);

}  // namespace sparsekit::cpu

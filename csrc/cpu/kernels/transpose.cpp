#include "transpose.h"

#include <immintrin.h>

namespace sparsekit::cpu {

bool has_transpose16() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

// GCC 12's intrinsics start these shuffles from _mm512_undefined_ps: a false -Wuninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
// Three rounds of interleaving: 32-bit elements of row pairs, 64-bit pairs of those, then
// 128-bit lanes twice.
__attribute__((target("avx512f"))) void transpose16(const float* src, int64_t src_stride,
                                                    float* dst, int64_t dst_stride) {
  __m512 r[16], t[16];
  for (int j = 0; j < 16; ++j) r[j] = _mm512_loadu_ps(src + j * src_stride);
  for (int j = 0; j < 16; j += 2) {
    t[j] = _mm512_unpacklo_ps(r[j], r[j + 1]);
    t[j + 1] = _mm512_unpackhi_ps(r[j], r[j + 1]);
  }
  for (int j = 0; j < 16; j += 4)
    for (int h = 0; h < 2; ++h) {
      const __m512d a = _mm512_castps_pd(t[j + h]), b = _mm512_castps_pd(t[j + h + 2]);
      r[j + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
      r[j + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    }
  for (int j = 0; j < 16; j += 8)
    for (int h = 0; h < 4; ++h) {
      t[j + h] = _mm512_shuffle_f32x4(r[j + h], r[j + h + 4], 0x88);
      t[j + h + 4] = _mm512_shuffle_f32x4(r[j + h], r[j + h + 4], 0xdd);
    }
  for (int h = 0; h < 8; ++h) {
    _mm512_storeu_ps(dst + h * dst_stride, _mm512_shuffle_f32x4(t[h], t[h + 8], 0x88));
    _mm512_storeu_ps(dst + (h + 8) * dst_stride, _mm512_shuffle_f32x4(t[h], t[h + 8], 0xdd));
  }
}
#pragma GCC diagnostic pop

}  // namespace sparsekit::cpu

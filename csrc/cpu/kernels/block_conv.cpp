#include "block_conv.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

namespace sparsekit::cpu {
namespace {

constexpr int64_t TP = kTilePositions;
static_assert(TP % 16 == 0, "tiles are whole 16-lane chunks");
constexpr int kRowsPerMicro = 6;  // 6 rows x 64 positions = 24 of the 32 AVX-512 registers

// ---- element conversions (activations may be bf16 / fp16; all arithmetic is fp32) ----

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
float from_float<float>(float f) { return f; }
template <>
uint16_t from_float<uint16_t>(float f) {  // round to nearest even, NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
template <>
_Float16 from_float<_Float16>(float f) { return _Float16(f); }

// ---- register-blocked micro-kernel: acc[m][0:TP] += sum_k w[m, k] * x[k][0:TP] ----
// x[k] points at the gathered panel row of the block's k-th column.

typedef float vec16 __attribute__((vector_size(64), aligned(4), may_alias));

template <int M>
inline __attribute__((always_inline)) void micro(int64_t kc, const float* w, int64_t ldw,
                                                 const float* const* x_rows, float* const* acc) {
  vec16 c[M][4];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < 4; ++j) c[m][j] = *reinterpret_cast<const vec16*>(acc[m] + 16 * j);
  for (int64_t k = 0; k < kc; ++k) {
    const vec16* x = reinterpret_cast<const vec16*>(x_rows[k]);
    const vec16 x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3];
    for (int m = 0; m < M; ++m) {
      const float a = w[m * ldw + k];
      c[m][0] += a * x0;
      c[m][1] += a * x1;
      c[m][2] += a * x2;
      c[m][3] += a * x3;
    }
  }
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < 4; ++j) *reinterpret_cast<vec16*>(acc[m] + 16 * j) = c[m][j];
}

// One clone per ISA, picked at load time by the CPU's features (no illegal instruction on
// machines without AVX-512).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void tile_gemm(int64_t rows, int64_t kc, const float* w, int64_t ldw,
               const float* const* x_rows, float* const* acc) {
  int64_t m = 0;
  for (; m + kRowsPerMicro <= rows; m += kRowsPerMicro)
    micro<kRowsPerMicro>(kc, w + m * ldw, ldw, x_rows, acc + m);
  if (m + 4 <= rows) {
    micro<4>(kc, w + m * ldw, ldw, x_rows, acc + m);
    m += 4;
  }
  if (m + 2 <= rows) {
    micro<2>(kc, w + m * ldw, ldw, x_rows, acc + m);
    m += 2;
  }
  if (m < rows) micro<1>(kc, w + m * ldw, ldw, x_rows, acc + m);
}

// Output positions of one tile, decoded once: where each output element goes, and for each
// kernel offset (kh, kw) the input element each position reads (relative to its channel's
// base), or -1 where it falls in the padding.
constexpr int64_t kLanes = 16;  // positions per gather chunk (one AVX-512 register)

struct TilePositions {
  int64_t count = 0;
  int64_t out_base[TP];          // n * out_stride[0] + oh * out_stride[2] + ow * out_stride[3]
  std::vector<int64_t> source;   // [KH * KW][TP]
  std::vector<uint8_t> contiguous;  // [KH * KW][TP / kLanes]: the chunk reads consecutive inputs
};

void decode_tile(const BlockConvParams& p, int64_t tile, TilePositions& t) {
  const ConvShape& s = p.shape;
  const int64_t plane = s.OH * s.OW, total = s.N * plane, kernel_area = s.KH * s.KW;
  const int64_t q0 = tile * TP;
  t.count = std::min(TP, total - q0);
  t.source.assign(kernel_area * TP, -1);
  for (int64_t i = 0; i < t.count; ++i) {
    const int64_t q = q0 + i, n = q / plane, oh = (q % plane) / s.OW, ow = q % s.OW;
    t.out_base[i] = n * p.out_stride[0] + oh * p.out_stride[2] + ow * p.out_stride[3];
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dil_h;
      if (ih < 0 || ih >= s.H) continue;
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        const int64_t iw = ow * s.stride_w - s.pad_w + kw * s.dil_w;
        if (iw >= 0 && iw < s.W)
          t.source[(kh * s.KW + kw) * TP + i] =
              n * p.in_stride[0] + ih * p.in_stride[2] + iw * p.in_stride[3];
      }
    }
  }
  t.contiguous.assign(kernel_area * (TP / kLanes), 0);
  for (int64_t r = 0; r < kernel_area; ++r)
    for (int64_t c = 0; c < TP / kLanes; ++c) {
      const int64_t* chunk = t.source.data() + r * TP + c * kLanes;
      bool consecutive = chunk[0] >= 0;
      for (int64_t j = 1; j < kLanes && consecutive; ++j) consecutive = chunk[j] == chunk[0] + j;
      t.contiguous[r * (TP / kLanes) + c] = consecutive;
    }
}

// One panel row: dst[i] = src[source[i]], 0 where source[i] < 0 (padding and past the tile's
// last position); chunks that read consecutive inputs are plain vector loads, the others
// masked vector gathers. Cloned per ISA.
template <typename T>
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void gather_row(const T* src, const int64_t* source, const uint8_t* contiguous, float* dst) {
  for (int64_t c = 0; c < TP / kLanes; ++c) {
    const int64_t* at = source + c * kLanes;
    float* out = dst + c * kLanes;
    if (contiguous[c]) {
      const T* first = src + at[0];
      for (int64_t j = 0; j < kLanes; ++j) out[j] = to_float(first[j]);
    } else {
      for (int64_t j = 0; j < kLanes; ++j) out[j] = at[j] >= 0 ? to_float(src[at[j]]) : 0.f;
    }
  }
}

// Implicit im2col of the columns cols[0:kc] (in channel_base's group) for the tile. Only this
// tile x the used columns is ever materialised, never the full column matrix.
template <typename T>
void gather_panel(const BlockConvParams& p, const TilePositions& t, int64_t channel_base,
                  const int32_t* cols, int64_t kc, float* panel) {
  const T* x = static_cast<const T*>(p.input);
  const int64_t kernel_area = p.shape.KH * p.shape.KW;
  for (int64_t k = 0; k < kc; ++k) {
    const int64_t col = cols[k];
    const T* channel = x + (channel_base + col / kernel_area) * p.in_stride[1];
    const int64_t offset = col % kernel_area;
    gather_row(channel, t.source.data() + offset * TP,
               t.contiguous.data() + offset * (TP / kLanes), panel + k * TP);
  }
}

// Per call, per group: the columns some block uses (each gathered once per tile, however many
// blocks share it), the blocks in index order, and each block column's slot in the panel.
struct GroupColumns {
  std::vector<int32_t> used;     // sorted
  std::vector<int64_t> blocks;   // block indices, ascending
};

struct ColumnPlan {
  std::vector<GroupColumns> groups;
  std::vector<int32_t> slot;  // per entry of col_idx: its row in the group's panel
  int64_t max_used = 0;
};

ColumnPlan plan_columns(const BlockConvParams& p) {
  const ConvShape& s = p.shape;
  const BlockIndex& b = p.blocks;
  const int64_t rows_per_group = s.K / s.groups;
  const int64_t cols = (s.C / s.groups) * s.KH * s.KW;
  ColumnPlan plan;
  plan.groups.resize(s.groups);
  plan.slot.resize(b.col_ptr[b.num_blocks]);
  for (int64_t blk = 0; blk < b.num_blocks; ++blk)
    plan.groups[b.row_idx[b.row_ptr[blk]] / rows_per_group].blocks.push_back(blk);
  std::vector<int32_t> slot_of(cols);
  for (GroupColumns& g : plan.groups) {
    if (g.blocks.empty()) continue;
    std::fill(slot_of.begin(), slot_of.end(), -1);
    for (int64_t blk : g.blocks)
      for (int64_t j = b.col_ptr[blk]; j < b.col_ptr[blk + 1]; ++j) slot_of[b.col_idx[j]] = 0;
    for (int64_t c = 0; c < cols; ++c)
      if (slot_of[c] == 0) {
        slot_of[c] = int32_t(g.used.size());
        g.used.push_back(int32_t(c));
      }
    for (int64_t blk : g.blocks)
      for (int64_t j = b.col_ptr[blk]; j < b.col_ptr[blk + 1]; ++j)
        plan.slot[j] = slot_of[b.col_idx[j]];
    plan.max_used = std::max(plan.max_used, int64_t(g.used.size()));
  }
  return plan;
}

template <typename T>
void run_tiles(const BlockConvParams& p, int64_t tile_begin, int64_t tile_end) {
  const ConvShape& s = p.shape;
  const BlockIndex& b = p.blocks;
  const T* values = static_cast<const T*>(p.values);
  const T* bias = static_cast<const T*>(p.bias);
  const int64_t channels_per_group = s.C / s.groups;
  const ColumnPlan plan = plan_columns(p);

  std::vector<float> acc(s.K * TP), panel(plan.max_used * TP), weights;
  std::vector<float*> rows;
  std::vector<const float*> x_rows;
  TilePositions t;
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    decode_tile(p, tile, t);
    for (int64_t k = 0; k < s.K; ++k)
      std::fill_n(acc.data() + k * TP, TP, bias ? to_float(bias[k]) : 0.f);

    for (int64_t g = 0; g < s.groups; ++g) {
      const GroupColumns& group = plan.groups[g];
      if (group.blocks.empty()) continue;
      gather_panel<T>(p, t, g * channels_per_group, group.used.data(),
                      int64_t(group.used.size()), panel.data());
      for (int64_t blk : group.blocks) {
        const int64_t nr = b.row_ptr[blk + 1] - b.row_ptr[blk];
        const int64_t nc = b.col_ptr[blk + 1] - b.col_ptr[blk];
        rows.resize(nr);
        for (int64_t r = 0; r < nr; ++r)
          rows[r] = acc.data() + int64_t(b.row_idx[b.row_ptr[blk] + r]) * TP;
        x_rows.resize(nc);
        for (int64_t j = 0; j < nc; ++j)
          x_rows[j] = panel.data() + int64_t(plan.slot[b.col_ptr[blk] + j]) * TP;
        const T* tile_values = values + b.val_ptr[blk];
        const float* w;
        if constexpr (std::is_same_v<T, float>) {
          w = tile_values;
        } else {
          weights.resize(nr * nc);
          for (int64_t i = 0; i < nr * nc; ++i) weights[i] = to_float(tile_values[i]);
          w = weights.data();
        }
        tile_gemm(nr, nc, w, nc, x_rows.data(), rows.data());
      }
    }

    T* y = static_cast<T*>(p.output);
    for (int64_t k = 0; k < s.K; ++k) {
      const float* a = acc.data() + k * TP;
      const int64_t channel_off = k * p.out_stride[1];
      for (int64_t i = 0; i < t.count; ++i) {
        const float v = p.relu ? std::max(a[i], 0.f) : a[i];
        y[t.out_base[i] + channel_off] = from_float<T>(v);
      }
    }
  }
}

}  // namespace

int64_t num_tiles(const ConvShape& s) { return (s.N * s.OH * s.OW + TP - 1) / TP; }

void block_conv2d_tiles(const BlockConvParams& p, int64_t tile_begin, int64_t tile_end) {
  switch (p.dtype) {
    case DType::Float32: return run_tiles<float>(p, tile_begin, tile_end);
    case DType::BFloat16: return run_tiles<uint16_t>(p, tile_begin, tile_end);
    case DType::Float16: return run_tiles<_Float16>(p, tile_begin, tile_end);
  }
}

}  // namespace sparsekit::cpu

#include "block_conv.h"

#include <algorithm>
#include <chrono>

#include "elements.h"

namespace sparsekit::cpu {
namespace {

constexpr int64_t TP = kTilePositions;
constexpr int kRows = 6;  // 6 rows x 4 vectors = 24 of the 32 AVX-512 registers

// ---- register-blocked micro-kernel: acc[m][0:TP] += sum_k w[m, k] * x[offset[k] + q0 + 0:TP] ----

template <int M>
inline __attribute__((always_inline)) void micro(const RowGroup& g, int64_t m, const float* values,
                                                 const int64_t* val_ptr, const float* x,
                                                 const int64_t* offsets, float* acc) {
  vec16 c[M][4];
  for (int r = 0; r < M; ++r)
    for (int j = 0; j < 4; ++j)
      c[r][j] = *reinterpret_cast<const vec16*>(acc + g.rows[m + r] * TP + 16 * j);
  for (const Segment& s : g.segments) {
    const float* w = values + val_ptr[s.block] + m * s.columns;
    const int64_t* off = offsets + s.first_column;
    for (int64_t k = 0; k < s.columns; ++k) {
      const vec16* v = reinterpret_cast<const vec16*>(x + off[k]);
      const vec16 a0 = v[0], a1 = v[1], a2 = v[2], a3 = v[3];
      for (int r = 0; r < M; ++r) {
        const float b = w[r * s.columns + k];
        c[r][0] += b * a0;
        c[r][1] += b * a1;
        c[r][2] += b * a2;
        c[r][3] += b * a3;
      }
    }
  }
  for (int r = 0; r < M; ++r)
    for (int j = 0; j < 4; ++j)
      *reinterpret_cast<vec16*>(acc + g.rows[m + r] * TP + 16 * j) = c[r][j];
}

// One clone per ISA, picked at load time by the CPU's features (no illegal instruction on
// machines without AVX-512).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void group_tile(const RowGroup& g, const float* values, const int64_t* val_ptr, const float* x,
                const int64_t* offsets, float* acc) {
  const int64_t rows = int64_t(g.rows.size());
  int64_t m = 0;
  for (; m + kRows <= rows; m += kRows) micro<kRows>(g, m, values, val_ptr, x, offsets, acc);
  if (m + 4 <= rows) {
    micro<4>(g, m, values, val_ptr, x, offsets, acc);
    m += 4;
  }
  if (m + 2 <= rows) {
    micro<2>(g, m, values, val_ptr, x, offsets, acc);
    m += 2;
  }
  if (m < rows) micro<1>(g, m, values, val_ptr, x, offsets, acc);
}

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Input coordinate t*dil - pad of tap t, for output 0, split as phase + stride * shift; the
// planes hold the input coordinates that outputs [0, out) read, with zeros shared between
// consecutive rows (and images): the right padding of one is the left padding of the next.
PlaneAxis plane_axis(int64_t in, int64_t out, int64_t taps, int64_t stride, int64_t pad,
                     int64_t dil) {
  PlaneAxis a;
  a.stride = stride;
  int64_t lo = 0, hi = 0;
  for (int64_t t = 0; t < taps; ++t) {
    const int64_t d = t * dil - pad, shift = floor_div(d, stride);
    a.phase.push_back(d - shift * stride);
    a.shift.push_back(shift);
    lo = std::min(lo, shift), hi = std::max(hi, shift);
  }
  a.lead = -lo;  // shift[0] <= 0: reads start at or before the data
  const int64_t last_read = out - 1 + hi, fullest = (in + stride - 1) / stride;
  a.data = std::max<int64_t>(0, std::min(last_read + 1, fullest));
  const int64_t trail = last_read + 1 - a.data;
  // Reads past the extent land in the next row's (image's) lead zeros: trail - overlap <= lead.
  a.extent = std::max(a.data + std::max(a.lead, trail), out);
  return a;
}

}  // namespace

BlockConv::BlockConv(const BlockConvParams& p) : p_(p) {
  const ConvShape& s = p.shape;
  h_ = plane_axis(s.H, s.OH, s.KH, s.stride_h, s.pad_h, s.dil_h);
  w_ = plane_axis(s.W, s.OW, s.KW, s.stride_w, s.pad_w, s.dil_w);
  image_ = h_.extent * w_.extent;
  positions_ = s.N * image_;
  // A valid position's reads wrap at most into the next image's lead rows (plus one row).
  plane_ = positions_ + (h_.lead + 1) * w_.extent;
  const int64_t phases = h_.stride * w_.stride;

  // Column offsets, in the blocks' own column order.
  const BlockIndex& b = p.blocks;
  const int64_t kernel_area = s.KH * s.KW, channels_per_group = s.C / s.groups;
  const int64_t rows_per_group = s.K / s.groups;
  offsets_.resize(b.col_ptr[b.num_blocks]);
  for (int64_t blk = 0; blk < b.num_blocks; ++blk) {
    const int64_t channel0 = (b.row_idx[b.row_ptr[blk]] / rows_per_group) * channels_per_group;
    for (int64_t j = b.col_ptr[blk]; j < b.col_ptr[blk + 1]; ++j) {
      const int64_t col = b.col_idx[j], kh = (col % kernel_area) / s.KW, kw = col % s.KW;
      const int64_t plane = (channel0 + col / kernel_area) * phases +
                            h_.phase[kh] * w_.stride + w_.phase[kw];
      offsets_[j] = plane * plane_ + (h_.shift[kh] + h_.lead) * w_.extent + w_.shift[kw] +
                    w_.lead;
    }
  }
  // Positions of the last tile past the grid read at most an image and a tile past the last
  // plane: zeros there, results dropped. The buffer is reused from call to call, not refilled:
  // pack writes every float of the planes.
  static thread_local std::vector<float> buffer;
  const int64_t floats = s.C * phases * plane_ + image_ + TP;
  if (int64_t(buffer.size()) < floats) buffer.resize(floats);
  planes_ = buffer.data();
  std::fill_n(planes_ + s.C * phases * plane_, image_ + TP, 0.f);

  // Tiles in fp32: the input's own values when it is fp32, else converted once per call.
  values_ = static_cast<const float*>(p.values);
  if (p.dtype != DType::Float32) {
    const int64_t n = b.val_ptr[b.num_blocks];
    weights_.resize(n);
    if (p.dtype == DType::BFloat16)
      for (int64_t i = 0; i < n; ++i) weights_[i] = to_float(static_cast<const uint16_t*>(p.values)[i]);
    else
      for (int64_t i = 0; i < n; ++i) weights_[i] = to_float(static_cast<const _Float16*>(p.values)[i]);
    values_ = weights_.data();
  }
  groups_ = group_blocks(b);
  parts_ = one_row_set(groups_, s.K);  // split only when asked: no grouping work per call
}

int64_t BlockConv::split_rows(int64_t parts) {
  parts_ = split_row_sets(groups_, p_.shape.K, parts);
  return num_parts();
}

int64_t BlockConv::pack_units() const { return p_.shape.C; }

int64_t BlockConv::num_tiles() const { return (positions_ + TP - 1) / TP; }

// Every float of channels [begin, end)'s planes: plane (c, phase_h, phase_w) holds input rows
// phase_h, phase_h + stride_h, ... and columns likewise, between zeros.
template <typename T>
void BlockConv::pack_channels(int64_t begin, int64_t end) {
  const ConvShape& s = p_.shape;
  const T* x = static_cast<const T*>(p_.input);
  const int64_t sh = h_.stride, sw = w_.stride, width = w_.extent;
  for (int64_t c = begin; c < end; ++c)
    for (int64_t rh = 0; rh < sh; ++rh)
      for (int64_t rw = 0; rw < sw; ++rw) {
        float* plane = planes_ + ((c * sh + rh) * sw + rw) * plane_;
        std::fill_n(plane, plane_, 0.f);
        const int64_t rows = std::min(h_.data, (s.H - rh + sh - 1) / sh);
        const int64_t cols = std::min(w_.data, (s.W - rw + sw - 1) / sw);
        for (int64_t n = 0; n < s.N; ++n)
          for (int64_t a = 0; a < rows; ++a) {
            const T* src = x + n * p_.in_stride[0] + c * p_.in_stride[1] +
                           (a * sh + rh) * p_.in_stride[2] + rw * p_.in_stride[3];
            float* dst = plane + n * image_ + (a + h_.lead) * width + w_.lead;
            const int64_t step = sw * p_.in_stride[3];
            for (int64_t b = 0; b < cols; ++b) dst[b] = to_float(src[b * step]);
          }
      }
}

void BlockConv::pack(int64_t begin, int64_t end) {
  switch (p_.dtype) {
    case DType::Float32: return pack_channels<float>(begin, end);
    case DType::BFloat16: return pack_channels<uint16_t>(begin, end);
    case DType::Float16: return pack_channels<_Float16>(begin, end);
  }
}

// Bias, ReLU and the output, written once per element for the tile's positions, in the
// output's memory order (channels innermost when it is channels_last).
template <typename T>
void BlockConv::store_tile(int64_t tile, const RowSet& part, const float* acc) const {
  const ConvShape& s = p_.shape;
  T* y = static_cast<T*>(p_.output);
  const T* bias = static_cast<const T*>(p_.bias);
  int64_t count = 0, lane[TP], out_base[TP];
  for (int64_t i = 0; i < TP; ++i) {
    const int64_t q = tile * TP + i, n = q / image_;
    const int64_t oh = (q % image_) / w_.extent, ow = q % w_.extent;
    if (n >= s.N || oh >= s.OH || ow >= s.OW) continue;  // padding between rows and images
    lane[count] = i;
    out_base[count++] = n * p_.out_stride[0] + oh * p_.out_stride[2] + ow * p_.out_stride[3];
  }
  auto store = [&](int64_t j, int64_t k) {
    const float v = acc[k * TP + lane[j]] + (bias ? to_float(bias[k]) : 0.f);
    y[out_base[j] + k * p_.out_stride[1]] = from_float<T>(p_.relu ? std::max(v, 0.f) : v);
  };
  if (p_.out_stride[1] == 1) {
    for (int64_t j = 0; j < count; ++j)
      for (int32_t k : part.rows) store(j, k);
  } else {
    for (int32_t k : part.rows)
      for (int64_t j = 0; j < count; ++j) store(j, k);
  }
}

void BlockConv::run_tiles(int64_t begin, int64_t end, TileTimes* times) const {
  using clock = std::chrono::steady_clock;
  const auto ns = [](clock::time_point a, clock::time_point b) {
    return int64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count());
  };
  std::vector<float> acc(p_.shape.K * TP);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t tile = item / num_parts();
    const RowSet& part = parts_[item % num_parts()];
    const auto start = times ? clock::now() : clock::time_point();
    for (int32_t k : part.rows) std::fill_n(acc.data() + k * TP, TP, 0.f);
    for (size_t g : part.groups)
      group_tile(groups_[g], values_, p_.blocks.val_ptr, planes_ + tile * TP, offsets_.data(),
                 acc.data());
    const auto computed = times ? clock::now() : clock::time_point();
    switch (p_.dtype) {
      case DType::Float32: store_tile<float>(tile, part, acc.data()); break;
      case DType::BFloat16: store_tile<uint16_t>(tile, part, acc.data()); break;
      case DType::Float16: store_tile<_Float16>(tile, part, acc.data()); break;
    }
    if (times) {
      times->micro_ns += ns(start, computed);
      times->store_ns += ns(computed, clock::now());
    }
  }
}

}  // namespace sparsekit::cpu

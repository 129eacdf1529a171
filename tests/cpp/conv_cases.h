// Random convolutions and packs for the C++ kernel tests, and the dense convolution in double
// they are checked against.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "common/block_params.h"

namespace sparsekit::testing {

struct Case {
  int64_t N, C, H, W, K, KH, KW, stride, pad, dil, groups;
  bool relu, bias, channels_last;
};

struct Packed {
  std::vector<int32_t> rows, cols;
  std::vector<int64_t> ptr;  // [3, nb + 1]
  std::vector<float> values;
};

// Random blocks inside each group; blocks may share rows (their sums must add up), or have
// the same rows (one row group, with columns both blocks have). With all_columns, each block
// keeps every column (whole channels, consecutive at every tap).
inline Packed random_blocks(const Case& c, std::mt19937& rng, bool all_columns = false) {
  const int64_t rpg = c.K / c.groups, cols = (c.C / c.groups) * c.KH * c.KW;
  std::vector<int64_t> row_ptr{0}, col_ptr{0}, val_ptr{0};
  Packed p;
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int64_t g = 0; g < c.groups; ++g)
    for (int blk = 0, kept = 0; blk < 2; ++blk) {
      if (kept == 1 && rng() % 2 == 0) {  // the group's first block's rows again
        const std::vector<int32_t> first(p.rows.begin() + row_ptr.end()[-2], p.rows.end());
        p.rows.insert(p.rows.end(), first.begin(), first.end());
      } else {
        for (int64_t r = 0; r < rpg; ++r)
          if (rng() % 3 != 0) p.rows.push_back(int32_t(g * rpg + r));
      }
      for (int64_t k = 0; k < cols; ++k)
        if (all_columns || rng() % 2 != 0) p.cols.push_back(int32_t(k));
      const int64_t nr = int64_t(p.rows.size()) - row_ptr.back();
      const int64_t nc = int64_t(p.cols.size()) - col_ptr.back();
      if (nr == 0 || nc == 0) {  // drop an empty draw
        p.rows.resize(row_ptr.back());
        p.cols.resize(col_ptr.back());
        continue;
      }
      for (int64_t i = 0; i < nr * nc; ++i) p.values.push_back(u(rng));
      ++kept;
      row_ptr.push_back(int64_t(p.rows.size()));
      col_ptr.push_back(int64_t(p.cols.size()));
      val_ptr.push_back(int64_t(p.values.size()));
    }
  p.ptr = row_ptr;
  p.ptr.insert(p.ptr.end(), col_ptr.begin(), col_ptr.end());
  p.ptr.insert(p.ptr.end(), val_ptr.begin(), val_ptr.end());
  return p;
}

inline int64_t out_size(int64_t in, int64_t k, const Case& c) {
  return (in + 2 * c.pad - c.dil * (k - 1) - 1) / c.stride + 1;
}

// Strides (elements) of an [N, C, H, W] tensor, NCHW or channels-last.
using Strides = std::array<int64_t, 4>;
inline Strides strides_of(int64_t C, int64_t H, int64_t W, bool channels_last) {
  return channels_last ? Strides{C * H * W, 1, W * C, C} : Strides{C * H * W, H * W, W, 1};
}

inline int64_t num_blocks(const Packed& pk) { return int64_t(pk.ptr.size()) / 3 - 1; }

inline BlockIndex index_of(const Packed& pk) {
  const int64_t nb = num_blocks(pk);
  return {pk.rows.data(), pk.cols.data(), pk.ptr.data(), pk.ptr.data() + nb + 1,
          pk.ptr.data() + 2 * (nb + 1), nb};
}

inline ConvShape shape_of(const Case& c) {
  return {c.N, c.C, c.H, c.W, c.K, out_size(c.H, c.KH, c), out_size(c.W, c.KW, c), c.KH, c.KW,
          c.stride, c.stride, c.pad, c.pad, c.dil, c.dil, c.groups};
}

// Dense weight [K, (C / groups) * KH * KW] summed from the blocks.
inline std::vector<float> dense_weight(const Case& c, const Packed& pk) {
  const int64_t cols = (c.C / c.groups) * c.KH * c.KW, nb = num_blocks(pk);
  std::vector<float> w(size_t(c.K * cols), 0.f);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t r0 = pk.ptr[b], r1 = pk.ptr[b + 1];
    const int64_t c0 = pk.ptr[nb + 1 + b], c1 = pk.ptr[nb + 2 + b];
    const int64_t v0 = pk.ptr[2 * (nb + 1) + b];
    for (int64_t i = r0; i < r1; ++i)
      for (int64_t j = c0; j < c1; ++j)
        w[pk.rows[i] * cols + pk.cols[j]] += pk.values[v0 + (i - r0) * (c1 - c0) + (j - c0)];
  }
  return w;
}

// One output element of the convolution in double, bias and ReLU included; x addressed
// through in_stride, bias nullptr for none.
inline double reference(const Case& c, const std::vector<float>& w, const float* x,
                        const int64_t* in_stride, const float* bias, int64_t n, int64_t k,
                        int64_t oh, int64_t ow) {
  const int64_t cpg = c.C / c.groups, cols = cpg * c.KH * c.KW, g = k / (c.K / c.groups);
  double acc = bias != nullptr ? bias[k] : 0.0;
  for (int64_t ci = 0; ci < cpg; ++ci)
    for (int64_t kh = 0; kh < c.KH; ++kh)
      for (int64_t kw = 0; kw < c.KW; ++kw) {
        const int64_t ih = oh * c.stride - c.pad + kh * c.dil;
        const int64_t iw = ow * c.stride - c.pad + kw * c.dil;
        if (ih < 0 || ih >= c.H || iw < 0 || iw >= c.W) continue;
        acc += double(w[k * cols + (ci * c.KH + kh) * c.KW + kw]) *
               x[n * in_stride[0] + (g * cpg + ci) * in_stride[1] + ih * in_stride[2] +
                 iw * in_stride[3]];
      }
  return c.relu && acc < 0 ? 0.0 : acc;
}

// The largest error of the outputs y (addressed through out_stride) against the reference,
// beyond a bf16 output's rounding for bf16 runs (at most 2^-9 relative; 2^-8 allowed);
// infinite when an output is NaN (never written).
inline double max_output_error(const Case& c, const std::vector<float>& w, const float* x,
                               const Strides& in_stride, const float* bias, const float* y,
                               const Strides& out_stride, bool bf16) {
  const int64_t OH = out_size(c.H, c.KH, c), OW = out_size(c.W, c.KW, c);
  double max_err = 0;
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t k = 0; k < c.K; ++k)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          const double want = reference(c, w, x, in_stride.data(), bias, n, k, oh, ow);
          const double got =
              y[n * out_stride[0] + k * out_stride[1] + oh * out_stride[2] + ow * out_stride[3]];
          if (std::isnan(got)) return INFINITY;
          max_err = std::fmax(max_err, std::fabs(got - want) - (bf16 ? std::fabs(want) / 256 : 0));
        }
  return max_err;
}

}  // namespace sparsekit::testing

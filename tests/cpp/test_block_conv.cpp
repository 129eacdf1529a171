// The torch-free CPU kernel against a direct convolution of the unpacked weight.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "common/block_params.h"
#include "cpu/kernels/block_conv.h"

using namespace sparsekit;

namespace {

struct Case {
  int64_t N, C, H, W, K, KH, KW, stride, pad, dil, groups;
  bool relu, bias;
};

struct Packed {
  std::vector<int32_t> rows, cols;
  std::vector<int64_t> ptr;  // [3, nb + 1]
  std::vector<float> values;
};

// Random blocks inside each group; blocks may share rows (their sums must add up).
Packed random_blocks(const Case& c, std::mt19937& rng) {
  const int64_t rpg = c.K / c.groups, cols = (c.C / c.groups) * c.KH * c.KW;
  std::vector<int64_t> row_ptr{0}, col_ptr{0}, val_ptr{0};
  Packed p;
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int64_t g = 0; g < c.groups; ++g)
    for (int blk = 0; blk < 2; ++blk) {
      for (int64_t r = 0; r < rpg; ++r)
        if (rng() % 3 != 0) p.rows.push_back(int32_t(g * rpg + r));
      for (int64_t k = 0; k < cols; ++k)
        if (rng() % 2 != 0) p.cols.push_back(int32_t(k));
      const int64_t nr = int64_t(p.rows.size()) - row_ptr.back();
      const int64_t nc = int64_t(p.cols.size()) - col_ptr.back();
      if (nr == 0 || nc == 0) {  // drop an empty draw
        p.rows.resize(row_ptr.back());
        p.cols.resize(col_ptr.back());
        continue;
      }
      for (int64_t i = 0; i < nr * nc; ++i) p.values.push_back(u(rng));
      row_ptr.push_back(int64_t(p.rows.size()));
      col_ptr.push_back(int64_t(p.cols.size()));
      val_ptr.push_back(int64_t(p.values.size()));
    }
  p.ptr = row_ptr;
  p.ptr.insert(p.ptr.end(), col_ptr.begin(), col_ptr.end());
  p.ptr.insert(p.ptr.end(), val_ptr.begin(), val_ptr.end());
  return p;
}

int run_case(const Case& c, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const int64_t OH = (c.H + 2 * c.pad - c.dil * (c.KH - 1) - 1) / c.stride + 1;
  const int64_t OW = (c.W + 2 * c.pad - c.dil * (c.KW - 1) - 1) / c.stride + 1;
  const int64_t cpg = c.C / c.groups, cols = cpg * c.KH * c.KW, rpg = c.K / c.groups;
  std::vector<float> x(c.N * c.C * c.H * c.W), bias(c.K), y(c.N * c.K * OH * OW, NAN);
  for (float& v : x) v = u(rng);
  for (float& v : bias) v = u(rng);
  Packed pk = random_blocks(c, rng);
  const int64_t nb = int64_t(pk.ptr.size()) / 3 - 1;

  // Dense weight [K, cols] summed from the blocks.
  std::vector<float> w(c.K * cols, 0.f);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t r0 = pk.ptr[b], r1 = pk.ptr[b + 1];
    const int64_t c0 = pk.ptr[nb + 1 + b], c1 = pk.ptr[nb + 2 + b];
    const int64_t v0 = pk.ptr[2 * (nb + 1) + b];
    for (int64_t i = r0; i < r1; ++i)
      for (int64_t j = c0; j < c1; ++j)
        w[pk.rows[i] * cols + pk.cols[j]] += pk.values[v0 + (i - r0) * (c1 - c0) + (j - c0)];
  }

  BlockConvParams p{};
  p.shape = {c.N, c.C, c.H, c.W, c.K, OH, OW, c.KH, c.KW, c.stride, c.stride,
             c.pad, c.pad, c.dil, c.dil, c.groups};
  p.blocks = {pk.rows.data(), pk.cols.data(), pk.ptr.data(), pk.ptr.data() + nb + 1,
              pk.ptr.data() + 2 * (nb + 1), nb};
  if (const char* err = check_block_index(p.shape, p.blocks, int64_t(pk.rows.size()),
                                          int64_t(pk.cols.size()), int64_t(pk.values.size()))) {
    std::printf("FAIL: valid blocks rejected: %s\n", err);
    return 1;
  }
  p.input = x.data();
  const int64_t in_stride[4] = {c.C * c.H * c.W, c.H * c.W, c.W, 1};
  const int64_t out_stride[4] = {c.K * OH * OW, OH * OW, OW, 1};
  std::memcpy(p.in_stride, in_stride, sizeof(in_stride));
  std::memcpy(p.out_stride, out_stride, sizeof(out_stride));
  p.output = y.data();
  p.values = pk.values.data();
  p.bias = c.bias ? bias.data() : nullptr;
  p.dtype = DType::Float32;
  p.relu = c.relu;
  cpu::BlockConv conv(p);
  const int64_t channels = conv.num_channels(), tiles = conv.num_tiles();
  conv.pack_input(0, channels / 2);  // two ranges each, as two threads would run them
  conv.pack_input(channels / 2, channels);
  conv.run_tiles(0, tiles / 2);
  conv.run_tiles(tiles / 2, tiles);

  // The rows split into sets (as a call with few tiles runs): the same bits.
  std::vector<float> y_split(y.size(), NAN);
  p.output = y_split.data();
  cpu::BlockConv split(p);
  const int64_t parts = split.split_rows(3), items = split.num_tiles() * parts;
  split.pack_input(0, channels);
  split.run_tiles(0, items / 2);
  split.run_tiles(items / 2, items);
  const bool same = std::memcmp(y.data(), y_split.data(), y.size() * sizeof(float)) == 0;

  double max_err = 0;
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t k = 0; k < c.K; ++k)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          double acc = c.bias ? bias[k] : 0.0;
          const int64_t g = k / rpg;
          for (int64_t ci = 0; ci < cpg; ++ci)
            for (int64_t kh = 0; kh < c.KH; ++kh)
              for (int64_t kw = 0; kw < c.KW; ++kw) {
                const int64_t ih = oh * c.stride - c.pad + kh * c.dil;
                const int64_t iw = ow * c.stride - c.pad + kw * c.dil;
                if (ih < 0 || ih >= c.H || iw < 0 || iw >= c.W) continue;
                acc += double(w[k * cols + (ci * c.KH + kh) * c.KW + kw]) *
                       x[((n * c.C + g * cpg + ci) * c.H + ih) * c.W + iw];
              }
          if (c.relu && acc < 0) acc = 0;
          const double got = y[((n * c.K + k) * OH + oh) * OW + ow];
          max_err = std::fmax(max_err, std::fabs(got - acc));  // NaN (unwritten) stays NaN
          if (std::isnan(got)) max_err = INFINITY;
        }
  const bool ok = max_err <= 1e-4 && same;
  std::printf("%s%s N=%lld C=%lld K=%lld %lldx%lld k=%lldx%lld s=%lld p=%lld d=%lld g=%lld: "
              "%lld blocks in %lld row sets, max err %.3g\n",
              ok ? "ok  " : "FAIL", same ? "" : " (split rows differ)", (long long)c.N, (long long)c.C, (long long)c.K,
              (long long)c.H, (long long)c.W, (long long)c.KH, (long long)c.KW,
              (long long)c.stride, (long long)c.pad, (long long)c.dil, (long long)c.groups,
              (long long)nb, (long long)parts, max_err);
  return ok ? 0 : 1;
}

int check_rejects_bad_index() {
  // One block whose rows span two groups: must be rejected.
  int32_t rows[] = {0, 3}, cols[] = {0};
  int64_t ptr[] = {0, 2, 0, 1, 0, 2};
  ConvShape s{1, 4, 1, 1, 4, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 2};
  BlockIndex b{rows, cols, ptr, ptr + 2, ptr + 4, 1};
  const char* err = check_block_index(s, b, 2, 1, 2);
  if (err == nullptr || std::strstr(err, "groups") == nullptr) {
    std::printf("FAIL: a block spanning groups was accepted\n");
    return 1;
  }
  cols[0] = 4;  // one past the last of 4 columns
  s.groups = 1;
  rows[1] = 1;
  err = check_block_index(s, b, 2, 1, 2);
  if (err == nullptr || std::strstr(err, "column") == nullptr) {
    std::printf("FAIL: an out-of-range column was accepted\n");
    return 1;
  }
  std::printf("ok   malformed block indexes rejected\n");
  return 0;
}

}  // namespace

int main() {
  const Case cases[] = {
      {2, 8, 7, 7, 16, 3, 3, 1, 1, 1, 1, true, true},
      {1, 3, 5, 9, 7, 3, 3, 2, 0, 1, 1, false, true},
      {3, 6, 9, 9, 6, 3, 3, 1, 2, 2, 2, false, false},
      {2, 4, 6, 6, 4, 3, 3, 1, 1, 1, 4, true, true},  // depthwise
      {1, 33, 1, 100, 70, 1, 1, 1, 0, 1, 1, false, true},  // linear-like, 100 positions
      {4, 16, 8, 8, 32, 5, 5, 2, 2, 1, 1, false, true},
      {3, 6, 4, 4, 12, 3, 3, 1, 3, 2, 1, true, true},     // padding past the dilated kernel
      {2, 4, 9, 7, 8, 1, 1, 1, 2, 1, 2, false, false},    // 1x1 with padding: reads all zeros
      {2, 5, 11, 10, 6, 2, 2, 3, 1, 2, 1, true, true},    // stride 3, dilation 2, even kernel
  };
  int failures = check_rejects_bad_index();
  unsigned seed = 1;
  for (const Case& c : cases) failures += run_case(c, seed++);
  std::printf("%d passed, %d failed\n", int(sizeof(cases) / sizeof(cases[0])) + 1 - failures,
              failures);
  return failures == 0 ? 0 : 1;
}

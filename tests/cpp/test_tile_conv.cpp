// The host part of the CUDA tensor-core block conv, run on the CPU: its prepacked layout
// (tile_layout.h), grid, thread shares and index arithmetic (tile_conv.h), driven as the
// kernel's CTAs and threads drive them, against a direct convolution of the unpacked weight.
// Every shared-memory element a K-tile needs must be written by exactly one thread, and every
// output element by exactly one CTA.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "conv_cases.h"
#include "cpu/kernels/elements.h"
#include "cuda/kernels/tile_conv.h"
#include "cuda/kernels/tile_layout.h"

using namespace sparsekit;
using namespace sparsekit::testing;
using namespace sparsekit::tiles;

namespace {

template <typename T>
float value(const T* data, int64_t i) {
  if constexpr (std::is_same_v<T, float>) return data[i];
  else return cpu::to_float(data[i]);
}

// The kernel's CTAs and threads, one after another: per K-tile, each thread's share of the
// input gather (16-byte chunks where the kernel takes them, else channel by channel) and of
// the weight copy; then the tile's MMAs in fp32 and its epilogue. Returns false (and says
// why) when a shared-memory or output element is written other than once.
template <typename T>
bool emulate(const TileConvParams& p, const TileLayout& layout) {
  constexpr int bytes = int(sizeof(T)), chunk = chunk_elements(bytes), bm = positions_per_cta(bytes);
  constexpr GatherShare share(bytes);
  const T* x = static_cast<const T*>(p.input);
  const T* w = reinterpret_cast<const T*>(layout.weights.data());
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.output);
  const int64_t end = p.shape.N * p.shape.OH * p.shape.OW;
  const Grid grid = tile_grid(p, bytes);
  std::vector<int> written(size_t(p.shape.N * p.shape.K * p.shape.OH * p.shape.OW), 0);
  for (int64_t bx = 0; bx < grid.x; ++bx)
    for (int64_t tile = 0; tile < grid.y; ++tile) {
      const int64_t m0 = bx * bm;
      std::vector<float> acc(size_t(bm) * kRows, 0.f);
      for (int32_t ktile = p.tile_ptr[tile]; ktile < p.tile_ptr[tile + 1]; ++ktile) {
        std::vector<float> a(size_t(bm) * kCols), b(size_t(kRows) * kCols);
        std::vector<int> a_count(a.size(), 0), b_count(b.size(), 0);
        const TapShift shift = tap_shift(p, p.taps[ktile]);
        for (int thread = 0; thread < kThreads; ++thread) {
          const int column = share.column(thread), first_row = share.first_row(thread);
          const int32_t first = p.chunk_first[ktile * share.chunks_per_row + column];
          const int32_t* channels = p.channels + int64_t(ktile) * kCols + column * chunk;
          for (int row = first_row; row < bm; row += share.row_step) {
            const int64_t offset = tap_offset(p, position(p, m0 + row), shift);
            for (int e = 0; e < chunk; ++e) {
              const size_t at = size_t(row) * kCols + size_t(column * chunk + e);
              if (p.vector_loads && first >= 0)
                a[at] = offset >= 0 ? value(x, offset + first + e) : 0.f;
              else
                a[at] = offset >= 0 && channels[e] >= 0 ? value(x, offset + channels[e]) : 0.f;
              ++a_count[at];
            }
          }
          for (int row = first_row; row < kRows; row += share.row_step)
            for (int e = 0; e < chunk; ++e) {
              const size_t at = size_t(row) * kCols + size_t(column * chunk + e);
              b[at] = value(w, int64_t(ktile) * kRows * kCols + int64_t(at));
              ++b_count[at];
            }
        }
        for (size_t i = 0; i < a_count.size(); ++i)
          if (a_count[i] != 1) return std::printf("input tile element written %d times\n", a_count[i]), false;
        for (size_t i = 0; i < b_count.size(); ++i)
          if (b_count[i] != 1) return std::printf("weight tile element written %d times\n", b_count[i]), false;
        for (int m = 0; m < bm; ++m)
          for (int n = 0; n < kRows; ++n)
            for (int k = 0; k < kCols; ++k)
              acc[size_t(m) * kRows + size_t(n)] += a[size_t(m) * kCols + size_t(k)] * b[size_t(n) * kCols + size_t(k)];
      }
      for (int m = 0; m < bm; ++m)
        for (int n = 0; n < kRows; ++n) {
          const int64_t q = m0 + m;
          const int32_t row = p.tile_rows[tile * kRows + n];
          if (row < 0 || q >= end) continue;
          float v = acc[size_t(m) * kRows + size_t(n)] + (bias != nullptr ? value(bias, row) : 0.f);
          if (p.relu) v = std::fmax(v, 0.f);
          const int64_t at = output_offset(p, q, row);
          y[at] = cpu::from_float<T>(v);
          ++written[size_t(at)];
        }
    }
  for (int count : written)
    if (count != 1) return std::printf("output element written %d times\n", count), false;
  return true;
}

// Block 0 holds its first row a second time, with weights of its own: both must add up.
void repeat_first_row(Packed& pk, std::mt19937& rng) {
  const int64_t nb = num_blocks(pk), cols = pk.ptr[nb + 2] - pk.ptr[nb + 1];
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> weights(static_cast<size_t>(cols));
  for (float& v : weights) v = u(rng);
  pk.rows.insert(pk.rows.begin() + pk.ptr[1], pk.rows[0]);
  pk.values.insert(pk.values.begin() + pk.ptr[2 * (nb + 1) + 1], weights.begin(), weights.end());
  for (int64_t b = 1; b <= nb; ++b) pk.ptr[b] += 1, pk.ptr[2 * (nb + 1) + b] += cols;
}

// One case in fp32 (T = float) or bf16 (uint16_t): input channels-last, output in the case's
// layout.
template <typename T>
int run_case(const Case& c, bool all_columns, bool repeat_row, unsigned seed) {
  constexpr bool bf16 = std::is_same_v<T, uint16_t>;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const ConvShape shape = shape_of(c);
  std::vector<float> x(size_t(c.N * c.C * c.H * c.W)), bias(size_t(c.K));
  for (float& v : x) v = u(rng);
  for (float& v : bias) v = u(rng);
  Packed pk = random_blocks(c, rng, all_columns);
  if (repeat_row) repeat_first_row(pk, rng);
  std::vector<T> x_t(x.size()), bias_t(bias.size()), values_t(pk.values.size());
  std::vector<T> y_t(size_t(c.N * c.K * shape.OH * shape.OW), cpu::from_float<T>(NAN));
  for (auto [from, to] : {std::pair{&x, &x_t}, {&bias, &bias_t}, {&pk.values, &values_t}})
    for (size_t i = 0; i < from->size(); ++i)  // the operands as the kernel sees them
      (*to)[i] = cpu::from_float<T>((*from)[i]), (*from)[i] = value(to->data(), int64_t(i));

  const TileLayout layout = build_tile_layout(shape, index_of(pk), values_t.data(), int(sizeof(T)));
  TileConvParams p{};
  p.shape = shape;
  const Strides in_stride = strides_of(c.C, c.H, c.W, true);
  const Strides out_stride = strides_of(c.K, shape.OH, shape.OW, c.channels_last);
  std::copy(in_stride.begin(), in_stride.end(), p.in_stride);
  std::copy(out_stride.begin(), out_stride.end(), p.out_stride);
  p.input = x_t.data();
  p.output = y_t.data();
  p.tile_rows = layout.tile_rows.data();
  p.tile_ptr = layout.tile_ptr.data();
  p.taps = layout.taps.data();
  p.channels = layout.channels.data();
  p.chunk_first = layout.chunk_first.data();
  p.num_tiles = layout.num_tiles;
  p.bias = c.bias ? bias_t.data() : nullptr;
  p.dtype = bf16 ? DType::BFloat16 : DType::Float32;
  p.relu = c.relu;
  p.vector_loads = c.C % chunk_elements(int(sizeof(T))) == 0;  // the glue's test, pointer aside
  int64_t vector_chunks = 0;
  for (int32_t first : layout.chunk_first) vector_chunks += first >= 0;

  const bool covered = emulate<T>(p, layout);
  std::vector<float> y(y_t.size());
  for (size_t i = 0; i < y.size(); ++i) y[i] = value(y_t.data(), int64_t(i));
  const double err = max_output_error(c, dense_weight(c, pk), x.data(), in_stride,
                                      c.bias ? bias.data() : nullptr, y.data(), out_stride, bf16);
  const bool ok = covered && err <= 1e-4;
  std::printf("%s %s%s%s N=%lld C=%lld K=%lld %lldx%lld k=%lldx%lld s=%lld p=%lld d=%lld g=%lld: "
              "%lld tiles, %lld K-tiles, %lld of %zu chunks in 16-byte loads%s, max err %.3g\n",
              ok ? "ok  " : "FAIL", bf16 ? "bf16" : "fp32", c.channels_last ? " channels_last out" : "",
              repeat_row ? " a block's row twice" : "",
              (long long)c.N, (long long)c.C, (long long)c.K, (long long)c.H, (long long)c.W,
              (long long)c.KH, (long long)c.KW, (long long)c.stride, (long long)c.pad,
              (long long)c.dil, (long long)c.groups, (long long)layout.num_tiles,
              (long long)layout.num_ktiles(), (long long)vector_chunks, layout.chunk_first.size(),
              p.vector_loads ? "" : " (not taken: strides)", err);
  return ok ? 0 : 1;
}

}  // namespace

int main() {
  struct Run {
    Case c;
    bool all_columns, repeat_row = false;
  };
  const Run runs[] = {
      // whole channels: K-tiles of consecutive channels, 16-byte loads
      {{2, 16, 7, 7, 16, 3, 3, 1, 1, 1, 1, true, true, false}, true},
      {{3, 64, 6, 5, 130, 3, 3, 2, 1, 1, 1, false, true, true}, true},   // 3 row tiles, 2 x 64 ch
      {{1, 40, 9, 9, 72, 1, 1, 1, 0, 1, 1, true, false, false}, true},   // 1x1, 40 = 32 + 8 ch
      {{2, 32, 8, 8, 64, 3, 3, 1, 1, 1, 2, true, true, true}, true},     // 16 ch a group
      {{1, 24, 1, 300, 20, 1, 1, 1, 0, 1, 1, false, true, false}, true}, // linear-like, 3 CTAs
      // scattered columns: element gathers, odd channel counts (no 16-byte loads)
      {{2, 8, 7, 7, 16, 3, 3, 1, 1, 1, 1, true, true, false}, false},
      {{1, 3, 5, 9, 7, 3, 3, 2, 0, 1, 1, false, true, true}, false},
      {{3, 6, 9, 9, 6, 3, 3, 1, 2, 2, 2, false, false, false}, false},
      {{2, 4, 6, 6, 4, 3, 3, 1, 1, 1, 4, true, true, true}, false},      // depthwise
      {{3, 6, 4, 4, 12, 3, 3, 1, 3, 2, 1, true, true, false}, false},    // padding past the kernel
      {{2, 5, 11, 10, 6, 2, 2, 3, 1, 2, 1, true, true, false}, false},   // stride 3, dilation 2
      {{4, 16, 8, 8, 100, 5, 5, 2, 2, 1, 1, false, true, true}, false},  // 2 row tiles
      {{2, 12, 4, 4, 140, 3, 3, 1, 1, 1, 2, false, true, false}, false}, // 70 rows a group
      // a row a block holds twice (the CPU kernels add both)
      {{2, 16, 5, 5, 24, 3, 3, 1, 1, 1, 1, false, true, true}, true, true},
      {{1, 6, 6, 6, 80, 3, 3, 1, 1, 1, 2, true, false, false}, false, true},
  };
  int failures = 0, count = 0;
  unsigned seed = 1;
  for (const Run& r : runs) {
    failures += run_case<float>(r.c, r.all_columns, r.repeat_row, seed);
    failures += run_case<uint16_t>(r.c, r.all_columns, r.repeat_row, seed++);
    count += 2;
  }
  std::printf("%d passed, %d failed\n", count - failures, failures);
  return failures == 0 ? 0 : 1;
}

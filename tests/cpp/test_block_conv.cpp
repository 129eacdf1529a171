// The torch-free CPU kernels against a direct convolution of the unpacked weight.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "common/block_params.h"
#include "conv_cases.h"
#include "cpu/kernels/block_conv.h"
#include "cpu/kernels/elements.h"
#include "cpu/kernels/layout.h"
#include "cpu/kernels/tap_conv.h"

using namespace sparsekit;
using namespace sparsekit::testing;

namespace {

template <typename Kernel>
using WeightsOf = std::conditional_t<std::is_same_v<Kernel, cpu::TapConv>, cpu::TapWeights,
                                     cpu::PlanesWeights>;

// The kernel's layout of p's pack, as prepack builds it: the exact-position kernel's panels
// packed in two ranges, as two threads would. The layout is then copied, as a tensor holding
// it may be: a kernel reads the copy.
template <typename Kernel>
cpu::LayoutBytes make_layout(const BlockConvParams& p) {
  const cpu::ParallelFor two_ranges = [](int64_t units, const auto& body) {
    body(0, units / 2);
    body(units / 2, units);
  };
  const cpu::LayoutBytes built = std::is_same_v<Kernel, cpu::TapConv>
                                     ? cpu::build_tap_layout(p, two_ranges)
                                     : cpu::build_planes_layout(p);
  return cpu::LayoutBytes(built);
}

// Values rounded to bf16 (the kernel's operands in bf16 runs), and their bits.
std::vector<uint16_t> to_bf16(std::vector<float>& values) {
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    bits[i] = cpu::from_float<uint16_t>(values[i]);
    values[i] = cpu::to_float(bits[i]);
  }
  return bits;
}

// What the planes kernel's cases covered: calls sweeping the layout's chunks in several sweeps,
// sweeps of several chunks, the last of them short, and several sweeps reading tap-row windows
// (x86-64-v4 CPUs only: elsewhere no call reads windows).
struct SweepCoverage {
  int several_sweeps = 0, merged_chunks = 0, short_last_sweep = 0, windowed_sweeps = 0;
} sweep_coverage;

// Why the planes layout w of p's pack breaks its stream's invariants (nullptr: it keeps them):
// starts never decrease and end after every group's records; each record's code is a channel
// tap of the layer, its channel in its chunk; each chunk's group range is whole tap-row runs,
// each run a head whose mask names the kernel columns of it and of the records after it (mask
// 0), of one channel and kernel row.
const char* stream_problem(const BlockConvParams& p, const cpu::PlanesWeights& w) {
  const int64_t G = int64_t(w.groups.size()), KW = p.shape.KW, area = p.shape.KH * KW;
  int64_t words = 0;
  for (const cpu::GroupRows& g : w.groups) words += g.work + g.work / int64_t(g.rows.size());
  if (w.starts[0] != 0 || w.starts[w.chunks * G] != words) return "starts miss records";
  for (int64_t j = 0; j < w.chunks; ++j)
    for (int64_t g = 0; g < G; ++g) {
      const int64_t step = int64_t(w.groups[g].rows.size()) + 1;
      const int64_t begin = w.starts[j * G + g], end = w.starts[j * G + g + 1];
      if (end < begin || (end - begin) % step != 0) return "a range is not whole records";
      int64_t left = 0, channel0 = 0, row0 = 0, mask = 0;  // the current run's
      for (int64_t at = begin; at < end; at += step) {
        const int64_t code = w.stream[at] & cpu::kCodeMask, run = w.stream[at] >> cpu::kCodeBits;
        const int64_t channel = code / area, tap = code % area;
        if (code >= p.shape.C * area) return "a code past the layer's channel taps";
        if (channel < j * w.chunk_channels || channel >= (j + 1) * w.chunk_channels)
          return "a record lies outside its chunk";
        if ((left == 0) != (run != 0)) return "a run's head or tail is misplaced";
        if (run != 0) {
          left = __builtin_popcount(uint32_t(run)), channel0 = channel, row0 = tap / KW;
          mask = KW <= cpu::kRunTaps ? run : 0;
          if (KW > cpu::kRunTaps && run != 1) return "a column of a wide kernel is not its own run";
        }
        if (channel != channel0 || tap / KW != row0) return "a run spans channels or kernel rows";
        if (KW <= cpu::kRunTaps) {  // kernel columns increase along a run: the mask's lowest left
          if (mask == 0 || __builtin_ctzll(uint64_t(mask)) != tap % KW)
            return "a run's mask does not name its columns";
          mask &= mask - 1;
        }
        --left;
      }
      if (left != 0) return "a range ends inside a run";
    }
  return nullptr;
}

// Kernel on a random case in fp32 or bf16 (T: uint16_t), against a direct convolution in
// double of the same (rounded) operands; bf16 outputs are allowed their rounding.
template <typename Kernel, typename T = float>
int run_case(const char* kernel, const Case& c, unsigned seed, bool whole_kernels = false) {
  constexpr bool bf16 = std::is_same_v<T, uint16_t>;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const int64_t OH = out_size(c.H, c.KH, c), OW = out_size(c.W, c.KW, c);
  std::vector<float> x(c.N * c.C * c.H * c.W), bias(c.K), y(c.N * c.K * OH * OW, NAN);
  for (float& v : x) v = u(rng);
  for (float& v : bias) v = u(rng);
  Packed pk = random_blocks(c, rng, whole_kernels);
  const int64_t nb = num_blocks(pk);
  constexpr uint16_t kNan = 0x7fc0;  // bf16: outputs never written stay NaN
  std::vector<uint16_t> x_bits, bias_bits, value_bits, y_bits(bf16 ? y.size() : 0, kNan);
  std::vector<uint16_t> y_split_bits(y_bits.size(), kNan);
  if constexpr (bf16) x_bits = to_bf16(x), bias_bits = to_bf16(bias), value_bits = to_bf16(pk.values);

  const std::vector<float> w = dense_weight(c, pk);

  BlockConvParams p{};
  p.shape = shape_of(c);
  p.blocks = index_of(pk);
  if (const char* err = check_block_index(p.shape, p.blocks, int64_t(pk.rows.size()),
                                          int64_t(pk.cols.size()), int64_t(pk.values.size()))) {
    std::printf("FAIL: valid blocks rejected: %s\n", err);
    return 1;
  }
  p.input = bf16 ? static_cast<const void*>(x_bits.data()) : x.data();
  const Strides in_stride = strides_of(c.C, c.H, c.W, c.channels_last);
  const Strides out_stride = strides_of(c.K, OH, OW, c.channels_last);
  std::copy(in_stride.begin(), in_stride.end(), p.in_stride);
  std::copy(out_stride.begin(), out_stride.end(), p.out_stride);
  p.output = bf16 ? static_cast<void*>(y_bits.data()) : y.data();
  p.values = bf16 ? static_cast<const void*>(value_bits.data()) : pk.values.data();
  p.bias = !c.bias ? nullptr : bf16 ? static_cast<const void*>(bias_bits.data()) : bias.data();
  p.dtype = bf16 ? DType::BFloat16 : DType::Float32;
  p.relu = c.relu;
  const cpu::LayoutBytes layout = make_layout<Kernel>(p);
  if (const char* err = cpu::check_layout(layout.data(), int64_t(layout.size()) * cpu::kLayoutAlign,
                                          p.shape, p.dtype)) {
    std::printf("FAIL: its own layout rejected: %s\n", err);
    return 1;
  }
  const WeightsOf<Kernel> weights(layout.data());
  auto conv = std::make_unique<Kernel>(p, weights);
  if constexpr (std::is_same_v<Kernel, cpu::BlockConv>) {
    if (const char* problem = stream_problem(p, weights)) {
      std::printf("FAIL: planes layout: %s\n", problem);
      return 1;
    }
    const cpu::PlanesGrid grid(p, weights);
    sweep_coverage.several_sweeps += grid.sweeps > 1;
    sweep_coverage.merged_chunks += grid.merged > 1 && grid.sweeps > 1;
    sweep_coverage.short_last_sweep += weights.chunks % grid.merged != 0 && grid.sweeps > 1;
    // windows run on a group's rows left over from triples (group_tile_windows)
    const bool leftover = std::any_of(weights.groups.begin(), weights.groups.end(),
                                      [](const cpu::GroupRows& g) { return g.rows.size() % 3 != 0; });
    sweep_coverage.windowed_sweeps += !grid.window.empty() && leftover && grid.sweeps > 1;
  }
  bool pairs = false;  // whether the AVX512-BF16 micro-kernel ran
  if constexpr (std::is_same_v<Kernel, cpu::TapConv>) pairs = weights.pairs();
  const int64_t units = conv->pack_units(), tiles = conv->num_tiles();
  conv->pack(0, units / 2);  // two ranges each, as two threads would run them
  conv->pack(units / 2, units);
  conv->run_tiles(0, tiles / 2);
  conv->run_tiles(tiles / 2, tiles);

  if constexpr (bf16)
    for (size_t i = 0; i < y.size(); ++i) y[i] = cpu::to_float(y_bits[i]);

  // The rows split into sets (as a call with few tiles runs): the same bits.
  std::vector<float> y_split(y.size(), NAN);
  p.output = bf16 ? static_cast<void*>(y_split_bits.data()) : y_split.data();
  auto split = std::make_unique<Kernel>(p, weights);
  const int64_t parts = split->split_rows(3), items = split->num_tiles() * parts;
  split->pack(0, units);
  split->run_tiles(0, items / 2);
  split->run_tiles(items / 2, items);
  if constexpr (bf16)
    for (size_t i = 0; i < y.size(); ++i) y_split[i] = cpu::to_float(y_split_bits[i]);
  const bool same = std::memcmp(y.data(), y_split.data(), y.size() * sizeof(float)) == 0;

  const double max_err = max_output_error(c, w, x.data(), in_stride, c.bias ? bias.data() : nullptr,
                                          y.data(), out_stride, bf16);
  const bool ok = max_err <= 1e-4 && same;
  std::printf("%s%s %s%s%s N=%lld C=%lld K=%lld %lldx%lld k=%lldx%lld s=%lld p=%lld d=%lld g=%lld: "
              "%lld blocks in %lld row sets, max err %.3g\n",
              ok ? "ok  " : "FAIL", same ? "" : " (split rows differ)", kernel,
              !bf16 ? "" : pairs ? " bf16 (column pairs)" : " bf16 (fp32 fallback)", c.channels_last ? " channels_last" : "", (long long)c.N, (long long)c.C, (long long)c.K,
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

// A layout serves the layer it was built for: another geometry or dtype, a buffer that is not
// a layout, a truncated or misaligned one are rejected.
int check_rejects_wrong_layout() {
  const Case c{2, 8, 5, 5, 16, 3, 3, 1, 1, 1, 1, false, true, false};
  std::mt19937 rng(7);
  const Packed pk = random_blocks(c, rng);
  BlockConvParams p{};
  p.shape = shape_of(c);
  p.blocks = index_of(pk);
  p.values = pk.values.data();
  p.dtype = DType::Float32;
  const cpu::LayoutBytes layout = cpu::build_planes_layout(p);
  const int64_t bytes = int64_t(layout.size()) * cpu::kLayoutAlign;
  ConvShape other = p.shape;
  other.C = 16;
  const char* problems[] = {
      cpu::check_layout(layout.data(), bytes, other, p.dtype),
      cpu::check_layout(layout.data(), bytes, p.shape, DType::BFloat16),
      cpu::check_layout(layout.data(), bytes - cpu::kLayoutAlign, p.shape, p.dtype),
      cpu::check_layout(pk.values.data(), int64_t(pk.values.size()) * 4, p.shape, p.dtype),
  };
  std::vector<unsigned char> shifted(bytes + 1);
  std::memcpy(shifted.data() + 1, layout.data(), bytes);
  const bool aligned = reinterpret_cast<uintptr_t>(shifted.data() + 1) % cpu::kLayoutAlign == 0;
  const char* misaligned = cpu::check_layout(shifted.data() + 1, bytes, p.shape, p.dtype);
  for (const char* problem : problems)
    if (problem == nullptr) {
      std::printf("FAIL: a layout for another layer, dtype or size, or no layout, was accepted\n");
      return 1;
    }
  if (!aligned && misaligned == nullptr) {
    std::printf("FAIL: a misaligned layout was accepted\n");
    return 1;
  }
  std::printf("ok   layouts for other layers, dtypes or sizes rejected\n");
  return 0;
}

// A layer whose channels times taps outgrow a column's code is refused when laid out; one of
// exactly 2**27 channel taps is laid out.
int check_refuses_too_many_channel_taps() {
  int32_t none[1] = {0};
  int64_t ptr[3] = {0, 0, 0};
  BlockConvParams p{};
  p.shape.N = p.shape.H = p.shape.W = p.shape.K = p.shape.OH = p.shape.OW = p.shape.groups = 1;
  p.shape.KH = p.shape.KW = 1;
  p.shape.stride_h = p.shape.stride_w = p.shape.dil_h = p.shape.dil_w = 1;
  p.blocks = BlockIndex{none, none, ptr, ptr + 1, ptr + 2, 0};  // no blocks
  p.values = none;
  p.dtype = DType::Float32;
  const auto refused = [&](int64_t channels) {
    p.shape.C = channels;
    try {
      cpu::build_planes_layout(p);
    } catch (const std::length_error&) {
      return true;
    }
    return false;
  };
  if (!refused((int64_t(1) << 27) + 1) || refused(int64_t(1) << 27)) {
    std::printf("FAIL: the planes layout's limit is not 2**27 channel taps\n");
    return 1;
  }
  std::printf("ok   a layer of over 2**27 channel taps refused, one of 2**27 laid out\n");
  return 0;
}

}  // namespace

int main() {
  const Case cases[] = {
      {2, 8, 7, 7, 16, 3, 3, 1, 1, 1, 1, true, true, false},
      {1, 3, 5, 9, 7, 3, 3, 2, 0, 1, 1, false, true, true},
      {3, 6, 9, 9, 6, 3, 3, 1, 2, 2, 2, false, false, false},
      {2, 4, 6, 6, 4, 3, 3, 1, 1, 1, 4, true, true, true},  // depthwise
      {1, 33, 1, 100, 70, 1, 1, 1, 0, 1, 1, false, true, false},  // linear-like, 100 positions
      {4, 16, 8, 8, 32, 5, 5, 2, 2, 1, 1, false, true, true},
      {3, 6, 4, 4, 12, 3, 3, 1, 3, 2, 1, true, true, false},     // padding past the dilated kernel
      {2, 4, 9, 7, 8, 1, 1, 1, 2, 1, 2, false, false, true},     // 1x1 with padding: all zeros
      {2, 5, 11, 10, 6, 2, 2, 3, 1, 2, 1, true, true, false},    // stride 3, dilation 2, even kernel
      {3, 10, 5, 6, 150, 3, 3, 1, 1, 1, 1, true, true, true},    // panels in chunks of 4, 3 + 2
      {2, 12, 4, 4, 140, 3, 3, 1, 1, 1, 2, false, true, false},  // 70 rows a group: 3 + 2
      // Batches of 16 and more: the planes kernel puts the batch innermost, sweeping channel chunks.
      {16, 40, 4, 4, 24, 3, 3, 1, 1, 1, 1, true, true, true},    // tiles across rows, several sweeps
      {32, 24, 8, 8, 20, 3, 3, 1, 1, 1, 1, false, true, false},  // two tiles per row, several sweeps
      {16, 48, 4, 4, 12, 3, 3, 1, 1, 1, 1, false, true, true},   // 48 channels: sweeps of 17
      // 3x1 kernels on 2-wide images: a tile reads a third of what the layout's chunks assume, so
      // it sweeps several of them together
      {2, 100, 6, 2, 8, 3, 1, 1, 1, 1, 1, true, true, false},
      {24, 5, 7, 7, 10, 3, 3, 2, 1, 1, 1, true, false, true},    // batch padded to 32, stride 2
      {16, 6, 6, 6, 8, 3, 3, 1, 2, 2, 1, false, true, true},     // dilation 2: reads past rows
      // Channels-last fp32 rows of 16+ points and 16+ output rows: the planes kernel transposes.
      {2, 20, 5, 19, 18, 3, 3, 1, 1, 1, 1, true, true, true},
      {1, 32, 6, 37, 17, 3, 3, 2, 1, 1, 1, false, true, true},   // every other column
  };
  int failures = check_rejects_bad_index() + check_rejects_wrong_layout() +
                 check_refuses_too_many_channel_taps(),
      runs = 3;
  unsigned seed = 1;
  for (const Case& c : cases) {
    failures += run_case<cpu::BlockConv>("planes", c, seed);
    failures += run_case<cpu::TapConv>("taps  ", c, seed);
    failures += run_case<cpu::TapConv, uint16_t>("taps  ", c, seed++);  // bf16 pairs, where the CPU has them
    runs += 3;
  }
  // Whole kernels of 288 channels at batch 16: tap-row windows (on x86-64-v4) over several sweeps.
  failures += run_case<cpu::BlockConv>("planes", {16, 288, 4, 4, 4, 3, 3, 1, 1, 1, 1, true, true, true},
                                       seed, true);
  ++runs;
  const bool v4 = __builtin_cpu_supports("x86-64-v4");
  if (sweep_coverage.several_sweeps == 0 || sweep_coverage.merged_chunks == 0 ||
      sweep_coverage.short_last_sweep == 0 || (v4 && sweep_coverage.windowed_sweeps == 0)) {
    std::printf("FAIL: the planes cases do not cover several sweeps (%d), sweeps of several "
                "chunks (%d), a short last sweep (%d) and several sweeps with windows (%d)\n",
                sweep_coverage.several_sweeps, sweep_coverage.merged_chunks,
                sweep_coverage.short_last_sweep, sweep_coverage.windowed_sweeps);
    ++failures;
  }
  ++runs;
  std::printf("%d passed, %d failed\n", runs - failures, failures);
  return failures == 0 ? 0 : 1;
}

// Torch-free CPU kernel for the gathered dense-block convolution (and linear) at exact output
// positions, for packs whose blocks have many rows.
//
// The micro-kernel vectorises over 16-row panels of a row group and broadcasts one input
// element per output position: the input is channels-last (the caller's tensor when it is fp32
// with unit channel stride, else an fp32 NHWC copy made once per call), so the element of
// column (tap, channel) for a position is at base(position, tap) + channel. A group's columns
// are sorted by tap and its weights transposed into panels once, in the layer's layout
// (layout.h). Positions are ordered
// by border class (which taps land inside the input), so a tile of positions skips the taps
// that are padding for all of them and reads a zero row for the few others: no padded grid, no
// multiply-adds on padding, no gathers.
//
// bf16 packs on CPUs with AVX512-BF16 (and VBMI2) multiply in bf16 (vdpbf16ps: two columns per
// fp32 lane, exact products, fp32 sums, subnormals flushed to zero) at twice the fp32 rate: the
// input stays bf16 (read in place when channels-last) and the panels hold the columns two at a
// time.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "../../common/block_params.h"
#include "block_conv.h"
#include "layout.h"
#include "row_groups.h"

namespace sparsekit::cpu {

// Output positions handled by one tile: 2 x 12, 3 x 8 or 4 x 6 per register-blocked pass.
constexpr int64_t kTapTilePositions = 24;

// A row group's panels: chunks of 1-4 panels of 16 rows, each stored column by column
// ([column][panels * 16], rows past the group zero). offset: floats into the panels; exclusive:
// its rows are owned by this group alone.
struct TapChunk {
  int64_t first_row, panels, offset, exclusive;
};

// Where a row group's arrays lie in a taps layout (byte offsets, counts).
struct TapGroupRecord {
  int64_t rows_at, num_rows;
  int64_t tap_start_at, channel_at, num_columns;
  int64_t pair_start_at, pair_split_at, pair_lone_at, pair_channel_at, num_pairs;
  int64_t chunks_at, num_chunks;
};

// A row group as the micro-kernel reads it: views into the layout. Its columns are sorted by
// tap: those of tap t are [tap_start[t], tap_start[t + 1]). With pairs (TapWeights::pairs()),
// the panels' units are pairs of columns of one tap, a row's two bf16 weights in one 32-bit
// slot (the first low). Pairs of tap t: [pair_start[t], pair_split[t]) read two adjacent
// channels, [pair_split[t], pair_lone[t]) two others (the first the higher),
// [pair_lone[t], pair_start[t + 1]) one column each; pair_channel holds each pair's two
// channels (a lone column's twice).
struct TapPanels {
  std::span<const int32_t> rows;
  std::span<const int32_t> tap_start, channel;
  std::span<const int32_t> pair_start, pair_split, pair_lone, pair_channel;
  std::span<const TapChunk> chunks;
};

// The layout of the exact-position kernel (kind "taps") of p's blocks and values: row groups,
// columns sorted by tap, weights in panels. It depends only on the blocks, their values, the
// kernel's geometry and the CPU (bf16 pairs where it has AVX512-BF16), not on the input.
// parallel runs the panel packing.
LayoutBytes build_tap_layout(const BlockConvParams& p, const ParallelFor& parallel);

// A taps layout, read in place: views of its row groups, made in O(groups).
class TapWeights {
 public:
  explicit TapWeights(const void* layout);
  // fp32 weights, or with pairs() the bit pairs of bf16 ones, 16 rows to 64 aligned bytes.
  const float* panel_data() const { return panels_; }
  // Whether the panels hold bf16 column pairs for the AVX512-BF16 micro-kernel.
  bool pairs() const { return pairs_; }

  std::vector<TapPanels> panels;
  std::vector<GroupRows> groups;
  const int32_t* owners;  // per output row: the groups that own it

 private:
  const float* panels_;
  bool pairs_;
};

class TapConv {
 public:
  // Whether this kernel suits p's blocks: kernels of at most 64 taps a side, and blocks whose
  // rows fill at least 65% of the 16-row panels (weighted by multiply-adds).
  static bool suits(const BlockConvParams& p);

  // Plans the call on the layout w; p and w must outlive this. The input
  // copy belongs to the constructing thread and is reused by its next call.
  TapConv(const BlockConvParams& p, const TapWeights& w);

  // Copies the input to NHWC (fp32, or bf16 for pairs) where it is not read in place: units
  // [begin, end) of pack_units() (none when it is), any thread split.
  int64_t pack_units() const;
  void pack(int64_t begin, int64_t end);

  // As BlockConv's: row sets, then work items [begin, end) of num_tiles() * num_parts(), item i
  // being row set i % num_parts() of tile i / num_parts(). Each output element is written once,
  // blocks summed in a fixed order (deterministic, whatever the split).
  int64_t split_rows(int64_t parts);
  int64_t num_tiles() const;
  int64_t num_parts() const { return int64_t(sets_.size()); }
  int64_t grid_positions() const { return num_tiles() * kTapTilePositions; }
  void run_tiles(int64_t begin, int64_t end, TileTimes* times = nullptr) const;

  // Output coordinates [begin, end) along one axis whose taps inside the input are `taps`
  // (bit t: tap t). Classes are contiguous ranges, as the first and last valid tap only move
  // down as the coordinate grows.
  struct AxisClass {
    int64_t begin, end;
    uint64_t taps;
  };

 private:
  struct Position {
    int64_t in;   // input offset of tap (0, 0), possibly outside the input
    int64_t out;  // output offset of row 0
    uint64_t h_taps, w_taps;
  };
  Position position(int64_t q) const;
  template <typename T, typename X>
  void pack_rows(int64_t begin, int64_t end);
  void add_chunk(std::span<const int32_t> rows, const TapChunk& chunk, int64_t count,
                 const float* res, float* acc) const;
  template <typename T>
  void store(const RowSet& set, const Position* at, int64_t count, const float* acc) const;

  const BlockConvParams& p_;
  const TapWeights& w_;
  std::vector<AxisClass> h_classes_, w_classes_;
  std::vector<int64_t> class_start_;  // first position of class (h, w), h-major; then the total
  // Channels-last input, fp32 (bf16 for pairs): the caller's or the copy.
  const char* x_;
  int64_t x_bytes_;                   // of an element
  void* copy_ = nullptr;              // the input's copy, when it is not read in place
  int64_t x_stride_[3];               // of n, h, w (channels: 1)
  bool copy_input_;
  std::vector<float> zeros_;  // what padding taps read: C zeros (of either type)
  std::vector<float> bias_;   // fp32, zeros without bias
  std::vector<RowSet> sets_;
  // Per set: its rows several groups own, zeroed in the accumulator for every tile (the rows no
  // group owns stay zero from its allocation).
  std::vector<std::vector<int32_t>> shared_;
};

}  // namespace sparsekit::cpu

// Torch-free CPU kernel for the gathered dense-block convolution (and linear) at exact output
// positions, for packs whose blocks have many rows.
//
// The micro-kernel vectorises over 16-row panels of a row group and broadcasts one input
// element per output position: the input is channels-last (the caller's tensor when it is fp32
// with unit channel stride, else an fp32 NHWC copy made once per call), so the element of
// column (tap, channel) for a position is at base(position, tap) + channel. A group's columns
// are sorted by tap and its weights transposed into panels once per call. Positions are ordered
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
#include <vector>

#include "../../common/block_params.h"
#include "block_conv.h"
#include "row_groups.h"

namespace sparsekit::cpu {

// Output positions handled by one tile: 2 x 12, 3 x 8 or 4 x 6 per register-blocked pass.
constexpr int64_t kTapTilePositions = 24;

// A row group's columns (sorted by tap) and its weights as panels of 16 rows: chunks of 1-4
// panels, each stored column by column ([column][panels * 16], rows past the group zero).
struct TapChunk {
  int64_t first_row, panels, offset;  // offset: floats into the panel buffer
  bool exclusive;                     // its rows are owned by this group alone
};
struct TapPanels {
  std::vector<int32_t> tap_start;  // columns of tap t: [tap_start[t], tap_start[t + 1])
  std::vector<int32_t> channel;    // input channel of each column
  std::vector<int64_t> source;     // index into values of each column's row-0 weight
  std::vector<int64_t> stride;     // values between rows, per column (its block's width)
  std::vector<TapChunk> chunks;
  // With pairs (TapWeights::pairs()), the panels' units are pairs of columns of one tap, a
  // row's two bf16 weights in one 32-bit slot (the first low). Pairs of tap t:
  // [pair_start[t], pair_split[t]) read two adjacent channels, [pair_split[t], pair_lone[t])
  // two others (the first the higher), [pair_lone[t], pair_start[t + 1]) one column each.
  std::vector<int32_t> pair_start, pair_split, pair_lone;
  std::vector<int32_t> pair_column;   // the pair's two columns ([2i], [2i + 1]; -1: none)
  std::vector<int32_t> pair_channel;  // their channels (a lone column's twice)
};

// The pack's side of the kernel: row groups, columns sorted by tap, weights in panels. It
// depends only on the blocks, their values and the kernel's geometry (not on the input), so a
// caller may keep it for the next calls on the same pack.
class TapWeights {
 public:
  // Plans the panels; pack() then fills them, units [begin, end) of pack_units() on any
  // threads. p's blocks and values are read only until the last pack().
  explicit TapWeights(const BlockConvParams& p);
  int64_t pack_units() const { return int64_t(groups.size()); }
  void pack(const BlockConvParams& p, int64_t begin, int64_t end);
  // fp32 weights, or with pairs() the bit pairs of bf16 ones, 16 rows to 64 aligned bytes.
  const float* panel_data() const { return buffer_.data() + align_; }
  // Whether the panels hold bf16 column pairs for the AVX512-BF16 micro-kernel: bf16 packs on
  // CPUs that have it (and VBMI2).
  bool pairs() const { return pairs_; }

  std::vector<RowGroup> groups;
  std::vector<TapPanels> panels;
  std::vector<int32_t> owners;  // per output row: the groups that own it

 private:
  std::vector<float> buffer_;
  int64_t align_ = 0;  // floats from buffer_'s start to the 64-byte aligned panels
  bool pairs_;
};

class TapConv {
 public:
  // Whether this kernel suits the call: kernels of at most 64 taps a side, and blocks whose
  // rows fill at least 65% of the 16-row panels (weighted by multiply-adds).
  static bool suits(const BlockConvParams& p);

  // Plans the call on packed weights w (of p's blocks); p and w must outlive this. The input
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
  void add_chunk(const RowGroup& group, const TapChunk& chunk, int64_t count,
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

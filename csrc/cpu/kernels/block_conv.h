// Torch-free CPU kernel for the gathered dense-block convolution (and linear, its 1x1 case).
//
// No gathers in the inner loop: the input is first copied once per call into zero-padded fp32
// planes, one per (channel, stride phase), laid out so that for every position q of a padded
// output grid and every weight column, the input element read is planes[offset(column) + q]. A
// tile of 128 consecutive grid positions then reads 128 consecutive floats per column, and the
// micro-kernel broadcasts weights over them. Two layouts of the planes, whichever computes fewer
// positions: the images stacked along the height with the width innermost (any batch; the zeros
// shared between rows and between images are computed and dropped), or the batch innermost,
// padded to 16 (batches of 16 and more: when an output row fills whole tiles, nothing is wasted).
// Tiles sweep the input channels in chunks whose reads stay in the L1 cache, accumulating in a
// per-tile buffer: lone rows (unstructured masks) then load from L1, not from L2.
//
// The layer's layout (layout.h, kind "planes") holds each row group's columns in channel order
// with their channels, taps and fp32 weights; where each column reads in the planes, and the
// channel chunks, depend on the call's geometry and are derived per call (PlanesGrid).
//
// Kernel masks keep whole kh x kw kernels: a row's columns of one channel and kernel row read
// the same plane a pixel apart. With the batch innermost a pixel is whole vectors, so on
// x86-64-v4 CPUs such a tap-row run loads the union of its reads once (a window) and each column
// multiplies its part of it: 10 loads instead of 24 for a 3x3 kernel row of one output row.
#pragma once

#include <cstddef>
#include <vector>

#include "../../common/block_params.h"
#include "layout.h"
#include "row_groups.h"

namespace sparsekit::cpu {

// Output grid positions handled by one tile (eight 16-lane vectors).
constexpr int64_t kTilePositions = 128;
// Kernel columns a tap-row run can hold (PlanesWeights::run), and how many vectors apart its
// first and last columns may read for one window of loads to serve them all (PlanesGrid::window).
constexpr int64_t kRunTaps = 4;
constexpr int kMaxWindowShift = 4;

// One axis (height or width) of the planes. An output coordinate o reads, for kernel tap t,
// plane coordinate o + shift[t] + lead in the planes of stride phase phase[t].
struct PlaneAxis {
  int64_t stride = 1;  // conv stride: number of phases
  int64_t lead = 0;    // zeros before the data
  int64_t data = 0;    // input coordinates (of the fullest phase) that are read
  int64_t extent = 0;  // plane coordinates per row (image): data and shared zeros
  std::vector<int64_t> phase, shift;
};

// Where run_tiles spends its time, in nanoseconds of the calling thread (for profiling).
struct TileTimes {
  int64_t micro_ns = 0;  // the register-blocked passes
  int64_t store_ns = 0;  // bias, ReLU and the output writes
};

// Where a row group's columns lie in a planes layout: columns [first_column, first_column +
// num_columns) of the layout's channel and tap arrays, in channel order, and their weights, a
// column's for the group's rows together, at floats [weights_at, + num_columns * num_rows) of
// the layout's data.
struct PlanesGroupRecord {
  int64_t rows_at, num_rows, first_column, num_columns, weights_at;
};

// The layout of the planes kernel (kind "planes") of p's blocks and values: it depends only on
// the blocks, their values and the kernel's geometry, not on the input.
LayoutBytes build_planes_layout(const BlockConvParams& p);

// A planes layout, read in place: its row groups, made in O(groups).
class PlanesWeights {
 public:
  explicit PlanesWeights(const void* layout);

  std::vector<GroupRows> groups;
  const PlanesGroupRecord* records;
  const int32_t* channel;  // per column of the layout
  const int32_t* tap;
  // Tap-row runs: a group's consecutive columns of one channel and one kernel row, kernel
  // columns increasing, at most kRunTaps of them. At a run's first column, the bit mask of its
  // kernel columns (bit kw); 0 at the others. Kernels wider than kRunTaps: one column a run.
  const int32_t* run;
  const float* weights;
  int64_t columns;  // of all groups
  int64_t runs;     // tap-row runs of all groups
};

// The planes of one call: their layout for its geometry (shape and input size), the channel
// chunks tiles sweep, and each column's input offset in the planes.
class PlanesGrid {
 public:
  PlanesGrid(const BlockConvParams& p, const PlanesWeights& w);

  int64_t tile_base(int64_t tile) const;  // grid position of the tile's first
  int64_t num_tiles() const;
  // Group g's columns in chunk j: [cut[g * (chunks + 1) + j], cut[... + j + 1]) of its own.
  int64_t cut(int64_t g, int64_t j) const { return cuts[g * (chunks + 1) + j]; }

  PlaneAxis h, w;
  bool batch_inner = false;  // the layout: batch innermost, else images stacked along the height
  int64_t batch = 1;         // batch innermost: images per grid point (N rounded up to 16)
  int64_t image = 0;         // images stacked: grid positions per image, h.extent * w.extent
  int64_t positions = 0;     // grid positions
  int64_t row_tiles = 0;     // tiles per output row when tiles skip the zero columns, else 0
  // Output rows of half a tile (4 pixels of 16 images): a tile holds two rows, its second half
  // half_gap floats past the first's end (the zero columns skipped).
  bool half_rows = false;
  int64_t half_gap = 0;
  int64_t plane = 0;         // floats per plane: the grid and the zeros wrapped reads reach
  int64_t tail = 0;          // zeros after the last plane, which the last tile's reads reach
  int64_t chunks = 1;        // channel chunks tiles sweep
  int64_t chunk_channels = 1;
  std::vector<int64_t> cuts;  // written by fill_cuts (BlockConv's pack units)
  void fill_cuts(const PlanesWeights& w, int64_t begin, int64_t end);  // of groups [begin, end)
  // Per column of the layout w: where it reads in the planes, offsets[k] = w.channel[k] *
  // channel_floats + tap_offsets[w.tap[k]], written by fill_offsets (BlockConv's pack units),
  // in a buffer of the constructing thread, valid until its next call.
  int32_t* offsets = nullptr;
  void fill_offsets(const PlanesWeights& w, int64_t begin, int64_t end);  // columns [begin, end)
  std::vector<int32_t> tap_offsets;
  int32_t channel_floats = 0;  // between the planes of consecutive channels
  // Per kernel-column mask of a tap-row run: its columns' reads as vector shifts from its first
  // column's (bit s: a column reads 16 * s floats further), when they all lie in one plane on
  // whole vectors at most kMaxWindowShift apart, so that one window of loads serves the run;
  // else 0 (the run's columns load one by one). Empty: no windows (the images-stacked layout,
  // whose taps read one float apart, kernels wider than kRunTaps, a whole kernel row without a
  // window, or runs of fewer than two columns on average).
  std::vector<int32_t> window;
};

class BlockConv {
 public:
  // Plans the call on the layout w. p and w must outlive this; the planes live in a buffer of
  // the constructing thread, reused by its next call.
  BlockConv(const BlockConvParams& p, const PlanesWeights& w);

  // Fills the planes and the columns' offsets: units [begin, end) of pack_units(), blocks of 16
  // input channels (their padding only when packed by rows), the input rows of every phase
  // when packed by rows, blocks of 16384 columns (their offsets), then blocks of 64 row groups
  // (their channel chunks), in any thread split.
  int64_t pack_units() const;
  void pack(int64_t begin, int64_t end);

  // Splits the output rows into up to `parts` sets (split_row_sets), so that calls with fewer
  // tiles than threads still spread; returns the number of sets made. Results do not change.
  int64_t split_rows(int64_t parts);

  // Computes work items [begin, end) of num_tiles() * num_parts(): item i is row set
  // i % num_parts() of tile i / num_parts(), so disjoint ranges can run on different threads;
  // each output element is written once, with blocks summed in a fixed order (deterministic).
  // times, when given, receives the split of the work.
  int64_t num_tiles() const { return grid_.num_tiles(); }
  int64_t num_parts() const { return int64_t(parts_.size()); }
  int64_t grid_positions() const { return num_tiles() * kTilePositions; }
  // Whether the call reads tap-row windows (PlanesGrid::window).
  bool windows() const { return !grid_.window.empty(); }
  void run_tiles(int64_t begin, int64_t end, TileTimes* times = nullptr) const;

 private:
  int64_t channel_units() const;
  template <typename T>
  void pack_channels(int64_t begin, int64_t end);
  // Zeros where the copy of `rows` x `cols` input points will not write, in one plane.
  void zero_padding(float* plane, int64_t rows, int64_t cols) const;
  int64_t row_units() const;
  int64_t offset_units() const;
  void pack_rows(int64_t begin, int64_t end);
  template <typename T>
  void store_tile(int64_t tile, const RowSet& part, const float* acc) const;

  const BlockConvParams& p_;
  const PlanesWeights& w_;
  PlanesGrid grid_;
  float* planes_ = nullptr;
  bool by_rows_ = false;  // pack units: padding per channel block, data per input row
  std::vector<RowSet> parts_;
  std::vector<float> bias_;  // fp32, zeros without bias
};

}  // namespace sparsekit::cpu

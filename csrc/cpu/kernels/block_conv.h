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
// Tiles sweep the input channels a few at a time, sized for one tile's reads to fit the L1
// cache, accumulating in a per-tile buffer: lone rows (unstructured masks) then load mostly from
// L1, not L2.
//
// The layer's layout (layout.h, kind "planes") holds the columns as one stream of records, a
// column's channel and tap (its code) and then its weights for the group's rows, ordered by
// channel chunk, then row group, then channel. The chunks, fixed by the layout, are as wide as a
// typical call's sweep; a tile sweeps one chunk or several together (as many as its reads fit),
// and reads one stream, or one per chunk of the sweep, front to back, which the hardware
// prefetchers follow. A stream per group, as a layout in group order gives, is too many for
// them: 512 lone rows at 4x4, batch 64, spent 15-25% longer in the micro-kernel than with a
// per-call copy of the same columns in chunk order (2 threads, one session). A call maps
// codes to plane offsets with a table of its own (PlanesGrid): nothing per column is derived
// per call.
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
// Kernel columns a tap-row run can hold (kCodeBits), and how many vectors apart its first and
// last columns may read for one window of loads to serve them all (PlanesGrid::window).
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

// A planes layout's row group: its rows (num_rows int32 at rows_at) and how many columns it has.
struct PlanesGroupRecord {
  int64_t rows_at, num_rows, num_columns;
};

// A column's record in a planes layout's stream: one int32 word, its code, then its weights for
// the group's rows as fp32 bits. The code's low kCodeBits bits are channel * KH * KW + tap; the
// bits above, at a tap-row run's first column, are the bit mask of the run's kernel columns
// (bit kw), at its other columns 0. Runs: a group's consecutive columns of one channel and one
// kernel row, kernel columns increasing, at most kRunTaps of them; kernels wider than kRunTaps
// make each column a run of its own (mask 1).
constexpr int kCodeBits = 27;
constexpr int32_t kCodeMask = (int32_t(1) << kCodeBits) - 1;
static_assert(kRunTaps + kCodeBits <= 31, "a run's mask fits above the code, in an int32");

// The layout of the planes kernel (kind "planes") of p's blocks and values: it depends only on
// the blocks, their values and the kernel's geometry, not on the input.
LayoutBytes build_planes_layout(const BlockConvParams& p);

// A planes layout, read in place: its row groups, made in O(groups).
class PlanesWeights {
 public:
  explicit PlanesWeights(const void* layout);

  std::vector<GroupRows> groups;
  // The records of chunk j's group g: words [starts[j * G + g], starts[j * G + g + 1]) of the
  // stream, G groups (a chunk's last group ends where the next chunk's first starts).
  const int64_t* starts;
  const int32_t* stream;
  int64_t chunk_channels;  // input channels per chunk of the stream (the last may have fewer)
  int64_t chunks;
  int64_t columns;  // of all groups
  int64_t runs;     // tap-row runs of all groups
};

// The planes of one call: their layout for its geometry (shape and input size), how many of the
// layout's channel chunks a tile sweeps together, and where each code reads in the planes.
class PlanesGrid {
 public:
  PlanesGrid(const BlockConvParams& p, const PlanesWeights& w);

  int64_t tile_base(int64_t tile) const;  // grid position of the tile's first
  int64_t num_tiles() const;

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
  // A tile sweeps the layout's chunks `merged` at a time: sweeps of (chunks + merged - 1) /
  // merged, each a group's records in up to `merged` ranges.
  int64_t merged = 1;
  int64_t sweeps = 1;
  // Per code (channel * KH * KW + tap): where the column reads in the planes.
  std::vector<int32_t> offsets;
  // Per kernel-column mask of a tap-row run (all 1 << kRunTaps of them): its columns' reads as vector shifts from its first
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

  // Fills the planes: units [begin, end) of pack_units(), blocks of 16 input channels (their
  // padding only when packed by rows), then the input rows of every phase when packed by rows,
  // in any thread split.
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

// Torch-free CPU kernel for the gathered dense-block convolution (and linear, its 1x1 case).
//
// No gathers in the inner loop: the input is first copied once per call into zero-padded fp32
// planes, one per (channel, stride phase), laid out so that for every position q of a padded
// output grid and every weight column, the input element read is planes[offset(column) + q]. A
// tile of 64 consecutive grid positions then reads 64 consecutive floats per column, and the
// micro-kernel broadcasts weights over them. Grid positions outside the output (the zeros shared
// between rows and between images) are computed and dropped.
#pragma once

#include <cstddef>
#include <vector>

#include "../../common/block_params.h"
#include "row_groups.h"

namespace sparsekit::cpu {

// Output grid positions handled by one tile (four 16-lane vectors).
constexpr int64_t kTilePositions = 64;

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

class BlockConv {
 public:
  // Plans the call: plane geometry, column offsets, merged row groups. p must outlive this, and
  // the planes live in a buffer of the constructing thread, reused by its next call.
  explicit BlockConv(const BlockConvParams& p);

  // Fills the planes of input channels [begin, end) of pack_units() (any thread split).
  int64_t pack_units() const;
  void pack(int64_t begin, int64_t end);

  // Splits the output rows into up to `parts` sets (split_row_sets), so that calls with fewer
  // tiles than threads still spread; returns the number of sets made. Results do not change.
  int64_t split_rows(int64_t parts);

  // Computes work items [begin, end) of num_tiles() * num_parts(): item i is row set
  // i % num_parts() of tile i / num_parts(), so disjoint ranges can run on different threads;
  // each output element is written once, with blocks summed in a fixed order (deterministic).
  // times, when given, receives the split of the work.
  int64_t num_tiles() const;
  int64_t num_parts() const { return int64_t(parts_.size()); }
  int64_t grid_positions() const { return num_tiles() * kTilePositions; }
  void run_tiles(int64_t begin, int64_t end, TileTimes* times = nullptr) const;

 private:
  template <typename T>
  void pack_channels(int64_t begin, int64_t end);
  template <typename T>
  void store_tile(int64_t tile, const RowSet& part, const float* acc) const;

  const BlockConvParams& p_;
  PlaneAxis h_, w_;
  int64_t image_ = 0;      // grid positions per image: h_.extent * w_.extent
  int64_t positions_ = 0;  // N * image_
  int64_t plane_ = 0;      // floats per plane: the images and the zeros wrapped reads reach
  float* planes_ = nullptr;
  std::vector<int64_t> offsets_;
  const float* values_;         // the block tiles in fp32: p.values, or weights_
  std::vector<float> weights_;  // the block tiles converted, when the input is not fp32
  std::vector<RowGroup> groups_;
  std::vector<RowSet> parts_;
};

}  // namespace sparsekit::cpu

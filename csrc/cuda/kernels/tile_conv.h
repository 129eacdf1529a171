// The tensor-core block conv: its params and the index arithmetic its launch and its threads
// share. Torch-free and CUDA-header-free, so that the host compiler builds it too and a CPU
// test (tests/cpp/test_tile_conv.cpp) drives the same arithmetic the kernel runs.
//
// Work: y[q, row] = sum over the K-tiles of the row's tile of w[ktile][slot][j] *
// x[q at tap(ktile), channel(ktile, j)], for output positions q (GEMM M) and output rows (N).
// One CTA owns BM positions x one row tile and sums all its K-tiles in order (deterministic).
#pragma once

#include <cstdint>

#include "../../common/block_params.h"

#if defined(__CUDACC__)
#define SPARSEKIT_HD __host__ __device__ __forceinline__
#else
#define SPARSEKIT_HD inline
#endif

namespace sparsekit::tiles {

constexpr int kRows = 64;           // output rows per row tile: the GEMM's N tile
constexpr int kCols = 32;           // weight columns per K-tile, all at one tap
constexpr int kThreads = 128;       // four warps a CTA
constexpr int kChunkBytes = 16;     // one cp.async: 8 bf16/fp16 or 4 fp32 channels

SPARSEKIT_HD constexpr int chunk_elements(int element_bytes) { return kChunkBytes / element_bytes; }
// Output positions per CTA: 128 for 16-bit types (tensor cores), 64 for fp32 (SIMT FMA).
SPARSEKIT_HD constexpr int positions_per_cta(int element_bytes) { return element_bytes == 4 ? 64 : 128; }

struct TileConvParams {
  ConvShape shape;
  const void* input;          // channels-last: in_stride[1] == 1 (or C == 1)
  int64_t in_stride[4];
  void* output;               // any layout
  int64_t out_stride[4];
  // The prepacked layout (tile_layout.h), in device memory.
  const int32_t* tile_rows;   // [num_tiles, kRows]: output row of each slot, -1 pads
  const int32_t* tile_ptr;    // [num_tiles + 1]: tile t's K-tiles are tile_ptr[t] .. [t + 1]
  const int32_t* taps;        // [ktiles]: kh * KW + kw
  const int32_t* channels;    // [ktiles, kCols]: input channel (the group's base included), -1 pads
  // [ktiles, kCols / chunk]: a chunk's first channel when its channels are consecutive from a
  // multiple of the chunk (one 16-byte load), else -1 (element loads through `channels`)
  const int32_t* chunk_first;
  const void* weights;        // [ktiles, kRows, kCols], dtype: zero for slots the block lacks
  int64_t num_tiles;
  const void* bias;           // [K] or nullptr
  DType dtype;
  bool relu;
  bool vector_loads;          // input pointer and strides allow 16-byte loads at chunk_first
};

// An output position's input origin: where tap (0, 0) would read, unclipped.
struct Position {
  int64_t base;  // n * in_stride[0]
  int64_t ih0, iw0;
  bool valid;    // q < N * OH * OW
};

SPARSEKIT_HD Position position(const TileConvParams& p, int64_t q) {
  const ConvShape& s = p.shape;
  const int64_t plane = s.OH * s.OW;
  Position pos{0, 0, 0, q < s.N * plane};
  if (!pos.valid) return pos;
  const int64_t n = q / plane, oh = (q % plane) / s.OW, ow = q % s.OW;
  pos.base = n * p.in_stride[0];
  pos.ih0 = oh * s.stride_h - s.pad_h;
  pos.iw0 = ow * s.stride_w - s.pad_w;
  return pos;
}

// Where a tap reads relative to a position's origin.
struct TapShift {
  int64_t dh, dw;
};
SPARSEKIT_HD TapShift tap_shift(const TileConvParams& p, int32_t tap) {
  return {(tap / p.shape.KW) * p.shape.dil_h, (tap % p.shape.KW) * p.shape.dil_w};
}

// Offset (elements) of channel 0 of the input pixel a position reads at a tap; -1 where that
// pixel is padding or the position is past the end.
SPARSEKIT_HD int64_t tap_offset(const TileConvParams& p, const Position& pos, TapShift shift) {
  const int64_t ih = pos.ih0 + shift.dh, iw = pos.iw0 + shift.dw;
  if (!pos.valid || ih < 0 || ih >= p.shape.H || iw < 0 || iw >= p.shape.W) return -1;
  return pos.base + ih * p.in_stride[2] + iw * p.in_stride[3];
}

SPARSEKIT_HD int64_t output_offset(const TileConvParams& p, int64_t q, int32_t row) {
  const ConvShape& s = p.shape;
  const int64_t plane = s.OH * s.OW;
  const int64_t n = q / plane, oh = (q % plane) / s.OW, ow = q % s.OW;
  return n * p.out_stride[0] + row * p.out_stride[1] + oh * p.out_stride[2] + ow * p.out_stride[3];
}

// Which input chunks a thread gathers per K-tile: chunk column `column(t)` of the CTA's rows
// first_row(t) + i * row_step(t), i < rows_per_thread. The same for the weight tile's rows.
struct GatherShare {
  int chunks_per_row, row_step;
  SPARSEKIT_HD constexpr explicit GatherShare(int element_bytes)
      : chunks_per_row(kCols / chunk_elements(element_bytes)),
        row_step(kThreads / (kCols / chunk_elements(element_bytes))) {}
  SPARSEKIT_HD constexpr int column(int thread) const { return thread % chunks_per_row; }
  SPARSEKIT_HD constexpr int first_row(int thread) const { return thread / chunks_per_row; }
};

// The grid of a launch: x walks position tiles, y row tiles. Returns false when a dimension
// exceeds what a launch takes.
struct Grid {
  int64_t x, y;
};
inline Grid tile_grid(const TileConvParams& p, int element_bytes) {
  const int64_t positions = p.shape.N * p.shape.OH * p.shape.OW;
  const int64_t bm = positions_per_cta(element_bytes);
  return {(positions + bm - 1) / bm, p.num_tiles};
}
inline bool grid_fits(const Grid& g) { return g.x <= 2147483647 && g.y <= 65535; }

}  // namespace sparsekit::tiles

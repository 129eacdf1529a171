// The tensor-core block conv's prepacked layout of a pack (DESIGN.md, "Prepacked layouts"),
// built on the host from the canonical blocks once per pack and then copied to the device.
//
// Output rows are ordered by the first block that owns them (rows no block owns come last) and
// cut into tiles of kRows. Each tile gets, block by block in index order, the block's columns
// grouped by tap (taps ascending, channels ascending inside a tap) in K-tiles of kCols: the
// tap, the input channels (-1 pads the last K-tile of a tap) and the weights of the tile's
// slots (zero for slots whose row the block does not own; a row a block holds twice gets a
// second set of K-tiles). So a CTA reads, per K-tile, one input pixel per position plus channel
// offsets, and adds every block of its rows in order. As the zero slots multiply the input too,
// an Inf or NaN input turns every row of its row tile to NaN, not just the rows that read it.
#pragma once

#include <cstdint>
#include <vector>

#include "../../common/block_params.h"

namespace sparsekit::tiles {

struct TileLayout {
  int64_t num_tiles = 0;
  std::vector<int32_t> tile_rows, tile_ptr, taps, channels, chunk_first;
  std::vector<unsigned char> weights;  // [ktiles, kRows, kCols] elements of element_bytes

  int64_t num_ktiles() const { return int64_t(taps.size()); }
};

// The layout of the blocks (a valid index: check_block_index) for shape's kernel and groups;
// values holds element_bytes-sized elements (fp32, bf16 or fp16).
TileLayout build_tile_layout(const ConvShape& shape, const BlockIndex& blocks, const void* values,
                             int element_bytes);

}  // namespace sparsekit::tiles

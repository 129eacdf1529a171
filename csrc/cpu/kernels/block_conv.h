// Torch-free CPU kernel for the gathered dense-block convolution (and linear, its 1x1 case).
#pragma once

#include "../../common/block_params.h"

namespace sparsekit::cpu {

// Output positions (flattened over N, OH, OW) handled by one tile.
constexpr int64_t kTilePositions = 64;

int64_t num_tiles(const ConvShape& shape);

// Computes tiles [tile_begin, tile_end): every output channel of those positions, so disjoint
// ranges can run on different threads and each output element is written once, by one thread,
// with blocks summed in a fixed order (deterministic).
void block_conv2d_tiles(const BlockConvParams& p, int64_t tile_begin, int64_t tile_end);

}  // namespace sparsekit::cpu

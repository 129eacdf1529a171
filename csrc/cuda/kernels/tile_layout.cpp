#include "tile_layout.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "tile_conv.h"

namespace sparsekit::tiles {
namespace {

// One block's columns grouped by tap: per tap, (input channel, column in the block).
using TapColumns = std::map<int32_t, std::vector<std::pair<int32_t, int64_t>>>;

TapColumns tap_columns(const ConvShape& s, const BlockIndex& b, int64_t blk) {
  const int64_t area = s.KH * s.KW, per_group = s.C / s.groups;
  const int64_t group = b.row_idx[b.row_ptr[blk]] / (s.K / s.groups);
  TapColumns taps;
  for (int64_t j = b.col_ptr[blk]; j < b.col_ptr[blk + 1]; ++j) {
    const int32_t col = b.col_idx[j];
    taps[int32_t(col % area)].emplace_back(int32_t(group * per_group + col / area),
                                           j - b.col_ptr[blk]);
  }
  return taps;
}

}  // namespace

TileLayout build_tile_layout(const ConvShape& s, const BlockIndex& b, const void* values,
                             int element_bytes) {
  // Rows in the order blocks first own them, then the rows no block owns.
  std::vector<int32_t> order;
  std::vector<char> seen(size_t(s.K), 0);
  for (int64_t i = 0; i < b.row_ptr[b.num_blocks]; ++i)
    if (!seen[size_t(b.row_idx[i])]) seen[size_t(b.row_idx[i])] = 1, order.push_back(b.row_idx[i]);
  for (int32_t row = 0; row < s.K; ++row)
    if (!seen[size_t(row)]) order.push_back(row);

  TileLayout layout;
  layout.num_tiles = (s.K + kRows - 1) / kRows;
  layout.tile_rows.assign(size_t(layout.num_tiles * kRows), -1);
  std::copy(order.begin(), order.end(), layout.tile_rows.begin());
  std::vector<int64_t> place(size_t(s.K));  // output row -> its index in order
  for (size_t i = 0; i < order.size(); ++i) place[size_t(order[i])] = int64_t(i);

  std::vector<TapColumns> block_taps;
  for (int64_t blk = 0; blk < b.num_blocks; ++blk) block_taps.push_back(tap_columns(s, b, blk));
  const int chunk = chunk_elements(element_bytes);
  const auto* bytes = static_cast<const unsigned char*>(values);
  const size_t ktile_bytes = size_t(kRows) * kCols * size_t(element_bytes);
  layout.tile_ptr.push_back(0);
  for (int64_t t = 0; t < layout.num_tiles; ++t) {
    for (int64_t blk = 0; blk < b.num_blocks; ++blk) {
      const int64_t r0 = b.row_ptr[blk], r1 = b.row_ptr[blk + 1];
      const int64_t cols = b.col_ptr[blk + 1] - b.col_ptr[blk];
      // (slot, row in the block) of the block's rows in this tile; a row the block holds twice
      // goes to a second pass of its K-tiles, so that both add up as on the CPU
      std::vector<std::vector<std::pair<int64_t, int64_t>>> passes;
      std::vector<size_t> seen_in_block(kRows, 0);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t at = place[size_t(b.row_idx[r])];
        if (at / kRows != t) continue;
        const size_t pass = seen_in_block[size_t(at % kRows)]++;
        if (pass == passes.size()) passes.emplace_back();
        passes[pass].emplace_back(at % kRows, r - r0);
      }
      for (const auto& owned : passes) {
        for (const auto& [tap, columns] : block_taps[size_t(blk)]) {
          for (size_t first = 0; first < columns.size(); first += kCols) {
            const size_t count = std::min(columns.size() - first, size_t(kCols));
            layout.taps.push_back(tap);
            const size_t base = layout.channels.size();
            layout.channels.resize(base + kCols, -1);
            const size_t w0 = layout.weights.size();
            layout.weights.resize(w0 + ktile_bytes, 0);
            for (size_t j = 0; j < count; ++j) {
              layout.channels[base + j] = columns[first + j].first;
              for (const auto& [sl, r] : owned)
                std::memcpy(&layout.weights[w0 + (size_t(sl) * kCols + j) * size_t(element_bytes)],
                            bytes + (b.val_ptr[blk] + r * cols + columns[first + j].second) *
                                        element_bytes,
                            size_t(element_bytes));
            }
            for (size_t c = 0; c < size_t(kCols); c += size_t(chunk)) {
              const int32_t lead = layout.channels[base + c];
              bool consecutive = lead >= 0 && lead % chunk == 0;
              for (size_t i = 1; consecutive && i < size_t(chunk); ++i)
                consecutive = layout.channels[base + c + i] == lead + int32_t(i);
              layout.chunk_first.push_back(consecutive ? lead : -1);
            }
          }
        }
      }
    }
    layout.tile_ptr.push_back(int32_t(layout.taps.size()));
  }
  return layout;
}

}  // namespace sparsekit::tiles

#include "block_params.h"

namespace sparsekit {

const char* check_block_index(const ConvShape& s, const BlockIndex& b, int64_t num_rows,
                              int64_t num_cols, int64_t num_values) {
  if (s.groups <= 0 || s.K % s.groups != 0 || s.C % s.groups != 0)
    return "groups must divide both input and output channels";
  const int64_t rows_per_group = s.K / s.groups;
  const int64_t cols = (s.C / s.groups) * s.KH * s.KW;
  if (b.row_ptr[0] != 0 || b.col_ptr[0] != 0 || b.val_ptr[0] != 0)
    return "block offsets must start at 0";
  for (int64_t blk = 0; blk < b.num_blocks; ++blk) {
    const int64_t r0 = b.row_ptr[blk], r1 = b.row_ptr[blk + 1];
    const int64_t c0 = b.col_ptr[blk], c1 = b.col_ptr[blk + 1];
    if (r1 <= r0 || c1 <= c0) return "every block needs at least one row and one column";
    if (r1 > num_rows || c1 > num_cols) return "block offsets run past row_idx or col_idx";
    if (b.val_ptr[blk + 1] - b.val_ptr[blk] != (r1 - r0) * (c1 - c0))
      return "block value offsets do not match rows x columns";
    const int64_t first = b.row_idx[r0];
    if (first < 0 || first >= s.K) return "row index out of range";
    for (int64_t i = r0; i < r1; ++i) {
      if (b.row_idx[i] < 0 || b.row_idx[i] >= s.K) return "row index out of range";
      if (b.row_idx[i] / rows_per_group != first / rows_per_group)
        return "a block's rows span several groups";
    }
    for (int64_t j = c0; j < c1; ++j)
      if (b.col_idx[j] < 0 || b.col_idx[j] >= cols) return "column index out of range";
  }
  if (b.row_ptr[b.num_blocks] != num_rows || b.col_ptr[b.num_blocks] != num_cols ||
      b.val_ptr[b.num_blocks] != num_values)
    return "block offsets do not end at the lengths of row_idx, col_idx and values";
  return nullptr;
}

}  // namespace sparsekit

// The output-row structure both CPU kernels share: blocks with the same rows merged into one
// group, and the groups split into sets of rows that threads can compute independently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "../../common/block_params.h"

namespace sparsekit::cpu {

// One block of a group: its columns col_idx[first_column, first_column + columns).
struct Segment {
  int64_t block;
  int64_t first_column;
  int64_t columns;
};

// Blocks that own the same output rows, in the same order: one pass over all their columns,
// the accumulators kept in registers from the first column to the last.
struct RowGroup {
  std::vector<int32_t> rows;
  std::vector<Segment> segments;
};

// Groups of the blocks, in the order of their first block (when a layout is built).
std::vector<RowGroup> group_blocks(const BlockIndex& blocks);

// A row group as a call sees it, in a layout: its rows and its multiply-adds per position.
struct GroupRows {
  std::span<const int32_t> rows;
  int64_t work;
};

// The row groups and output rows one work item computes.
struct RowSet {
  std::vector<std::size_t> groups;
  std::vector<int32_t> rows;
};

// Every group and all K rows in one set.
std::vector<RowSet> one_row_set(const std::vector<GroupRows>& groups, int64_t K);

// Up to `parts` sets, each the rows of whole groups that share no row with another set (rows
// no group owns join the first), balanced by multiply-adds, groups in their original order
// inside a set: a row's blocks sum in the same order whatever the split.
std::vector<RowSet> split_row_sets(const std::vector<GroupRows>& groups, int64_t K, int64_t parts);

}  // namespace sparsekit::cpu

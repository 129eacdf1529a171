#include "row_groups.h"

#include <algorithm>
#include <map>
#include <numeric>

namespace sparsekit::cpu {

std::vector<RowGroup> group_blocks(const BlockIndex& b) {
  std::vector<RowGroup> groups;
  std::map<std::vector<int32_t>, size_t> group_of;
  for (int64_t blk = 0; blk < b.num_blocks; ++blk) {
    std::vector<int32_t> rows(b.row_idx + b.row_ptr[blk], b.row_idx + b.row_ptr[blk + 1]);
    auto [it, fresh] = group_of.try_emplace(rows, groups.size());
    if (fresh) groups.push_back({std::move(rows), {}});
    groups[it->second].segments.push_back(
        {blk, b.col_ptr[blk], b.col_ptr[blk + 1] - b.col_ptr[blk]});
  }
  return groups;
}

std::vector<RowSet> one_row_set(const std::vector<GroupRows>& groups, int64_t K) {
  std::vector<RowSet> sets(1);
  sets[0].groups.resize(groups.size());
  std::iota(sets[0].groups.begin(), sets[0].groups.end(), size_t(0));
  sets[0].rows.resize(K);
  std::iota(sets[0].rows.begin(), sets[0].rows.end(), int32_t(0));
  return sets;
}

std::vector<RowSet> split_row_sets(const std::vector<GroupRows>& groups, int64_t K, int64_t parts) {
  const int64_t n = int64_t(groups.size());
  // Connected components of the groups, two groups being linked when they share a row.
  std::vector<int64_t> parent(n), owner(K, -1);
  std::iota(parent.begin(), parent.end(), 0);
  auto root = [&](int64_t g) {
    while (parent[g] != g) g = parent[g] = parent[parent[g]];
    return g;
  };
  for (int64_t g = 0; g < n; ++g)
    for (int32_t r : groups[g].rows) {
      if (owner[r] >= 0) parent[root(g)] = root(owner[r]);
      owner[r] = g;
    }
  std::map<int64_t, std::pair<int64_t, std::vector<size_t>>> components;  // root -> (work, groups)
  for (int64_t g = 0; g < n; ++g) {
    auto& [work, members] = components[root(g)];
    work += groups[g].work;
    members.push_back(size_t(g));
  }
  // Largest components first, each to the least loaded set (ties: the first, deterministic).
  std::vector<std::pair<int64_t, std::vector<size_t>>> order;
  for (auto& entry : components) order.push_back(std::move(entry.second));
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<RowSet> sets(std::max<int64_t>(1, std::min<int64_t>(parts, int64_t(order.size()))));
  std::vector<int64_t> load(sets.size(), 0);
  for (const auto& [work, members] : order) {
    const size_t to = std::min_element(load.begin(), load.end()) - load.begin();
    load[to] += work;
    sets[to].groups.insert(sets[to].groups.end(), members.begin(), members.end());
  }
  for (RowSet& set : sets) {
    std::sort(set.groups.begin(), set.groups.end());
    for (size_t g : set.groups)
      for (int32_t r : groups[g].rows) owner[r] = &set - sets.data();
  }
  for (int64_t r = 0; r < K; ++r) sets[std::max<int64_t>(owner[r], 0)].rows.push_back(int32_t(r));
  return sets;
}

}  // namespace sparsekit::cpu

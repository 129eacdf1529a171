#include "tap_conv.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <type_traits>

#include "elements.h"

namespace sparsekit::cpu {
namespace {

constexpr int64_t TP = kTapTilePositions;
constexpr int64_t kPanelRows = 16;
constexpr int64_t kChunkRows = 4 * kPanelRows;  // the most rows one pass holds

// ---- register-blocked micro-kernel: res[p][0:NP*16] = sum over the tile's taps and the
// group's columns of that tap of w[column][0:NP*16] * x[p][tap][channel] ----

struct TileTaps {
  int64_t count = 0;
  int32_t tap[64 * 64];
  const char* const* ptr;  // [count][TP]: where position p reads tap tap[i] (channel 0)
};

template <int NP, int P>
inline __attribute__((always_inline)) void micro(const TapPanels& g, const float* w,
                                                 const TileTaps& tt, int64_t p0, float* res) {
  vec16 c[NP][P];
  for (int j = 0; j < NP; ++j)
    for (int p = 0; p < P; ++p) c[j][p] = vec16{};
  for (int64_t i = 0; i < tt.count; ++i) {
    const int32_t t = tt.tap[i], k0 = g.tap_start[t], k1 = g.tap_start[t + 1];
    const float* x[P];
    for (int p = 0; p < P; ++p) x[p] = reinterpret_cast<const float*>(tt.ptr[i * TP + p0 + p]);
    for (int32_t k = k0; k < k1; ++k) {
      const int64_t ch = g.channel[k];
      const vec16* wk = reinterpret_cast<const vec16*>(w + int64_t(k) * NP * kPanelRows);
      vec16 wv[NP];
      for (int j = 0; j < NP; ++j) wv[j] = wk[j];
      for (int p = 0; p < P; ++p) {
        const float b = x[p][ch];
        for (int j = 0; j < NP; ++j) c[j][p] += wv[j] * b;
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int j = 0; j < NP; ++j)
      *reinterpret_cast<vec16*>(res + (p0 + p) * kChunkRows + j * kPanelRows) = c[j][p];
}

template <int NP, int P>
inline __attribute__((always_inline)) void passes(const TapPanels& g, const float* w,
                                                  const TileTaps& tt, float* res) {
  for (int64_t p0 = 0; p0 < TP; p0 += P) micro<NP, P>(g, w, tt, p0, res);
}

// One clone per ISA, picked at load time by the CPU's features.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void chunk_tile(const TapPanels& g, const TapChunk& chunk, const float* panels,
                const TileTaps& tt, float* res) {
  const float* w = panels + chunk.offset;
  switch (chunk.panels) {
    case 1: return passes<1, 12>(g, w, tt, res);
    case 2: return passes<2, 12>(g, w, tt, res);
    case 3: return passes<3, 8>(g, w, tt, res);
    default: return passes<4, 6>(g, w, tt, res);
  }
}

// ---- the same for bf16 column pairs (vdpbf16ps): each lane multiplies its row's two weights
// of a pair by the pair's two input elements, broadcast as one 32-bit value ----

#define SPARSEKIT_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vbmi2,avx512bf16")))

// What a position's input x gives a pair of channels ch[0], ch[1]: both in one 32-bit lane
// (ch[0] low), broadcast. Adjacent channels are one load; two others, ch[0] > ch[1], two loads
// shifted together (x[ch[0]] is the high half of x[ch[0] - 1 .. ch[0]]); a lone column's low
// half alone.
inline uint32_t load32(const uint16_t* x) {
  uint32_t v;
  std::memcpy(&v, x, 4);
  return v;
}
struct AdjacentPair {
  SPARSEKIT_BF16_TARGET __m512i operator()(const uint16_t* x, const int32_t* ch) const {
    return _mm512_set1_epi32(int(load32(x + ch[0])));
  }
};
struct SplitPair {
  SPARSEKIT_BF16_TARGET __m512i operator()(const uint16_t* x, const int32_t* ch) const {
    return _mm512_shldi_epi32(_mm512_set1_epi32(int(load32(x + ch[1]))),
                              _mm512_set1_epi32(int(load32(x + ch[0] - 1))), 16);
  }
};
struct LoneColumn {
  SPARSEKIT_BF16_TARGET __m512i operator()(const uint16_t* x, const int32_t* ch) const {
    return _mm512_set1_epi32(int(x[ch[0]]));
  }
};

// Pairs [k0, k1) of one tap into c.
template <int NP, int P, typename Read>
SPARSEKIT_BF16_TARGET inline __attribute__((always_inline)) void pair_run(
    int32_t k0, int32_t k1, const int32_t* channels, const float* w, const uint16_t* const* x,
    __m512 (&c)[NP][P]) {
  for (int32_t k = k0; k < k1; ++k) {
    const float* wk = w + int64_t(k) * NP * kPanelRows;
    __m512bh wv[NP];
    for (int j = 0; j < NP; ++j) wv[j] = (__m512bh)_mm512_load_si512(wk + j * kPanelRows);
    for (int p = 0; p < P; ++p) {
      const __m512bh b = (__m512bh)Read()(x[p], channels + 2 * k);
      for (int j = 0; j < NP; ++j) c[j][p] = _mm512_dpbf16_ps(c[j][p], wv[j], b);
    }
  }
}

template <int NP, int P>
SPARSEKIT_BF16_TARGET inline __attribute__((always_inline)) void micro_pairs(
    const TapPanels& g, const float* w, const TileTaps& tt, int64_t p0, float* res) {
  __m512 c[NP][P];
  for (int j = 0; j < NP; ++j)
    for (int p = 0; p < P; ++p) c[j][p] = _mm512_setzero_ps();
  const int32_t* channels = g.pair_channel.data();
  for (int64_t i = 0; i < tt.count; ++i) {
    const int32_t t = tt.tap[i];
    const uint16_t* x[P];
    for (int p = 0; p < P; ++p) x[p] = reinterpret_cast<const uint16_t*>(tt.ptr[i * TP + p0 + p]);
    pair_run<NP, P, AdjacentPair>(g.pair_start[t], g.pair_split[t], channels, w, x, c);
    pair_run<NP, P, SplitPair>(g.pair_split[t], g.pair_lone[t], channels, w, x, c);
    pair_run<NP, P, LoneColumn>(g.pair_lone[t], g.pair_start[t + 1], channels, w, x, c);
  }
  for (int p = 0; p < P; ++p)
    for (int j = 0; j < NP; ++j)
      _mm512_store_ps(res + (p0 + p) * kChunkRows + j * kPanelRows, c[j][p]);
}

template <int NP, int P>
SPARSEKIT_BF16_TARGET void pair_passes(const TapPanels& g, const float* w, const TileTaps& tt,
                                       float* res) {
  for (int64_t p0 = 0; p0 < TP; p0 += P) micro_pairs<NP, P>(g, w, tt, p0, res);
}

void chunk_tile_pairs(const TapPanels& g, const TapChunk& chunk, const float* panels,
                      const TileTaps& tt, float* res) {
  const float* w = panels + chunk.offset;
  switch (chunk.panels) {
    case 1: return pair_passes<1, 12>(g, w, tt, res);
    case 2: return pair_passes<2, 12>(g, w, tt, res);
    case 3: return pair_passes<3, 8>(g, w, tt, res);
    default: return pair_passes<4, 6>(g, w, tt, res);
  }
}

bool has_pair_isa() {
  static const bool has =
      __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vbmi2");
  return has;
}

// A row group's arrays while its layout is built (TapPanels views them once written), and
// where each column's weights lie in the pack's values: source, the row-0 weight; stride, the
// values between rows (its block's width); pair_column, each pair's two columns (-1: none).
struct GroupPlan {
  std::vector<int32_t> tap_start, channel;
  std::vector<int64_t> source, stride;
  std::vector<int32_t> pair_start, pair_split, pair_lone, pair_column, pair_channel;
  std::vector<TapChunk> chunks;
};

// A tap's columns [k0, k1) into pairs (see TapPanels): adjacent channels, then the others two
// by two (the higher channel low), then lone columns (an odd one out, and columns of a channel
// seen twice, which blocks sharing rows may have).
void pair_tap(GroupPlan& pn, int32_t k0, int32_t k1) {
  std::vector<int32_t> order(k1 - k0), rest, lone;
  std::iota(order.begin(), order.end(), k0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return pn.channel[a] < pn.channel[b]; });
  const auto add = [&](int32_t low, int32_t high) {
    pn.pair_column.insert(pn.pair_column.end(), {low, high});
    pn.pair_channel.insert(pn.pair_channel.end(),
                           {pn.channel[low], pn.channel[high < 0 ? low : high]});
  };
  pn.pair_start.push_back(int32_t(pn.pair_column.size() / 2));
  for (size_t i = 0; i < order.size(); ++i)
    if (i + 1 < order.size() && pn.channel[order[i + 1]] == pn.channel[order[i]] + 1) {
      add(order[i], order[i + 1]);
      ++i;
    } else {
      rest.push_back(order[i]);
    }
  pn.pair_split.push_back(int32_t(pn.pair_column.size() / 2));
  for (size_t i = 0; i < rest.size(); i += 2)
    if (i + 1 < rest.size() && pn.channel[rest[i]] != pn.channel[rest[i + 1]])
      add(rest[i + 1], rest[i]);
    else
      lone.insert(lone.end(), rest.begin() + i, rest.begin() + std::min(i + 2, rest.size()));
  pn.pair_lone.push_back(int32_t(pn.pair_column.size() / 2));
  for (int32_t k : lone) add(k, -1);
}

std::vector<TapConv::AxisClass> axis_classes(int64_t in, int64_t out, int64_t taps,
                                             int64_t stride, int64_t pad, int64_t dil) {
  std::vector<TapConv::AxisClass> classes;
  for (int64_t o = 0; o < out; ++o) {
    uint64_t mask = 0;
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t i = o * stride - pad + t * dil;
      if (i >= 0 && i < in) mask |= uint64_t(1) << t;
    }
    if (classes.empty() || classes.back().taps != mask) classes.push_back({o, o, mask});
    classes.back().end = o + 1;
  }
  return classes;
}

// Chunks of 1-4 panels for `rows` rows, four at a time but for a last 3 + 2 rather than 4 + 1.
std::vector<TapChunk> chunk_rows(int64_t rows, int64_t columns, int64_t& offset) {
  std::vector<TapChunk> chunks;
  int64_t left = (rows + kPanelRows - 1) / kPanelRows, first = 0;
  while (left > 0) {
    const int64_t take = left == 5 ? 3 : std::min<int64_t>(left, 4);
    chunks.push_back({first, take, offset, 0});
    offset += columns * take * kPanelRows;
    first += take * kPanelRows;
    left -= take;
  }
  return chunks;
}

}  // namespace

bool TapConv::suits(const BlockConvParams& p) {
  const ConvShape& s = p.shape;
  if (s.KH > 64 || s.KW > 64) return false;
  const BlockIndex& b = p.blocks;
  double used = 0, computed = 0;
  for (int64_t blk = 0; blk < b.num_blocks; ++blk) {
    const int64_t rows = b.row_ptr[blk + 1] - b.row_ptr[blk];
    const int64_t columns = b.col_ptr[blk + 1] - b.col_ptr[blk];
    used += double(rows * columns);
    computed += double((rows + kPanelRows - 1) / kPanelRows * kPanelRows * columns);
  }
  // Measured (bench/cost_fit.py): blocks of 8 rows run faster on the planes kernel, of 12 and
  // more on this one.
  return used >= 0.65 * computed;
}

namespace {

// Group g's panels (plan pn, rows `rows`) written at `panels`: weight (column k, row r of the
// group) as fp32, or as bf16 bits for pairs (k < 0: zero).
void pack_group(const BlockConvParams& p, const GroupPlan& pn, int64_t rows, bool pairs,
                float* panels) {
  const auto weight = [&](int64_t k, int64_t r) {
    return element(p.values, p.dtype, pn.source[k] + r * pn.stride[k]);
  };
  const auto bits = [&](int32_t k, int64_t r) -> uint32_t {
    return k < 0 ? 0u : static_cast<const uint16_t*>(p.values)[pn.source[k] + r * pn.stride[k]];
  };
  const int64_t units = pairs ? int64_t(pn.pair_column.size() / 2) : int64_t(pn.channel.size());
  for (const TapChunk& chunk : pn.chunks) {
    const int64_t width = chunk.panels * kPanelRows;
    float* dst = panels + chunk.offset;
    const int64_t used = std::min(width, rows - chunk.first_row);
    for (int64_t k = 0; k < units; ++k, dst += width) {
      for (int64_t r = chunk.first_row; r < chunk.first_row + used; ++r) {
        if (pairs) {
          const uint32_t v = bits(pn.pair_column[2 * k], r) | bits(pn.pair_column[2 * k + 1], r) << 16;
          std::memcpy(dst + r - chunk.first_row, &v, 4);
        } else {
          dst[r - chunk.first_row] = weight(k, r);
        }
      }
      std::fill(dst + used, dst + width, 0.f);
    }
  }
}

}  // namespace

LayoutBytes build_tap_layout(const BlockConvParams& p, const ParallelFor& parallel) {
  const bool pairs = p.dtype == DType::BFloat16 && has_pair_isa();
  const ConvShape& s = p.shape;
  const BlockIndex& b = p.blocks;
  const int64_t taps = s.KH * s.KW, channels_per_group = s.C / s.groups;
  const int64_t rows_per_group = s.K / s.groups;
  const std::vector<RowGroup> groups = group_blocks(b);
  std::vector<GroupPlan> plans(groups.size());
  int64_t offset = 0;
  std::vector<int32_t> owners(s.K, 0);
  // Each group's columns sorted by tap (counting sort: stable), then its chunks.
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const RowGroup& g = groups[gi];
    GroupPlan& pn = plans[gi];
    for (int32_t r : g.rows) ++owners[r];
    const int64_t channel0 = (g.rows[0] / rows_per_group) * channels_per_group;
    pn.tap_start.assign(taps + 1, 0);
    for (const Segment& sg : g.segments)
      for (int64_t j = sg.first_column; j < sg.first_column + sg.columns; ++j)
        ++pn.tap_start[b.col_idx[j] % taps + 1];
    for (int64_t t = 0; t < taps; ++t) pn.tap_start[t + 1] += pn.tap_start[t];
    const int64_t columns = pn.tap_start[taps];
    pn.channel.resize(columns), pn.source.resize(columns), pn.stride.resize(columns);
    std::vector<int32_t> next(pn.tap_start.begin(), pn.tap_start.end() - 1);
    for (const Segment& sg : g.segments)
      for (int64_t j = sg.first_column; j < sg.first_column + sg.columns; ++j) {
        const int32_t k = next[b.col_idx[j] % taps]++;
        pn.channel[k] = int32_t(channel0 + b.col_idx[j] / taps);
        pn.source[k] = b.val_ptr[sg.block] + (j - sg.first_column);
        pn.stride[k] = sg.columns;
      }
    if (pairs) {
      for (int64_t t = 0; t < taps; ++t) pair_tap(pn, pn.tap_start[t], pn.tap_start[t + 1]);
      pn.pair_start.push_back(int32_t(pn.pair_column.size() / 2));
    }
    const int64_t units = pairs ? int64_t(pn.pair_column.size() / 2) : columns;
    pn.chunks = chunk_rows(int64_t(g.rows.size()), units, offset);
  }
  for (size_t gi = 0; gi < groups.size(); ++gi)
    for (TapChunk& chunk : plans[gi].chunks) {
      const auto first = groups[gi].rows.begin() + chunk.first_row;
      const auto last = first + std::min<int64_t>(chunk.panels * kPanelRows,
                                                  groups[gi].rows.end() - first);
      chunk.exclusive = std::all_of(first, last, [&](int32_t r) { return owners[r] == 1; });
    }

  LayoutWriter out;
  std::vector<TapGroupRecord> records;
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const GroupPlan& pn = plans[gi];
    records.push_back({out.add(groups[gi].rows), int64_t(groups[gi].rows.size()),
                       out.add(pn.tap_start), out.add(pn.channel), int64_t(pn.channel.size()),
                       out.add(pn.pair_start), out.add(pn.pair_split), out.add(pn.pair_lone),
                       out.add(pn.pair_channel), int64_t(pn.pair_channel.size() / 2),
                       out.add(pn.chunks), int64_t(pn.chunks.size())});
  }
  LayoutHeader header{};
  header.kind = LayoutKind::Taps;
  header.num_groups = int64_t(groups.size());
  header.groups_at = out.add(records);
  header.owners_at = out.add(owners);
  header.data_at = out.zeros(offset * int64_t(sizeof(float)));
  header.pairs = pairs;
  LayoutBytes layout = out.finish(p, header);
  float* panels = layout_array<float>(layout.data(), header.data_at);
  parallel(int64_t(groups.size()), [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g)
      pack_group(p, plans[g], int64_t(groups[g].rows.size()), pairs, panels);
  });
  return layout;
}

TapWeights::TapWeights(const void* layout) {
  const LayoutHeader& h = layout_header(layout);
  const auto* records = layout_array<TapGroupRecord>(layout, h.groups_at);
  const auto span = [&](int64_t at, int64_t count) {
    return std::span<const int32_t>(layout_array<int32_t>(layout, at), size_t(count));
  };
  const int64_t taps = h.KH * h.KW;
  for (int64_t g = 0; g < h.num_groups; ++g) {
    const TapGroupRecord& r = records[g];
    const int64_t pair_taps = h.pairs ? taps : 0;
    panels.push_back({span(r.rows_at, r.num_rows), span(r.tap_start_at, taps + 1),
                      span(r.channel_at, r.num_columns), span(r.pair_start_at, pair_taps + h.pairs),
                      span(r.pair_split_at, pair_taps), span(r.pair_lone_at, pair_taps),
                      span(r.pair_channel_at, 2 * r.num_pairs),
                      {layout_array<TapChunk>(layout, r.chunks_at), size_t(r.num_chunks)}});
    groups.push_back({panels.back().rows, r.num_rows * r.num_columns});
  }
  owners = layout_array<int32_t>(layout, h.owners_at);
  panels_ = layout_array<float>(layout, h.data_at);
  pairs_ = h.pairs != 0;
}

TapConv::TapConv(const BlockConvParams& p, const TapWeights& w) : p_(p), w_(w) {
  const ConvShape& s = p.shape;
  h_classes_ = axis_classes(s.H, s.OH, s.KH, s.stride_h, s.pad_h, s.dil_h);
  w_classes_ = axis_classes(s.W, s.OW, s.KW, s.stride_w, s.pad_w, s.dil_w);
  class_start_.push_back(0);
  for (const AxisClass& h : h_classes_)
    for (const AxisClass& wc : w_classes_)
      class_start_.push_back(class_start_.back() + s.N * (h.end - h.begin) * (wc.end - wc.begin));

  // The input is read in place when it has the micro-kernel's type and unit channel stride.
  x_bytes_ = w.pairs() ? 2 : 4;
  copy_input_ = (p.dtype != DType::Float32 && !w.pairs()) || p.in_stride[1] != 1;
  if (copy_input_) {
    static thread_local std::vector<float> input;  // bf16 copies use its first half
    if (int64_t(input.size()) < s.N * s.H * s.W * s.C) input.resize(s.N * s.H * s.W * s.C);
    copy_ = input.data();
    x_ = static_cast<const char*>(copy_);
    x_stride_[0] = s.H * s.W * s.C, x_stride_[1] = s.W * s.C, x_stride_[2] = s.C;
  } else {
    x_ = static_cast<const char*>(p.input);
    x_stride_[0] = p.in_stride[0], x_stride_[1] = p.in_stride[2], x_stride_[2] = p.in_stride[3];
  }
  zeros_.assign(s.C, 0.f);
  bias_ = bias_floats(p);
  sets_ = one_row_set(w.groups, s.K);
  split_rows(1);
}

int64_t TapConv::split_rows(int64_t parts) {
  if (parts > 1) sets_ = split_row_sets(w_.groups, p_.shape.K, parts);
  shared_.assign(sets_.size(), {});
  for (size_t i = 0; i < sets_.size(); ++i)
    for (int32_t r : sets_[i].rows)
      if (w_.owners[r] > 1) shared_[i].push_back(r);
  return num_parts();
}

int64_t TapConv::num_tiles() const { return (class_start_.back() + TP - 1) / TP; }

int64_t TapConv::pack_units() const { return copy_input_ ? p_.shape.N * p_.shape.H : 0; }

// Input rows (n, h) [begin, end) of N * H, from T to X (fp32, or bf16 bits kept as they are)
// in NHWC.
template <typename T, typename X>
void TapConv::pack_rows(int64_t begin, int64_t end) {
  const ConvShape& s = p_.shape;
  const T* x = static_cast<const T*>(p_.input);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / s.H, h = row % s.H;
    const T* src = x + n * p_.in_stride[0] + h * p_.in_stride[2];
    X* out = static_cast<X*>(copy_) + row * s.W * s.C;
    for (int64_t w = 0; w < s.W; ++w)
      for (int64_t c = 0; c < s.C; ++c) {
        const T v = src[w * p_.in_stride[3] + c * p_.in_stride[1]];
        if constexpr (std::is_same_v<X, float>)
          out[w * s.C + c] = to_float(v);
        else
          out[w * s.C + c] = v;
      }
  }
}

void TapConv::pack(int64_t begin, int64_t end) {
  if (w_.pairs()) return pack_rows<uint16_t, uint16_t>(begin, end);
  switch (p_.dtype) {
    case DType::Float32: return pack_rows<float, float>(begin, end);
    case DType::BFloat16: return pack_rows<uint16_t, float>(begin, end);
    case DType::Float16: return pack_rows<_Float16, float>(begin, end);
  }
}

TapConv::Position TapConv::position(int64_t q) const {
  const ConvShape& s = p_.shape;
  const int64_t cls = std::upper_bound(class_start_.begin(), class_start_.end(), q) -
                      class_start_.begin() - 1;
  const AxisClass& hc = h_classes_[cls / w_classes_.size()];
  const AxisClass& wc = w_classes_[cls % w_classes_.size()];
  const int64_t height = hc.end - hc.begin, width = wc.end - wc.begin;
  const int64_t local = q - class_start_[cls], n = local / (height * width);
  const int64_t oh = hc.begin + (local / width) % height, ow = wc.begin + local % width;
  const int64_t ih = oh * s.stride_h - s.pad_h, iw = ow * s.stride_w - s.pad_w;
  return {n * x_stride_[0] + ih * x_stride_[1] + iw * x_stride_[2],
          n * p_.out_stride[0] + oh * p_.out_stride[2] + ow * p_.out_stride[3], hc.taps, wc.taps};
}

// A chunk's results into the tile's accumulator [TP][K]: set where one group owns the rows,
// added where several do. The accumulator stays in cache; the output is written once, after.
void TapConv::add_chunk(std::span<const int32_t> group_rows, const TapChunk& chunk, int64_t count,
                        const float* res, float* acc) const {
  const int64_t K = p_.shape.K;
  const int64_t used = std::min(chunk.panels * kPanelRows, int64_t(group_rows.size()) - chunk.first_row);
  const int32_t* rows = group_rows.data() + chunk.first_row;
  for (int64_t i = 0; i < count; ++i) {
    const float* r = res + i * kChunkRows;
    float* a = acc + i * K;
    if (chunk.exclusive)
      for (int64_t j = 0; j < used; ++j) a[rows[j]] = r[j];
    else
      for (int64_t j = 0; j < used; ++j) a[rows[j]] = w_.owners[rows[j]] == 1 ? r[j] : a[rows[j]] + r[j];
  }
}

// Bias, ReLU and the output, once per element, for the rows of one set.
template <typename T>
void TapConv::store(const RowSet& set, const Position* at, int64_t count, const float* acc) const {
  T* y = static_cast<T*>(p_.output);
  const int64_t K = p_.shape.K, os = p_.out_stride[1];
  const float* bias = bias_.data();
  const bool relu = p_.relu;
  for (int64_t i = 0; i < count; ++i) {
    const float* a = acc + i * K;
    T* out = y + at[i].out;
    if (int64_t(set.rows.size()) == K && os == 1) {  // every row, contiguous: vectorised
      for (int64_t k = 0; k < K; ++k) {
        const float v = a[k] + bias[k];
        out[k] = from_float<T>(relu ? std::max(v, 0.f) : v);
      }
    } else {
      for (int32_t k : set.rows) {
        const float v = a[k] + bias[k];
        out[k * os] = from_float<T>(relu ? std::max(v, 0.f) : v);
      }
    }
  }
}

void TapConv::run_tiles(int64_t begin, int64_t end, TileTimes* times) const {
  using clock = std::chrono::steady_clock;
  const auto ns = [](clock::time_point a, clock::time_point b) {
    return int64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count());
  };
  const ConvShape& s = p_.shape;
  const int64_t total = class_start_.back();
  std::vector<float> acc(TP * s.K);
  alignas(64) float res[TP * kChunkRows];
  std::vector<const char*> ptr(s.KH * s.KW * TP);
  const char* zeros = reinterpret_cast<const char*>(zeros_.data());
  TileTaps tt;
  tt.ptr = ptr.data();
  Position at[TP];
  for (int64_t item = begin; item < end; ++item) {
    const int64_t tile = item / num_parts();
    const size_t set_index = size_t(item % num_parts());
    const RowSet& set = sets_[set_index];
    const auto start = times ? clock::now() : clock::time_point();
    // The tile's positions and, for every tap some of them read, where each reads it.
    const int64_t count = std::min(TP, total - tile * TP);
    uint64_t h_any = 0, w_any = 0;
    for (int64_t i = 0; i < count; ++i) {
      at[i] = position(tile * TP + i);
      h_any |= at[i].h_taps, w_any |= at[i].w_taps;
    }
    tt.count = 0;
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      if (!(h_any >> kh & 1)) continue;
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        if (!(w_any >> kw & 1)) continue;
        const int64_t shift = kh * s.dil_h * x_stride_[1] + kw * s.dil_w * x_stride_[2];
        const char** row = ptr.data() + tt.count * TP;
        for (int64_t i = 0; i < TP; ++i)
          row[i] = i < count && (at[i].h_taps >> kh & 1) && (at[i].w_taps >> kw & 1)
                       ? x_ + (at[i].in + shift) * x_bytes_
                       : zeros;
        tt.tap[tt.count++] = int32_t(kh * s.KW + kw);
      }
    }
    for (int32_t k : shared_[set_index])
      for (int64_t i = 0; i < count; ++i) acc[i * s.K + k] = 0.f;
    int64_t micro_ns = 0;
    for (size_t g : set.groups)
      for (const TapChunk& chunk : w_.panels[g].chunks) {
        const auto before = times ? clock::now() : clock::time_point();
        (w_.pairs() ? chunk_tile_pairs : chunk_tile)(w_.panels[g], chunk, w_.panel_data(), tt, res);
        if (times) micro_ns += ns(before, clock::now());
        add_chunk(w_.panels[g].rows, chunk, count, res, acc.data());
      }
    switch (p_.dtype) {
      case DType::Float32: store<float>(set, at, count, acc.data()); break;
      case DType::BFloat16: store<uint16_t>(set, at, count, acc.data()); break;
      case DType::Float16: store<_Float16>(set, at, count, acc.data()); break;
    }
    if (times) {
      const int64_t all = ns(start, clock::now());
      times->micro_ns += micro_ns;
      times->store_ns += all - micro_ns;
    }
  }
}

}  // namespace sparsekit::cpu


#include "block_conv.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <climits>
#include <cstring>
#include <span>
#include <stdexcept>
#include <type_traits>

#include "elements.h"
#include "transpose.h"

namespace sparsekit::cpu {
namespace {

constexpr int64_t TP = kTilePositions;
constexpr int kVectors = TP / 16;
constexpr int kRows = 3;  // 3 rows x 8 vectors = 24 of the 32 AVX-512 registers
constexpr int64_t kPackChannels = 16;   // channels packed together: one cache line of channels_last
// Packing by input rows measured faster than by channel blocks at 64 channels and about equal at
// 128 (ResNet-18's 64@32x32 and 128@16x16 at batch 16: 0.21 / 0.13 ms against 0.25 / 0.14),
// slower above (256@8x8, 512@4x4 at batch 16 and 64: 0.13-0.38 ms against 0.07-0.32); fp32
// channels-last inputs, 2 threads, one session, the pack phase of phase_profile.
constexpr int64_t kRowPackChannels = 128;
// The layout's chunks hold at least this many columns per group on average: each group's
// accumulators are loaded and stored once per sweep.
constexpr int64_t kChunkColumns = 16;
constexpr int64_t kChunkFloats = 8192;  // 32 KiB of input reads per tile and sweep: L1's size
// With tap-row windows, a sweep's reads may fill 256 KiB of L2: measured faster than L1 sweeps
// (zoo ResNet-18 3x3 layers, 90% kernel masks), as a group's runs then come in long sweeps.
constexpr int64_t kWindowChunkFloats = 65536;

// The records one group has in the chunks a tile sweeps together: `count` ranges of the
// stream, range i its words [starts[i * groups], starts[i * groups + 1]) (PlanesWeights::starts
// from the group's entry in the sweep's first chunk: consecutive chunks lie `groups` apart).
struct Ranges {
  const int32_t* stream;
  const int64_t* starts;
  int64_t groups, count;

  bool empty() const {
    for (int64_t i = 0; i < count; ++i)
      if (starts[i * groups] != starts[i * groups + 1]) return false;
    return true;
  }
  const int32_t* begin(int64_t i) const { return stream + starts[i * groups]; }
  const int32_t* end(int64_t i) const { return stream + starts[i * groups + 1]; }
};

// ---- register-blocked micro-kernel: acc[rows[r]][0:TP] += sum_k w[k][r] * x[offset[k] + 0:TP]
// over the group's records in `ranges` (R + 1 words each: the column's code, then its weights
// of the group's R rows, of which rows m to m + M - 1 here); offsets maps codes to where they
// read in the planes. The tile's second half lies `gap` vectors further (PlanesGrid::half_gap) ----

template <int M>
inline __attribute__((always_inline)) void micro(const int32_t* rows, const Ranges& ranges,
                                                 int64_t m, int64_t R, const int32_t* offsets,
                                                 const float* x, int64_t gap, float* acc) {
  vec16 c[M][kVectors];
  for (int r = 0; r < M; ++r)
    for (int j = 0; j < kVectors; ++j)
      c[r][j] = *reinterpret_cast<const vec16*>(acc + rows[r] * TP + 16 * j);
  for (int64_t i = 0; i < ranges.count; ++i)
    for (const int32_t *rec = ranges.begin(i), *end = ranges.end(i); rec < end; rec += R + 1) {
      const vec16* v = reinterpret_cast<const vec16*>(x + offsets[rec[0] & kCodeMask]);
      vec16 a[kVectors];
      for (int j = 0; j < kVectors; ++j) a[j] = v[j + (j < kVectors / 2 ? 0 : gap)];
      for (int r = 0; r < M; ++r) {
        const float b = std::bit_cast<float>(rec[1 + m + r]);
        for (int j = 0; j < kVectors; ++j) c[r][j] += b * a[j];
      }
    }
  for (int r = 0; r < M; ++r)
    for (int j = 0; j < kVectors; ++j)
      *reinterpret_cast<vec16*>(acc + rows[r] * TP + 16 * j) = c[r][j];
}

// ---- the same over tap-row runs (marked in a record's code, kCodeBits): a run whose columns
// read one plane on whole vectors a few apart loads the union of their reads once, so a 3x3
// kernel row costs 10 loads for 24 multiply-adds a row instead of 24. M <= 2 rows: the window
// and 2 x 8 accumulators fit the 32 registers (but for half-row tiles with windows over 2
// vectors wide, 32 images or dilation 2 on 4x4 maps, which spill a few) ----

#define SPARSEKIT_V4 __attribute__((target("arch=x86-64-v4")))

// Columns reading at vector shifts S (bit s: 16 * s floats past x), column i's weights the fp32
// bits w[i * step + r]. HALVES: the tile's second half lies `gap` vectors further, in a window
// of its own.
template <int M, int S, bool HALVES>
SPARSEKIT_V4 inline __attribute__((always_inline)) void window_run(
    const float* x, int64_t gap, const int32_t* w, int64_t step, vec16 (&c)[M][kVectors]) {
  constexpr int span = 31 - __builtin_clz(S), half = kVectors / 2;
  constexpr int size = HALVES ? 2 * (half + span) : kVectors + span;
  const vec16* v = reinterpret_cast<const vec16*>(x);
  vec16 a[size];  // HALVES: [0, half + span) the first half's, then the second's
  for (int j = 0; j < size; ++j) {
    a[j] = HALVES && j >= half + span ? v[j - span + gap] : v[j];
    asm("" : "+v"(a[j]));  // held in a register: the compiler would load it again for each tap
  }
  int i = 0;
  for (int shift = 0; shift <= span; ++shift) {
    if (!((S >> shift) & 1)) continue;
    for (int r = 0; r < M; ++r) {
      const float b = std::bit_cast<float>(w[i * step + r]);
      for (int j = 0; j < kVectors; ++j)
        c[r][j] += b * a[j + shift + (HALVES && j >= half ? span : 0)];
    }
    ++i;
  }
}

template <int M, bool HALVES>
SPARSEKIT_V4 inline __attribute__((always_inline)) void micro_runs(
    const int32_t* rows, const Ranges& ranges, int64_t m, int64_t R, const int32_t* offsets,
    const int32_t* window, const float* x, int64_t gap, float* acc) {
  static_assert(kMaxWindowShift == 4, "the cases below list the windows of shifts 0-4");
  vec16 c[M][kVectors];
  for (int r = 0; r < M; ++r)
    for (int j = 0; j < kVectors; ++j)
      c[r][j] = *reinterpret_cast<const vec16*>(acc + rows[r] * TP + 16 * j);
  const int64_t step = R + 1;
  // Chunks split runs never (a run's columns share a channel): each range starts with a run.
  for (int64_t i = 0; i < ranges.count; ++i)
    for (const int32_t *rec = ranges.begin(i), *end = ranges.end(i); rec < end;) {
      const int32_t taps = rec[0] >> kCodeBits;
      const float* xk = x + offsets[rec[0] & kCodeMask];
      switch (window[taps]) {
#define SPARSEKIT_WINDOW(S)                                           \
  case S:                                                             \
    window_run<M, S, HALVES>(xk, gap, rec + 1 + m, step, c);          \
    rec += __builtin_popcount(S) * step;                              \
    break;
        SPARSEKIT_WINDOW(1) SPARSEKIT_WINDOW(3) SPARSEKIT_WINDOW(5) SPARSEKIT_WINDOW(7)
        SPARSEKIT_WINDOW(9) SPARSEKIT_WINDOW(11) SPARSEKIT_WINDOW(13) SPARSEKIT_WINDOW(15)
        SPARSEKIT_WINDOW(17) SPARSEKIT_WINDOW(19) SPARSEKIT_WINDOW(21) SPARSEKIT_WINDOW(23)
        SPARSEKIT_WINDOW(25) SPARSEKIT_WINDOW(27) SPARSEKIT_WINDOW(29) SPARSEKIT_WINDOW(31)
#undef SPARSEKIT_WINDOW
        default:  // no common window: the run's columns one by one (at least one record)
          for (int n = std::max(1, __builtin_popcount(taps)); n > 0; --n, rec += step)
            window_run<M, 1, HALVES>(x + offsets[rec[0] & kCodeMask], gap, rec + 1 + m, step, c);
      }
    }
  for (int r = 0; r < M; ++r)
    for (int j = 0; j < kVectors; ++j)
      *reinterpret_cast<vec16*>(acc + rows[r] * TP + 16 * j) = c[r][j];
}

// One clone per ISA, picked at load time by the CPU's features (no illegal instruction on
// machines without AVX-512).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void group_tile(std::span<const int32_t> group_rows, const Ranges& ranges, const int32_t* offsets,
                const float* x, int64_t gap, float* acc) {
  const int64_t R = int64_t(group_rows.size());
  const int32_t* rows = group_rows.data();
  int64_t m = 0;
  for (; m + kRows <= R; m += kRows) micro<kRows>(rows + m, ranges, m, R, offsets, x, gap, acc);
  if (m + 2 <= R) {
    micro<2>(rows + m, ranges, m, R, offsets, x, gap, acc);
    m += 2;
  }
  if (m < R) micro<1>(rows + m, ranges, m, R, offsets, x, gap, acc);
}

// group_tile with the rows left over from the triples on tap-row runs (window: indexed by run
// masks). x86-64-v4 only: the windows are held in AVX-512 registers.
template <bool HALVES>
SPARSEKIT_V4 void group_tile_windows(std::span<const int32_t> group_rows, const Ranges& ranges,
                                     const int32_t* offsets, const int32_t* window,
                                     const float* x, int64_t gap, float* acc) {
  const int64_t R = int64_t(group_rows.size());
  const int32_t* rows = group_rows.data();
  int64_t m = 0;
  for (; m + kRows <= R; m += kRows) micro<kRows>(rows + m, ranges, m, R, offsets, x, gap, acc);
  if (m + 2 <= R)
    micro_runs<2, HALVES>(rows + m, ranges, m, R, offsets, window, x, gap, acc);
  else if (m < R)
    micro_runs<1, HALVES>(rows + m, ranges, m, R, offsets, window, x, gap, acc);
}

// Whether tap-row windows may run on a layout of kernel width KW with `runs` tap-row runs over
// `columns` columns: runs of two columns or more on average (kernel masks, not unstructured
// ones, whose lone columns would pay the dispatch for nothing), kernels no wider than a run, and
// a CPU with all of x86-64-v4, for which the windowed code is compiled. The layout sizes its
// chunks by it and a call needs it (with a geometry that has windows).
bool windows_may_run(int64_t KW, int64_t runs, int64_t columns) {
  static const bool v4 = __builtin_cpu_supports("x86-64-v4");
  return KW <= kRunTaps && 2 * runs <= columns && v4;
}

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Input coordinate t*dil - pad of tap t, for output 0, split as phase + stride * shift; the
// planes hold the input coordinates that outputs [0, out) read, with zeros shared between
// consecutive rows (and images): the right padding of one is the left padding of the next.
PlaneAxis plane_axis(int64_t in, int64_t out, int64_t taps, int64_t stride, int64_t pad,
                     int64_t dil) {
  PlaneAxis a;
  a.stride = stride;
  int64_t lo = 0, hi = 0;
  for (int64_t t = 0; t < taps; ++t) {
    const int64_t d = t * dil - pad, shift = floor_div(d, stride);
    a.phase.push_back(d - shift * stride);
    a.shift.push_back(shift);
    lo = std::min(lo, shift), hi = std::max(hi, shift);
  }
  a.lead = -lo;  // shift[0] <= 0: reads start at or before the data
  const int64_t last_read = out - 1 + hi, fullest = (in + stride - 1) / stride;
  a.data = std::max<int64_t>(0, std::min(last_read + 1, fullest));
  const int64_t trail = last_read + 1 - a.data;
  // Reads past the extent land in the next row's (image's) lead zeros: trail - overlap <= lead.
  a.extent = std::max(a.data + std::max(a.lead, trail), out);
  return a;
}

}  // namespace

LayoutBytes build_planes_layout(const BlockConvParams& p) {
  const ConvShape& s = p.shape;
  const BlockIndex& b = p.blocks;
  const int64_t kernel_area = s.KH * s.KW, channels_per_group = s.C / s.groups;
  const int64_t rows_per_group = s.K / s.groups;
  if (s.C * kernel_area > int64_t(kCodeMask) + 1)
    throw std::length_error("sparsekit: the planes kernel codes at most 2**27 channel taps");
  const std::vector<RowGroup> groups = group_blocks(b);
  const int64_t G = int64_t(groups.size());
  // Each group's columns in channel order (stable: a block's own order within a channel), with
  // the masks of their tap-row runs.
  struct Column {
    int64_t channel, tap, block, j;
    int32_t run;
  };
  std::vector<std::vector<Column>> columns(G);
  std::vector<PlanesGroupRecord> records;
  LayoutWriter out;
  int64_t all_columns = 0, runs = 0;
  for (int64_t g = 0; g < G; ++g) {
    std::vector<Column>& cols = columns[g];
    for (const Segment& seg : groups[g].segments) {
      const int64_t channel0 = (b.row_idx[b.row_ptr[seg.block]] / rows_per_group) * channels_per_group;
      for (int64_t j = seg.first_column; j < seg.first_column + seg.columns; ++j)
        cols.push_back({channel0 + b.col_idx[j] / kernel_area, b.col_idx[j] % kernel_area, seg.block,
                        j - b.col_ptr[seg.block], 0});
    }
    std::stable_sort(cols.begin(), cols.end(),
                     [](const Column& x, const Column& y) { return x.channel < y.channel; });
    int64_t head = 0;  // the current run's first column
    for (int64_t i = 0; i < int64_t(cols.size()); ++i) {
      const Column& c = cols[i];
      const bool joins = s.KW <= kRunTaps && i > 0 && c.channel == cols[head].channel &&
                         c.tap / s.KW == cols[head].tap / s.KW && c.tap > cols[i - 1].tap;
      if (!joins) head = i, ++runs;
      cols[head].run |= s.KW <= kRunTaps ? int32_t(1) << (c.tap % s.KW) : 1;
    }
    records.push_back(
        {out.add(groups[g].rows), int64_t(groups[g].rows.size()), int64_t(cols.size())});
    all_columns += int64_t(cols.size());
  }
  // Chunks as wide as the typical call sweeps: the channels whose reads by one tile fit
  // kChunkFloats (kWindowChunkFloats where tap-row windows may run), for 16 images a point (a
  // kernel row reads a tile and KW - 1 pixels more; rows are not assumed to overlap, as they do
  // on maps narrower than a tile), or wider where a group would have fewer than kChunkColumns
  // columns in a chunk on average (a group's columns per channel: all columns over G * C). A call
  // sweeps whole chunks, as many at once as its own reads fit, each a range the tile's loops
  // restart on; it never splits one, so calls without windows on a layout sized for them (stride
  // 2, fewer than 16 images) sweep more than their L1 budget.
  const int64_t typical = (windows_may_run(s.KW, runs, all_columns) ? kWindowChunkFloats
                                                                     : kChunkFloats) /
                          (s.KH * (TP + (s.KW - 1) * 16));
  const int64_t chunk_channels =
      G > 0 && all_columns > 0
          ? std::clamp<int64_t>(std::max(typical, kChunkColumns * G * s.C / all_columns), 1, s.C)
          : std::max<int64_t>(s.C, 1);
  const int64_t chunks = (s.C + chunk_channels - 1) / chunk_channels;
  // The stream: records by chunk, then group, then channel.
  std::vector<int64_t> starts;
  std::vector<int32_t> stream;
  stream.reserve(all_columns + b.val_ptr[b.num_blocks]);
  std::vector<size_t> next(G, 0);  // per group: its first column not yet in the stream
  for (int64_t chunk = 0; chunk < chunks; ++chunk)
    for (int64_t g = 0; g < G; ++g) {
      starts.push_back(int64_t(stream.size()));
      const int64_t R = records[g].num_rows;
      for (size_t& i = next[g]; i < columns[g].size(); ++i) {
        const Column& c = columns[g][i];
        if (c.channel >= (chunk + 1) * chunk_channels) break;
        stream.push_back(int32_t(c.channel * kernel_area + c.tap) | (c.run << kCodeBits));
        const int64_t width = b.col_ptr[c.block + 1] - b.col_ptr[c.block];
        for (int64_t r = 0; r < R; ++r) {
          const float weight = element(p.values, p.dtype, b.val_ptr[c.block] + r * width + c.j);
          stream.push_back(std::bit_cast<int32_t>(weight));
        }
      }
    }
  starts.push_back(int64_t(stream.size()));
  LayoutHeader header{};
  header.kind = LayoutKind::Planes;
  header.num_groups = G;
  header.groups_at = out.add(records);
  header.columns = all_columns;
  header.chunk_channels = chunk_channels;
  header.chunks = chunks;
  header.starts_at = out.add(starts);
  header.runs = runs;
  header.data_at = out.add(stream);
  return out.finish(p, header);
}

PlanesWeights::PlanesWeights(const void* layout) {
  const LayoutHeader& h = layout_header(layout);
  const auto* records = layout_array<PlanesGroupRecord>(layout, h.groups_at);
  for (int64_t g = 0; g < h.num_groups; ++g) {
    const PlanesGroupRecord& r = records[g];
    groups.push_back({{layout_array<int32_t>(layout, r.rows_at), size_t(r.num_rows)},
                      r.num_rows * r.num_columns});
  }
  starts = layout_array<int64_t>(layout, h.starts_at);
  stream = layout_array<int32_t>(layout, h.data_at);
  chunk_channels = h.chunk_channels;
  chunks = h.chunks;
  columns = h.columns;
  runs = h.runs;
}

PlanesGrid::PlanesGrid(const BlockConvParams& p, const PlanesWeights& weights) {
  const ConvShape& s = p.shape;
  h = plane_axis(s.H, s.OH, s.KH, s.stride_h, s.pad_h, s.dil_h);
  w = plane_axis(s.W, s.OW, s.KW, s.stride_w, s.pad_w, s.dil_w);
  const int64_t phases = h.stride * w.stride;

  // The layout computing fewer positions. Batch innermost: grid point (row, column) of the
  // planes holds images [0, batch), output rows are OH grid rows of w.extent points, and tiles
  // skip the zero columns when a row's OW points fill whole tiles.
  image = h.extent * w.extent;
  const int64_t padded = round_up(s.N, 16), row = s.OW * padded;
  const int64_t whole_rows = row % TP == 0 ? row / TP : 0;
  half_rows = 2 * row == TP;
  const int64_t inner = whole_rows ? s.OH * row
                        : half_rows ? (s.OH + 1) / 2 * TP
                                    : round_up(s.OH * w.extent * padded, TP);
  batch_inner = inner < round_up(s.N * image, TP);
  int64_t unit = 1;  // floats between grid points
  half_rows = half_rows && batch_inner;
  if (batch_inner) {
    batch = unit = padded, row_tiles = whole_rows;
    half_gap = half_rows ? w.extent * batch - row : 0;
    positions = s.OH * w.extent * batch;
    // Reads reach h.lead rows before the data and, from the zero columns, one row past it; the
    // last tile's positions past the grid read at most a tile and a row past the last plane.
    plane = (h.lead + h.extent + 1) * w.extent * batch;
    tail = TP + w.extent * batch;
  } else {
    positions = s.N * image;
    // A valid position's reads wrap at most into the next image's lead rows (plus one row);
    // positions of the last tile past the grid read at most an image and a tile past the last
    // plane.
    plane = positions + (h.lead + 1) * w.extent;
    tail = image + TP;
  }
  if (s.C * phases * plane + tail > INT32_MAX)
    throw std::length_error("sparsekit: the input planes of this convolution exceed 2**31 floats");

  // Where each tap of channel 0 reads, from the start of its first plane.
  std::vector<int64_t> tap_offset(s.KH * s.KW);
  for (int64_t kh = 0; kh < s.KH; ++kh)
    for (int64_t kw = 0; kw < s.KW; ++kw)
      tap_offset[kh * s.KW + kw] = (h.phase[kh] * w.stride + w.phase[kw]) * plane +
                                   ((h.shift[kh] + h.lead) * w.extent + w.shift[kw] + w.lead) * unit;
  // Every code's read, below 2**31 (checked above): C x KH x KW entries, a few KiB for the
  // layers of a CNN, made per call (the column records are the layout's).
  const int64_t area = s.KH * s.KW;
  offsets.resize(s.C * area);
  for (int64_t c = 0; c < s.C; ++c)
    for (int64_t t = 0; t < area; ++t)
      offsets[c * area + t] = int32_t(c * phases * plane + tap_offset[t]);
  // With the batch innermost every read starts on a whole vector: a tap-row run's columns of
  // one stride phase read one window (taps of one row differ by their phase and shift only).
  // Used where windows may run on the layout and a whole kernel row has a window (not stride 2,
  // whose taps alternate phases).
  if (batch_inner && windows_may_run(s.KW, weights.runs, weights.columns)) {
    window.assign(size_t(1) << kRunTaps, 0);  // every mask a code holds: masks past KW stay 0
    for (int64_t taps = 1; taps < int64_t(1) << s.KW; ++taps) {
      const int64_t first = __builtin_ctzll(uint64_t(taps));
      int32_t shifts = 0;
      for (int64_t kw = first; kw < s.KW; ++kw) {
        if (!((taps >> kw) & 1)) continue;
        const int64_t apart = (w.shift[kw] - w.shift[first]) * unit / 16;  // unit: whole vectors
        if (w.phase[kw] != w.phase[first] || apart > kMaxWindowShift) {
          shifts = 0;
          break;
        }
        shifts |= int32_t(1) << apart;
      }
      window[taps] = shifts;
    }
    if (window[(size_t(1) << s.KW) - 1] == 0) window.clear();
  }

  // As many of the layout's chunks at once as keep one tile's reads of their channels nearest
  // kChunkFloats (the union over the taps of [offset, offset + TP), for one channel), or
  // kWindowChunkFloats with windows; at least one, whatever its reads.
  std::vector<int64_t> sorted = tap_offset;
  std::sort(sorted.begin(), sorted.end());
  int64_t footprint = 0, reached = INT64_MIN;
  for (int64_t a : sorted) {
    footprint += std::min(TP, a + TP - std::max(a, reached));
    reached = a + TP;
  }
  const int64_t budget = window.empty() ? kChunkFloats : kWindowChunkFloats;
  const int64_t fits = budget / footprint;  // channels
  merged = std::max<int64_t>(1, (fits + weights.chunk_channels / 2) / weights.chunk_channels);
  sweeps = (weights.chunks + merged - 1) / merged;
}

int64_t PlanesGrid::num_tiles() const {
  const int64_t rows = positions / (w.extent * batch);  // batch innermost: output rows
  if (half_rows) return (rows + 1) / 2;
  return row_tiles ? rows * row_tiles : (positions + TP - 1) / TP;
}

int64_t PlanesGrid::tile_base(int64_t tile) const {
  if (half_rows) return 2 * tile * w.extent * batch;
  if (!row_tiles) return tile * TP;
  return (tile / row_tiles) * w.extent * batch + (tile % row_tiles) * TP;
}

BlockConv::BlockConv(const BlockConvParams& p, const PlanesWeights& w)
    : p_(p), w_(w), grid_(p, w) {
  // The buffer is reused from call to call, not refilled: pack writes every float of the planes.
  // Its start is 64-byte aligned: with the batch innermost, every vector read is aligned too.
  static thread_local std::vector<float> buffer;
  const int64_t planes = p.shape.C * grid_.h.stride * grid_.w.stride * grid_.plane;
  if (int64_t(buffer.size()) < planes + grid_.tail + 15) buffer.resize(planes + grid_.tail + 15);
  planes_ = buffer.data() + (-reinterpret_cast<uintptr_t>(buffer.data()) / sizeof(float)) % 16;
  std::fill_n(planes_ + planes, grid_.tail, 0.f);
  parts_ = one_row_set(w.groups, p.shape.K);  // split only when asked: no grouping work per call
  // fp32 channels-last input of whole 16-image and 16-channel blocks, batch innermost, up to
  // kRowPackChannels channels: packed by input rows, each point's channels read in one sweep
  // (pack_rows)
  by_rows_ = grid_.batch_inner && grid_.batch == p.shape.N && p.dtype == DType::Float32 &&
             p.in_stride[1] == 1 && p.shape.C % kPackChannels == 0 &&
             p.shape.C <= kRowPackChannels && has_transpose16();
  bias_ = bias_floats(p);
}

int64_t BlockConv::split_rows(int64_t parts) {
  parts_ = split_row_sets(w_.groups, p_.shape.K, parts);
  return num_parts();
}

int64_t BlockConv::channel_units() const { return (p_.shape.C + kPackChannels - 1) / kPackChannels; }

int64_t BlockConv::row_units() const {
  return by_rows_ ? grid_.h.stride * grid_.w.stride * grid_.h.data : 0;
}

int64_t BlockConv::pack_units() const { return channel_units() + row_units(); }

// Every float of the planes of channel blocks [begin, end): plane (c, phase_h, phase_w) holds
// input rows phase_h, phase_h + stride_h, ... and columns likewise, between zeros. The channels
// of a block are copied together, so a channels_last input is read one cache line at a time.
template <typename T>
void BlockConv::pack_channels(int64_t begin, int64_t end) {
  const ConvShape& s = p_.shape;
  const T* x = static_cast<const T*>(p_.input);
  const int64_t sh = grid_.h.stride, sw = grid_.w.stride, width = grid_.w.extent;
  const int64_t channel_stride = sh * sw * grid_.plane;
  // Floats between consecutive images and grid points in a plane.
  const int64_t image_floats = grid_.batch_inner ? 1 : grid_.image, unit = grid_.batch_inner ? grid_.batch : 1;
  for (int64_t c0 = begin * kPackChannels; c0 < std::min(s.C, end * kPackChannels); c0 += kPackChannels) {
    const int64_t channels = std::min(kPackChannels, s.C - c0);
    for (int64_t rh = 0; rh < sh; ++rh)
      for (int64_t rw = 0; rw < sw; ++rw) {
        float* planes = planes_ + (c0 * sh + rh) * sw * grid_.plane + rw * grid_.plane;
        const int64_t rows = std::min(grid_.h.data, (s.H - rh + sh - 1) / sh);
        const int64_t cols = std::min(grid_.w.data, (s.W - rw + sw - 1) / sw);
        for (int64_t c = 0; c < channels; ++c) zero_padding(planes + c * channel_stride, rows, cols);
        // `count` points that are consecutive in the planes (images with the batch innermost,
        // else columns), from image n, row a, column b on: 16 channels of 16 fp32 channels-last
        // points at a time are one transpose.
        const bool transpose = std::is_same_v<T, float> && channels == kPackChannels &&
                               p_.in_stride[1] == 1 && has_transpose16();
        auto copy = [&](int64_t n, int64_t a, int64_t b, int64_t count, int64_t src_step) {
          const T* src = x + n * p_.in_stride[0] + c0 * p_.in_stride[1] +
                         (a * sh + rh) * p_.in_stride[2] + (b * sw + rw) * p_.in_stride[3];
          float* dst = planes + n * image_floats + ((a + grid_.h.lead) * width + b + grid_.w.lead) * unit;
          int64_t i = 0;
          if constexpr (std::is_same_v<T, float>)
            if (transpose)
              for (; i + 16 <= count; i += 16)
                transpose16(src + i * src_step, src_step, dst + i, channel_stride);
          for (; i < count; ++i)
            for (int64_t c = 0; c < channels; ++c)
              dst[i + c * channel_stride] = to_float(src[i * src_step + c * p_.in_stride[1]]);
        };
        // Writes in plane order: each plane is filled front to back.
        if (grid_.batch_inner) {
          for (int64_t a = 0; a < rows; ++a)
            for (int64_t b = 0; b < cols; ++b) copy(0, a, b, s.N, p_.in_stride[0]);
        } else {
          for (int64_t n = 0; n < s.N; ++n)
            for (int64_t a = 0; a < rows; ++a) copy(n, a, 0, cols, sw * p_.in_stride[3]);
        }
      }
  }
}

void BlockConv::zero_padding(float* plane, int64_t rows, int64_t cols) const {
  if (!grid_.batch_inner || grid_.batch != p_.shape.N) {  // images or padded batches: all of it
    std::fill_n(plane, grid_.plane, 0.f);
    return;
  }
  // Batch innermost, every image copied: the points outside the data rows and columns only, so
  // that each float is written once.
  const int64_t point = grid_.batch, row = grid_.w.extent * point;
  const int64_t first = grid_.h.lead * row, last = (grid_.h.lead + rows) * row;
  std::fill_n(plane, first, 0.f);
  for (int64_t at = first; at < last; at += row) {
    std::fill_n(plane + at, grid_.w.lead * point, 0.f);
    std::fill_n(plane + at + (grid_.w.lead + cols) * point,
                (grid_.w.extent - grid_.w.lead - cols) * point, 0.f);
  }
  std::fill_n(plane + last, grid_.plane - last, 0.f);
}

// Input rows [begin, end) of the units of all phases (phase-major), every channel of each point
// one transpose of 16 channels x 16 images after another: a point's channels are read in one
// sweep of the channels-last input.
void BlockConv::pack_rows(int64_t begin, int64_t end) {
  const ConvShape& s = p_.shape;
  const float* x = static_cast<const float*>(p_.input);
  const int64_t sh = grid_.h.stride, sw = grid_.w.stride, width = grid_.w.extent;
  const int64_t channel_stride = sh * sw * grid_.plane;
  for (int64_t unit = begin; unit < end; ++unit) {
    const int64_t phase = unit / grid_.h.data, a = unit % grid_.h.data;
    const int64_t rh = phase / sw, rw = phase % sw;
    const int64_t rows = std::min(grid_.h.data, (s.H - rh + sh - 1) / sh);
    const int64_t cols = std::min(grid_.w.data, (s.W - rw + sw - 1) / sw);
    if (a >= rows) continue;
    float* planes = planes_ + (rh * sw + rw) * grid_.plane +
                    ((a + grid_.h.lead) * width + grid_.w.lead) * grid_.batch;
    for (int64_t b = 0; b < cols; ++b) {
      const float* src = x + (a * sh + rh) * p_.in_stride[2] + (b * sw + rw) * p_.in_stride[3];
      for (int64_t c0 = 0; c0 < s.C; c0 += kPackChannels)
        for (int64_t n0 = 0; n0 < s.N; n0 += 16)
          transpose16(src + n0 * p_.in_stride[0] + c0, p_.in_stride[0],
                      planes + c0 * channel_stride + b * grid_.batch + n0, channel_stride);
    }
  }
}

void BlockConv::pack(int64_t begin, int64_t end) {
  const int64_t channels = channel_units(), rows = row_units();
  if (begin < channels) {
    if (by_rows_) {  // the channel units only zero the planes' padding; the row units copy
      const int64_t sh = grid_.h.stride, sw = grid_.w.stride;
      for (int64_t c = begin * kPackChannels; c < std::min(end * kPackChannels, p_.shape.C); ++c)
        for (int64_t rh = 0; rh < sh; ++rh)
          for (int64_t rw = 0; rw < sw; ++rw)
            zero_padding(planes_ + ((c * sh + rh) * sw + rw) * grid_.plane,
                         std::min(grid_.h.data, (p_.shape.H - rh + sh - 1) / sh),
                         std::min(grid_.w.data, (p_.shape.W - rw + sw - 1) / sw));
    } else {
      switch (p_.dtype) {
        case DType::Float32: pack_channels<float>(begin, std::min(end, channels)); break;
        case DType::BFloat16: pack_channels<uint16_t>(begin, std::min(end, channels)); break;
        case DType::Float16: pack_channels<_Float16>(begin, std::min(end, channels)); break;
      }
    }
  }
  if (end > channels && begin < channels + rows)
    pack_rows(std::max(begin, channels) - channels, std::min(end, channels + rows) - channels);
}

// Bias, ReLU and the output, written once per element for the tile's positions, in the
// output's memory order (channels innermost when it is channels_last: the accumulators'
// [row][position] blocks of 16 x 16 transposed, where the set's rows are all K).
template <typename T>
void BlockConv::store_tile(int64_t tile, const RowSet& part, const float* acc) const {
  const ConvShape& s = p_.shape;
  T* y = static_cast<T*>(p_.output);
  const float* bias = bias_.data();
  const bool relu = p_.relu;
  int64_t count = 0, lane[TP], out_base[TP];
  const int64_t q0 = grid_.tile_base(tile);
  for (int64_t i = 0; i < TP; ++i) {
    const int64_t q = q0 + i + (i < TP / 2 ? 0 : grid_.half_gap);
    const int64_t point = grid_.batch_inner ? q / grid_.batch : q % grid_.image;
    const int64_t n = grid_.batch_inner ? q % grid_.batch : q / grid_.image;
    const int64_t oh = point / grid_.w.extent, ow = point % grid_.w.extent;
    if (n >= s.N || oh >= s.OH || ow >= s.OW) continue;  // zeros between rows and images
    lane[count] = i;
    out_base[count++] = n * p_.out_stride[0] + oh * p_.out_stride[2] + ow * p_.out_stride[3];
  }
  auto finish = [&](float sum, int64_t k) {  // the output of row k from its sum
    const float v = sum + bias[k];
    return from_float<T>(relu ? std::max(v, 0.f) : v);
  };
  auto store = [&](int64_t j, int64_t k) {
    y[out_base[j] + k * p_.out_stride[1]] = finish(acc[k * TP + lane[j]], k);
  };
  if (p_.out_stride[1] != 1) {
    for (int32_t k : part.rows)
      for (int64_t j = 0; j < count; ++j) store(j, k);
    return;
  }
  if (int64_t(part.rows.size()) < s.K || !has_transpose16()) {
    for (int64_t j = 0; j < count; ++j)
      for (int32_t k : part.rows) store(j, k);
    return;
  }
  const int64_t whole = s.K / 16 * 16;  // rows stored by transposes, 16 lanes at a time
  alignas(64) float block[16 * 16];     // [lane][row]
  for (int64_t j0 = 0, lane0 = 0; j0 < count; lane0 += 16) {
    int64_t j1 = j0;  // the positions of lanes [lane0, lane0 + 16): [j0, j1)
    while (j1 < count && lane[j1] < lane0 + 16) ++j1;
    for (int64_t k = 0; k < whole && j1 > j0; k += 16) {
      transpose16(acc + k * TP + lane0, TP, block, 16);
      for (int64_t j = j0; j < j1; ++j) {
        const float* v = block + (lane[j] - lane0) * 16;
        T* out = y + out_base[j] + k;
        for (int r = 0; r < 16; ++r) out[r] = finish(v[r], k + r);
      }
    }
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t k = whole; k < s.K; ++k) store(j, k);
    j0 = j1;
  }
}

void BlockConv::run_tiles(int64_t begin, int64_t end, TileTimes* times) const {
  using clock = std::chrono::steady_clock;
  const auto ns = [](clock::time_point a, clock::time_point b) {
    return int64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count());
  };
  std::vector<float> buffer(p_.shape.K * TP + 15);  // the accumulators, 64-byte aligned
  float* acc = buffer.data() + (-reinterpret_cast<uintptr_t>(buffer.data()) / sizeof(float)) % 16;
  const int64_t groups = int64_t(w_.groups.size());
  for (int64_t item = begin; item < end; ++item) {
    const int64_t tile = item / num_parts();
    const RowSet& part = parts_[item % num_parts()];
    const auto start = times ? clock::now() : clock::time_point();
    for (int32_t k : part.rows) std::fill_n(acc + k * TP, TP, 0.f);
    const float* x = planes_ + grid_.tile_base(tile);
    const int32_t* window = grid_.window.data();
    const int64_t gap = grid_.half_gap / 16;
    const int32_t* offsets = grid_.offsets.data();
    for (int64_t sweep = 0; sweep < grid_.sweeps; ++sweep) {
      const int64_t first = sweep * grid_.merged, count = std::min(grid_.merged, w_.chunks - first);
      for (size_t g : part.groups) {
        const Ranges ranges{w_.stream, w_.starts + first * groups + int64_t(g), groups, count};
        if (ranges.empty()) continue;
        const auto rows = w_.groups[g].rows;
        if (!windows())
          group_tile(rows, ranges, offsets, x, gap, acc);
        else if (grid_.half_rows)
          group_tile_windows<true>(rows, ranges, offsets, window, x, gap, acc);
        else
          group_tile_windows<false>(rows, ranges, offsets, window, x, gap, acc);
      }
    }
    const auto computed = times ? clock::now() : clock::time_point();
    switch (p_.dtype) {
      case DType::Float32: store_tile<float>(tile, part, acc); break;
      case DType::BFloat16: store_tile<uint16_t>(tile, part, acc); break;
      case DType::Float16: store_tile<_Float16>(tile, part, acc); break;
    }
    if (times) {
      times->micro_ns += ns(start, computed);
      times->store_ns += ns(computed, clock::now());
    }
  }
}

}  // namespace sparsekit::cpu

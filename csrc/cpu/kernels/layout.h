// The CPU kernels' prepacked layout of a pack (DESIGN.md, "Prepacked layouts"): built once per
// layer from the canonical blocks, held by the layer as a byte tensor, read in place by every
// call. Arrays inside it are found by byte offsets from its start, never by pointers, so any
// copy of the bytes (a clone, a moved tensor, a deep-copied module) is the same layout. Arrays
// start on 64-byte boundaries: a layout that starts on one, as torch's CPU allocations do,
// gives the kernels aligned panels.
//
// Two kinds, one per kernel (TapConv::suits picks): "taps" holds the exact-position kernel's
// row groups, columns sorted by tap and weights in 16-row panels (tap_conv.h); "planes" holds
// the planes kernel's row groups with their columns in channel order and fp32 weights
// (block_conv.h) in one stream of records by channel chunk, each column's channel and tap coded
// (a call maps the codes to its planes' offsets).
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "../../common/block_params.h"
#include "row_groups.h"

namespace sparsekit::cpu {

constexpr int64_t kLayoutAlign = 64;
// "PSPK3": a sparsekit CPU layout, version 3 (version 1 had no tap-row runs, version 2 held the
// planes kernel's columns in group order)
constexpr int64_t kLayoutMagic = 0x334b505350;

enum class LayoutKind : int64_t { Taps = 1, Planes = 2 };

// The first bytes of a layout: what it was built for and where its arrays are.
struct LayoutHeader {
  int64_t magic;
  LayoutKind kind;
  int64_t C, K, KH, KW, groups;  // the geometry it serves (any batch and input size)
  int64_t dtype;                 // DType of the pack it was built from
  int64_t bytes;                 // of the whole layout
  int64_t values;                // stored weights: multiply-adds per output position
  int64_t num_groups;            // row groups
  int64_t groups_at;             // their records (TapGroupRecord or PlanesGroupRecord)
  int64_t owners_at;             // int32 [K]: how many groups own each output row
  int64_t data_at;               // taps: the panels; planes: the stream of column records
  int64_t pairs;                 // taps: panels of bf16 column pairs (AVX512-BF16)
  int64_t columns;               // planes: columns of all groups
  int64_t chunk_channels;        // planes: input channels per chunk of the stream
  int64_t chunks;                // planes: how many
  int64_t starts_at;             // planes: int64 [chunks * num_groups + 1], PlanesWeights::starts
  int64_t runs;                  // planes: tap-row runs of all groups
};

// Layout memory: whole 64-byte lines, so that the first is aligned.
struct alignas(kLayoutAlign) LayoutLine {
  unsigned char bytes[kLayoutAlign];
};
using LayoutBytes = std::vector<LayoutLine>;

// Builds a layout: the header's place, then arrays appended on 64-byte boundaries.
class LayoutWriter {
 public:
  LayoutWriter() { zeros(sizeof(LayoutHeader)); }

  template <typename T>
  int64_t add(const T* data, int64_t count) {
    const int64_t at = zeros(count * int64_t(sizeof(T)));
    if (count > 0) std::memcpy(bytes_.data() + at, data, count * sizeof(T));
    return at;
  }
  template <typename T>
  int64_t add(const std::vector<T>& values) {
    return add(values.data(), int64_t(values.size()));
  }
  // Room for `bytes` zero bytes; returns their offset.
  int64_t zeros(int64_t bytes);
  // The layout: `header` (its magic, size, and p's geometry and dtype filled in) and the arrays.
  LayoutBytes finish(const BlockConvParams& p, LayoutHeader header) const;

 private:
  std::vector<unsigned char> bytes_;
};

template <typename T>
const T* layout_array(const void* layout, int64_t at) {
  return reinterpret_cast<const T*>(static_cast<const unsigned char*>(layout) + at);
}
template <typename T>
T* layout_array(void* layout, int64_t at) {
  return reinterpret_cast<T*>(static_cast<unsigned char*>(layout) + at);
}
inline const LayoutHeader& layout_header(const void* layout) {
  return *static_cast<const LayoutHeader*>(layout);
}

// Runs body(begin, end) over ranges covering [0, units), possibly on several threads.
using ParallelFor = std::function<void(int64_t units, const std::function<void(int64_t, int64_t)>& body)>;

// The layout of p's blocks and values (a valid index: check_block_index) for p's kernel
// geometry, channels and dtype: "taps" where TapConv::suits(p), else "planes". The batch and
// input size of p are not read. parallel runs the weight packing.
LayoutBytes build_layout(const BlockConvParams& p, const ParallelFor& parallel);

// Why `layout` (`bytes` bytes) cannot serve a call of shape s on dtype tensors: not a layout,
// built for another geometry or dtype, or not 64-byte aligned. nullptr: it can.
const char* check_layout(const void* layout, int64_t bytes, const ConvShape& s, DType dtype);

}  // namespace sparsekit::cpu

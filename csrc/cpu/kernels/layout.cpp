#include "layout.h"

#include <cstring>

#include "block_conv.h"
#include "tap_conv.h"

namespace sparsekit::cpu {

int64_t LayoutWriter::zeros(int64_t bytes) {
  const int64_t at = (int64_t(bytes_.size()) + kLayoutAlign - 1) / kLayoutAlign * kLayoutAlign;
  bytes_.resize(at + bytes, 0);
  return at;
}

LayoutBytes LayoutWriter::finish(const BlockConvParams& p, LayoutHeader header) const {
  const ConvShape& s = p.shape;
  header.magic = kLayoutMagic;
  header.C = s.C, header.K = s.K, header.KH = s.KH, header.KW = s.KW, header.groups = s.groups;
  header.dtype = int64_t(p.dtype);
  header.values = p.blocks.val_ptr[p.blocks.num_blocks];
  LayoutBytes layout((bytes_.size() + kLayoutAlign - 1) / kLayoutAlign);
  header.bytes = int64_t(layout.size()) * kLayoutAlign;
  std::memcpy(layout.data(), bytes_.data(), bytes_.size());
  std::memcpy(layout.data(), &header, sizeof(header));
  return layout;
}

LayoutBytes build_layout(const BlockConvParams& p, const ParallelFor& parallel) {
  return TapConv::suits(p) ? build_tap_layout(p, parallel) : build_planes_layout(p);
}

const char* check_layout(const void* layout, int64_t bytes, const ConvShape& s, DType dtype) {
  if (bytes < int64_t(sizeof(LayoutHeader)) || layout_header(layout).magic != kLayoutMagic)
    return "the layout is not a CPU layout made by this version's sparsekit::prepack";
  const LayoutHeader& h = layout_header(layout);
  if (h.bytes != bytes || (h.kind != LayoutKind::Taps && h.kind != LayoutKind::Planes))
    return "the layout is damaged (its size or kind is not the one it was built with)";
  if (reinterpret_cast<uintptr_t>(layout) % kLayoutAlign != 0)
    return "the layout must start on a 64-byte boundary (pass the whole tensor prepack made)";
  if (h.C != s.C || h.K != s.K || h.KH != s.KH || h.KW != s.KW || h.groups != s.groups)
    return "the layout was built for another layer (channels, kernel size or groups differ)";
  if (h.dtype != int64_t(dtype)) return "the layout was built for another dtype";
  return nullptr;
}

}  // namespace sparsekit::cpu

// Torch glue of the CUDA block ops: prepack builds a layer's tile layout (kernels/tile_layout.h)
// on the host once and copies it to the pack's device as six tensors the layer holds; each call
// is checked (block_args.h) and launches the tensor-core kernel (kernels/launch.h) on that
// layout, on torch's current stream of the input's device.
// Built by the host compiler with core ATen/c10 headers only: the stream comes from torch's
// stable C shim, the device guard from c10's device-generic one.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>

#include "../block_args.h"
#include "kernels/launch.h"
#include "kernels/tile_layout.h"

// torch's stable C shim (torch/csrc/inductor/aoti_torch/c/shim.h), defined by libtorch_cuda.
extern "C" int32_t aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream);

namespace sparsekit {
namespace {

at::Tensor to_device(const std::vector<int32_t>& host, const at::Device& device) {
  return at::tensor(at::ArrayRef<int32_t>(host), at::kInt).to(device);
}

// The layout tensors, in prepack's order.
enum LayoutTensor { kTileRows, kTilePtr, kTaps, kChannels, kChunkFirst, kWeights, kLayoutTensors };

// The pack read to the host, its index checked against the layer (nothing the kernel reads is
// out of bounds), laid out in tiles and copied to the pack's device; the layout's ints are the
// layer geometry it serves (in and out channels, kernel, groups), which each call must match.
std::tuple<std::vector<at::Tensor>, std::vector<int64_t>> prepack_cuda(const at::Tensor& values, const at::Tensor& row_idx,
                                     const at::Tensor& col_idx, const at::Tensor& block_ptr,
                                     int64_t out_channels, int64_t in_channels,
                                     at::IntArrayRef kernel_size, int64_t groups) {
  const BlockCall pack = pack_call(values, row_idx, col_idx, block_ptr, out_channels, in_channels,
                                   kernel_size, groups);
  const int bytes = int(values.element_size());
  const tiles::TileLayout host =
      tiles::build_tile_layout(pack.p.shape, pack.p.blocks, pack.p.values, bytes);
  const at::Device device = values.device();
  at::Tensor weights = at::empty({int64_t(host.weights.size()) / bytes}, values.options().device(at::kCPU));
  if (!host.weights.empty()) std::memcpy(weights.data_ptr(), host.weights.data(), host.weights.size());
  std::vector<at::Tensor> tensors = {
      to_device(host.tile_rows, device), to_device(host.tile_ptr, device),
      to_device(host.taps, device),      to_device(host.channels, device),
      to_device(host.chunk_first, device), weights.to(device)};
  return {std::move(tensors), {in_channels, out_channels, kernel_size[0], kernel_size[1], groups}};
}

// The call's layout checked (O(1): its tensors' kinds and sizes, not their contents) and
// pointed to by t.
void bind_layout(tiles::TileConvParams& t, at::TensorList layout, at::IntArrayRef layout_ints,
                 const at::Tensor& input, const ConvShape& call_shape) {
  const ConvShape& s = call_shape;
  TORCH_CHECK_VALUE(layout.size() == kLayoutTensors,
                    "sparsekit: the CUDA ops take as layout the six tensors that "
                    "sparsekit::prepack makes of a CUDA pack");
  TORCH_CHECK_VALUE(layout_ints == at::IntArrayRef({s.C, s.K, s.KH, s.KW, s.groups}),
                    "sparsekit: the layout was built for another layer (its ints ", layout_ints,
                    " are not the call's in and out channels, kernel size and groups)");
  for (int i = 0; i < kLayoutTensors; ++i)
    TORCH_CHECK_VALUE(layout[i].device() == input.device() && layout[i].dim() == 1 &&
                          layout[i].is_contiguous() &&
                          layout[i].scalar_type() == (i == kWeights ? input.scalar_type() : at::kInt),
                      "sparsekit: the layout must be prepack's tensors for the input's device "
                      "and dtype");
  const int64_t num_tiles = layout[kTileRows].numel() / tiles::kRows;
  const int64_t ktiles = layout[kTaps].numel();
  const int chunk = tiles::chunk_elements(int(input.element_size()));
  TORCH_CHECK_VALUE(layout[kTileRows].numel() == num_tiles * tiles::kRows &&
                        layout[kTilePtr].numel() == num_tiles + 1 &&
                        layout[kChannels].numel() == ktiles * tiles::kCols &&
                        layout[kChunkFirst].numel() == ktiles * (tiles::kCols / chunk) &&
                        layout[kWeights].numel() == ktiles * tiles::kRows * tiles::kCols,
                    "sparsekit: the layout's tensors do not fit together (not prepack's, or for "
                    "another dtype)");
  t.tile_rows = layout[kTileRows].const_data_ptr<int32_t>();
  t.tile_ptr = layout[kTilePtr].const_data_ptr<int32_t>();
  t.taps = layout[kTaps].const_data_ptr<int32_t>();
  t.channels = layout[kChannels].const_data_ptr<int32_t>();
  t.chunk_first = layout[kChunkFirst].const_data_ptr<int32_t>();
  t.weights = layout[kWeights].const_data_ptr();
  t.num_tiles = num_tiles;
}

// input: the call's input, channels-last (for a conv) or with unit feature stride (linear).
at::Tensor run(BlockCall& call, const at::Tensor& input, at::TensorList layout,
               at::IntArrayRef layout_ints) {
  tiles::TileConvParams t{};
  bind_layout(t, layout, layout_ints, input, call.p.shape);
  if (call.out.numel() == 0) return call.out;
  const c10::DeviceGuard guard(input.device());
  const BlockConvParams& p = call.p;
  const ConvShape& s = p.shape;
  t.shape = s;
  t.input = p.input;
  std::copy(p.in_stride, p.in_stride + 4, t.in_stride);
  t.output = p.output;
  std::copy(p.out_stride, p.out_stride + 4, t.out_stride);
  t.bias = p.bias;
  t.dtype = p.dtype;
  t.relu = p.relu;
  const int64_t chunk = tiles::chunk_elements(int(input.element_size()));
  t.vector_loads = reinterpret_cast<uintptr_t>(p.input) % tiles::kChunkBytes == 0 &&
                   p.in_stride[0] % chunk == 0 && p.in_stride[2] % chunk == 0 &&
                   p.in_stride[3] % chunk == 0;
  TORCH_CHECK_VALUE(tiles::grid_fits(tiles::tile_grid(t, int(input.element_size()))),
                    "sparsekit: the CUDA kernel's grid is too large for ", s.N * s.OH * s.OW,
                    " output positions and ", s.K, " output channels");

  void* stream = nullptr;
  TORCH_CHECK(aoti_torch_get_current_cuda_stream(input.device().index(), &stream) == 0,
              "sparsekit: torch has no current CUDA stream for ", input.device());
  const int error = sparsekit_cuda_tile_conv2d(&t, stream);
  TORCH_CHECK(error == 0, "sparsekit: CUDA kernel launch failed: ",
              sparsekit_cuda_error_string(error));
  return call.out;
}

at::Tensor block_conv2d_cuda(const at::Tensor& input, at::TensorList layout,
                             at::IntArrayRef layout_ints, int64_t out_channels,
                             at::IntArrayRef kernel_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                             const std::optional<at::Tensor>& bias, bool relu) {
  BlockCall call = conv2d_call(input, out_channels, kernel_size, stride, padding, dilation,
                               groups, bias, relu, c10::DeviceType::CUDA);
  // The kernel gathers channels-last pixels; the output keeps the input's format.
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  call.keep.push_back(x);
  call.p.input = x.const_data_ptr();
  for (int d = 0; d < 4; ++d) call.p.in_stride[d] = x.stride(d);
  return run(call, x, layout, layout_ints);
}

at::Tensor block_linear_cuda(const at::Tensor& input, at::TensorList layout,
                             at::IntArrayRef layout_ints, int64_t out_features,
                             const std::optional<at::Tensor>& bias, bool relu) {
  // Unit feature stride: the kernel reads a row's features as one pixel's channels.
  const at::Tensor x = input.dim() >= 1 && input.stride(-1) != 1 ? input.contiguous() : input;
  BlockCall call = linear_call(x, out_features, bias, relu, c10::DeviceType::CUDA);
  return run(call, x, layout, layout_ints);
}

}  // namespace
}  // namespace sparsekit

TORCH_LIBRARY_IMPL(sparsekit, CUDA, m) {
  m.impl("prepack", TORCH_FN(sparsekit::prepack_cuda));
  m.impl("block_conv2d", TORCH_FN(sparsekit::block_conv2d_cuda));
  m.impl("block_linear", TORCH_FN(sparsekit::block_linear_cuda));
}

// Torch glue of the CUDA block ops: the checked call (block_args.h), the pack's prepacked
// layout (kernels/tile_layout.h, built on the host once per pack and kept on the device), then
// the tensor-core kernel (kernels/launch.h) on torch's current stream of the input's device.
// Built by the host compiler with core ATen/c10 headers only: the stream comes from torch's
// stable C shim, the device guard from c10's device-generic one.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <cstring>

#include "../block_args.h"
#include "../weights_cache.h"
#include "kernels/launch.h"
#include "kernels/tile_layout.h"

// torch's stable C shim (torch/csrc/inductor/aoti_torch/c/shim.h), defined by libtorch_cuda.
extern "C" int32_t aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream);

namespace sparsekit {
namespace {

// A pack's tile layout in device memory.
struct DeviceLayout {
  int64_t num_tiles;
  at::Tensor tile_rows, tile_ptr, taps, channels, chunk_first, weights;
};

at::Tensor to_device(const std::vector<int32_t>& host, const at::Device& device) {
  return at::tensor(at::ArrayRef<int32_t>(host), at::kInt).to(device);
}

// Reads the pack to the host (once per pack: the cache keeps the result), checks its index
// against the shape (nothing the kernel reads is out of bounds) and lays it out in tiles.
std::shared_ptr<const DeviceLayout> build_layout(const BlockConvParams& p, const Pack& pack) {
  const at::Tensor values = pack[0]->contiguous().cpu(), rows = pack[1]->contiguous().cpu();
  const at::Tensor cols = pack[2]->contiguous().cpu(), ptr = pack[3]->contiguous().cpu();
  const int64_t nb = ptr.size(1) - 1;
  const int64_t* offsets = ptr.const_data_ptr<int64_t>();
  const BlockIndex index{rows.const_data_ptr<int32_t>(), cols.const_data_ptr<int32_t>(), offsets,
                         offsets + nb + 1, offsets + 2 * (nb + 1), nb};
  const char* error = check_block_index(p.shape, index, rows.numel(), cols.numel(), values.numel());
  TORCH_CHECK_VALUE(error == nullptr, "sparsekit: ", error);
  const int bytes = int(values.element_size());
  const tiles::TileLayout host = tiles::build_tile_layout(p.shape, index, values.const_data_ptr(), bytes);
  const at::Device device = pack[0]->device();
  at::Tensor weights = at::empty({int64_t(host.weights.size()) / bytes}, values.options());
  if (!host.weights.empty()) std::memcpy(weights.data_ptr(), host.weights.data(), host.weights.size());
  return std::make_shared<const DeviceLayout>(DeviceLayout{
      host.num_tiles, to_device(host.tile_rows, device), to_device(host.tile_ptr, device),
      to_device(host.taps, device), to_device(host.channels, device),
      to_device(host.chunk_first, device), weights.to(device)});
}

// input: the call's input, channels-last (for a conv) or with unit feature stride (linear).
at::Tensor run(BlockCall& call, const at::Tensor& input, const Pack& pack) {
  if (call.out.numel() == 0) return call.out;
  const c10::DeviceGuard guard(input.device());
  const BlockConvParams& p = call.p;
  const ConvShape& s = p.shape;
  static WeightsCache<DeviceLayout> cache;
  const auto layout = cache.get({s.C, s.K, s.KH, s.KW, s.groups, int64_t(p.dtype)}, pack,
                                [&] { return build_layout(p, pack); });

  tiles::TileConvParams t{};
  t.shape = s;
  t.input = p.input;
  std::copy(p.in_stride, p.in_stride + 4, t.in_stride);
  t.output = p.output;
  std::copy(p.out_stride, p.out_stride + 4, t.out_stride);
  t.tile_rows = layout->tile_rows.const_data_ptr<int32_t>();
  t.tile_ptr = layout->tile_ptr.const_data_ptr<int32_t>();
  t.taps = layout->taps.const_data_ptr<int32_t>();
  t.channels = layout->channels.const_data_ptr<int32_t>();
  t.chunk_first = layout->chunk_first.const_data_ptr<int32_t>();
  t.weights = layout->weights.const_data_ptr();
  t.num_tiles = layout->num_tiles;
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

at::Tensor block_conv2d_cuda(const at::Tensor& input, const at::Tensor& values,
                             const at::Tensor& row_idx, const at::Tensor& col_idx,
                             const at::Tensor& block_ptr, int64_t out_channels,
                             at::IntArrayRef kernel_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                             const std::optional<at::Tensor>& bias, bool relu) {
  BlockCall call = conv2d_call(input, values, row_idx, col_idx, block_ptr, out_channels,
                               kernel_size, stride, padding, dilation, groups, bias, relu,
                               c10::DeviceType::CUDA);
  // The kernel gathers channels-last pixels; the output keeps the input's format.
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  call.keep.push_back(x);
  call.p.input = x.const_data_ptr();
  for (int d = 0; d < 4; ++d) call.p.in_stride[d] = x.stride(d);
  return run(call, x, {&values, &row_idx, &col_idx, &block_ptr});
}

at::Tensor block_linear_cuda(const at::Tensor& input, const at::Tensor& values,
                             const at::Tensor& row_idx, const at::Tensor& col_idx,
                             const at::Tensor& block_ptr, int64_t out_features,
                             const std::optional<at::Tensor>& bias, bool relu) {
  // Unit feature stride: the kernel reads a row's features as one pixel's channels.
  const at::Tensor x = input.dim() >= 1 && input.stride(-1) != 1 ? input.contiguous() : input;
  BlockCall call = linear_call(x, values, row_idx, col_idx, block_ptr, out_features, bias, relu,
                               c10::DeviceType::CUDA);
  return run(call, x, {&values, &row_idx, &col_idx, &block_ptr});
}

}  // namespace
}  // namespace sparsekit

TORCH_LIBRARY_IMPL(sparsekit, CUDA, m) {
  m.impl("block_conv2d", TORCH_FN(sparsekit::block_conv2d_cuda));
  m.impl("block_linear", TORCH_FN(sparsekit::block_linear_cuda));
}

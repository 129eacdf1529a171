// Torch glue of the CUDA block ops: the checked call (block_args.h), then a kernel of
// kernels/launch.h on torch's current stream of the input's device. Built by the host compiler
// with core ATen/c10 headers only: the stream comes from torch's stable C shim, the device
// guard from c10's device-generic one.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "../block_args.h"
#include "kernels/launch.h"

// torch's stable C shim (torch/csrc/inductor/aoti_torch/c/shim.h), defined by libtorch_cuda.
extern "C" int32_t aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream);

namespace sparsekit {
namespace {

at::Tensor run(const BlockCall& call, const at::Tensor& input) {
  if (call.out.numel() == 0) return call.out;
  const c10::DeviceGuard guard(input.device());
  void* stream = nullptr;
  TORCH_CHECK(aoti_torch_get_current_cuda_stream(input.device().index(), &stream) == 0,
              "sparsekit: torch has no current CUDA stream for ", input.device());
  const int error = sparsekit_cuda_block_conv2d_direct(&call.p, stream);
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
  TORCH_CHECK_VALUE(out_channels <= 65535, "sparsekit: the CUDA kernel takes at most 65535 "
                    "output channels, not ", out_channels);
  return run(conv2d_call(input, values, row_idx, col_idx, block_ptr, out_channels, kernel_size,
                         stride, padding, dilation, groups, bias, relu, c10::DeviceType::CUDA),
             input);
}

at::Tensor block_linear_cuda(const at::Tensor& input, const at::Tensor& values,
                             const at::Tensor& row_idx, const at::Tensor& col_idx,
                             const at::Tensor& block_ptr, int64_t out_features,
                             const std::optional<at::Tensor>& bias, bool relu) {
  TORCH_CHECK_VALUE(out_features <= 65535, "sparsekit: the CUDA kernel takes at most 65535 "
                    "output features, not ", out_features);
  return run(linear_call(input, values, row_idx, col_idx, block_ptr, out_features, bias, relu,
                         c10::DeviceType::CUDA),
             input);
}

}  // namespace
}  // namespace sparsekit

TORCH_LIBRARY_IMPL(sparsekit, CUDA, m) {
  m.impl("block_conv2d", TORCH_FN(sparsekit::block_conv2d_cuda));
  m.impl("block_linear", TORCH_FN(sparsekit::block_linear_cuda));
}

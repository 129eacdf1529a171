// Torch glue shared by the CPU and CUDA ops: argument checks, the output, and the kernels'
// params struct. Core ATen/c10 headers only, so that the CUDA glue builds against any torch.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <vector>

#include "common/block_params.h"

namespace sparsekit {

// One checked call: the kernel reads p (pointers into the tensors of keep and into out), which
// must outlive it; out is the op's result (its numel may be 0: then nothing is to run).
struct BlockCall {
  BlockConvParams p{};
  std::vector<at::Tensor> keep;
  at::Tensor out;
};

// A pack checked for building a layout (prepack): p's shape holds the layer's channels, kernel
// and groups (no input: N, H, W are 1), its blocks the index, checked against that shape
// (nothing a layout points to is out of bounds), and its values; all read from host copies
// in keep, wherever the pack lies.
BlockCall pack_call(const at::Tensor& values, const at::Tensor& row_idx,
                    const at::Tensor& col_idx, const at::Tensor& block_ptr, int64_t out_channels,
                    int64_t in_channels, at::IntArrayRef kernel_size, int64_t groups);

// A run op's input, bias and geometry checked for kernels on `device`, the output allocated:
// p holds everything but the blocks and values, which the kernels read from their layout.
BlockCall conv2d_call(const at::Tensor& input, int64_t out_channels, at::IntArrayRef kernel_size,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                      int64_t groups, const std::optional<at::Tensor>& bias, bool relu,
                      c10::DeviceType device);

BlockCall linear_call(const at::Tensor& input, int64_t out_features,
                      const std::optional<at::Tensor>& bias, bool relu, c10::DeviceType device);

}  // namespace sparsekit

// Torch entry points of the C++ kernels; registered in bindings.cpp (schemas: sparsekit/backends/schema.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace sparsekit {

at::Tensor block_conv2d_cpu(const at::Tensor& input, const at::Tensor& values,
                            const at::Tensor& row_idx, const at::Tensor& col_idx,
                            const at::Tensor& block_ptr, int64_t out_channels,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            const std::optional<at::Tensor>& bias, bool relu);

at::Tensor block_linear_cpu(const at::Tensor& input, const at::Tensor& values,
                            const at::Tensor& row_idx, const at::Tensor& col_idx,
                            const at::Tensor& block_ptr, int64_t out_features,
                            const std::optional<at::Tensor>& bias, bool relu);

}  // namespace sparsekit

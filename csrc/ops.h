// Torch entry points of the C++ kernels; registered in bindings.cpp (schemas: sparsekit/backends/schema.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <string>
#include <tuple>
#include <vector>

namespace sparsekit {

// A CPU pack's layout for the CPU kernels: one uint8 tensor (cpu/kernels/layout.h), no ints.
std::tuple<std::vector<at::Tensor>, std::vector<int64_t>> prepack_cpu(
    const at::Tensor& values, const at::Tensor& row_idx, const at::Tensor& col_idx,
    const at::Tensor& block_ptr, int64_t out_channels, int64_t in_channels,
    at::IntArrayRef kernel_size, int64_t groups);

at::Tensor block_conv2d_cpu(const at::Tensor& input, at::TensorList layout,
                            at::IntArrayRef layout_ints, int64_t out_channels,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            const std::optional<at::Tensor>& bias, bool relu);

at::Tensor block_linear_cpu(const at::Tensor& input, at::TensorList layout,
                            at::IntArrayRef layout_ints, int64_t out_features,
                            const std::optional<at::Tensor>& bias, bool relu);

// Registers no_gradient.cpp's Autograd kernel for sparsekit::<op> (an op of any backend, defined
// in C++ or Python): a call recording no gradient goes straight to the device kernel; a backward
// pass through one is refused.
void refuse_gradient(const std::string& op);

// Phase profile of the CPU kernels, for the bench's breakdown: set_phase_profile(true) zeroes
// the totals and starts adding every call's; set_phase_profile(false) stops. pack and tiles
// are wall times of the call's two parallel regions; micro and store split the tiles' time
// summed over threads; grid counts the output grid positions computed (padding included);
// tap_calls counts the calls that ran on the exact-position kernel (the others: the planes one),
// pair_calls those of them that multiplied bf16 column pairs (AVX512-BF16), window_calls the
// planes calls that read tap-row windows.
struct PhaseTotals {
  int64_t calls, pack_ns, tiles_ns, micro_ns, store_ns, grid_positions, tap_calls, pair_calls,
      window_calls;
};
void set_phase_profile(bool on);
PhaseTotals phase_totals();

}  // namespace sparsekit

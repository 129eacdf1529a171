// Torch-free CUDA kernels for the gathered dense-block convolution (and linear, its 1x1 case).
#pragma once

#include <cuda_runtime.h>

#include "../../common/block_params.h"

namespace sparsekit::cuda {

// Direct reference kernel: one thread per (output channel, output position), fp32 accumulation,
// blocks summed in index order (deterministic). Correct for every shape the op accepts; the fast
// tensor-core kernels are checked against it.
cudaError_t launch_block_conv2d_direct(const BlockConvParams& p, cudaStream_t stream);

}  // namespace sparsekit::cuda

// Launch API of the torch-free CUDA kernels: C linkage, the shared params struct and a void*
// stream, so that the torch glue (built by the host compiler, core ATen/c10 headers only) needs
// no CUDA header. Each returns a cudaError_t as an int: 0 when the launch succeeded.
#pragma once

#include "../../common/block_params.h"

extern "C" {

// Direct reference kernel: one thread per (output channel, output position), fp32
// accumulation, blocks summed in index order (deterministic). Correct for every shape the op
// accepts (K up to 65535); the fast kernels are checked against it.
int sparsekit_cuda_block_conv2d_direct(const sparsekit::BlockConvParams* p, void* stream);

// cudaGetErrorString of a launch's result.
const char* sparsekit_cuda_error_string(int error);

}  // extern "C"

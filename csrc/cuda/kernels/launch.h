// Launch API of the torch-free CUDA kernels: C linkage, a params struct and a void* stream, so
// that the torch glue (built by the host compiler, core ATen/c10 headers only) needs no CUDA
// header. Each returns a cudaError_t as an int: 0 when the launch succeeded.
#pragma once

#include "tile_conv.h"

extern "C" {

// The tensor-core block conv (tile_conv.h) of fp32, bf16 or fp16 tensors on its prepacked
// layout (tile_layout.h); cudaErrorInvalidConfiguration when the grid is too large.
int sparsekit_cuda_tile_conv2d(const sparsekit::tiles::TileConvParams* p, void* stream);

// cudaGetErrorString of a launch's result.
const char* sparsekit_cuda_error_string(int error);

}  // extern "C"

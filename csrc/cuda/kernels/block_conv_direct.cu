#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "launch.h"

namespace sparsekit::cuda {
namespace {

__device__ inline float to_float(float v) { return v; }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline float to_float(__half v) { return __half2float(v); }

template <typename T>
__device__ inline T from_float(float v);
template <>
__device__ inline float from_float<float>(float v) { return v; }
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <>
__device__ inline __half from_float<__half>(float v) { return __float2half(v); }

template <typename T>
__global__ void block_conv2d_direct_kernel(BlockConvParams p) {
  const ConvShape& s = p.shape;
  const int64_t positions = s.N * s.OH * s.OW;
  const int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t k = blockIdx.y;
  if (q >= positions) return;
  const int64_t plane = s.OH * s.OW;
  const int64_t n = q / plane, oh = (q % plane) / s.OW, ow = q % s.OW;
  const int64_t kernel_area = s.KH * s.KW;
  const int64_t channels_per_group = s.C / s.groups;
  const int64_t channel_base = (k / (s.K / s.groups)) * channels_per_group;
  const T* x = static_cast<const T*>(p.input);
  const T* w = static_cast<const T*>(p.values);
  const BlockIndex& b = p.blocks;

  float acc = p.bias ? to_float(static_cast<const T*>(p.bias)[k]) : 0.f;
  for (int64_t blk = 0; blk < b.num_blocks; ++blk) {
    const int64_t r0 = b.row_ptr[blk], r1 = b.row_ptr[blk + 1];
    const int64_t c0 = b.col_ptr[blk], nc = b.col_ptr[blk + 1] - c0;
    for (int64_t r = r0; r < r1; ++r) {
      if (b.row_idx[r] != k) continue;
      const T* w_row = w + b.val_ptr[blk] + (r - r0) * nc;
      for (int64_t j = 0; j < nc; ++j) {
        const int64_t col = b.col_idx[c0 + j], rem = col % kernel_area;
        const int64_t ih = oh * s.stride_h - s.pad_h + (rem / s.KW) * s.dil_h;
        const int64_t iw = ow * s.stride_w - s.pad_w + (rem % s.KW) * s.dil_w;
        if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
        const int64_t c = channel_base + col / kernel_area;
        acc += to_float(w_row[j]) * to_float(x[n * p.in_stride[0] + c * p.in_stride[1] +
                                                ih * p.in_stride[2] + iw * p.in_stride[3]]);
      }
    }
  }
  if (p.relu) acc = fmaxf(acc, 0.f);
  T* y = static_cast<T*>(p.output);
  y[n * p.out_stride[0] + k * p.out_stride[1] + oh * p.out_stride[2] + ow * p.out_stride[3]] =
      from_float<T>(acc);
}

template <typename T>
cudaError_t launch(const BlockConvParams& p, cudaStream_t stream) {
  constexpr int kThreads = 128;
  const int64_t positions = p.shape.N * p.shape.OH * p.shape.OW;
  if (positions == 0 || p.shape.K == 0) return cudaSuccess;
  if (p.shape.K > 65535) return cudaErrorInvalidConfiguration;  // grid.y limit
  const dim3 grid(unsigned((positions + kThreads - 1) / kThreads), unsigned(p.shape.K));
  block_conv2d_direct_kernel<T><<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

}  // namespace sparsekit::cuda

int sparsekit_cuda_block_conv2d_direct(const sparsekit::BlockConvParams* p, void* stream) {
  using namespace sparsekit;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (p->dtype) {
    case DType::Float32: return cuda::launch<float>(*p, s);
    case DType::BFloat16: return cuda::launch<__nv_bfloat16>(*p, s);
    case DType::Float16: return cuda::launch<__half>(*p, s);
  }
  return cudaErrorInvalidValue;
}

const char* sparsekit_cuda_error_string(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}

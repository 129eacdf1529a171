// The tensor-core block conv (tile_conv.h) on CuTe: a gathered implicit GEMM, output positions
// on M, a row tile's output rows on N, the row tile's K-tiles on K. Each K-tile's input columns
// are gathered into shared memory with cp.async (16 bytes at a time where a chunk's channels
// are consecutive, else element by element), its weights copied whole; a multi-stage pipeline
// overlaps those loads with the MMAs. 16-bit types run mma.sync m16n8k16 with fp32
// accumulators from ldmatrix reads of swizzled tiles; fp32 runs strict fp32 FMAs.
#include <cuda_runtime.h>

#include <cute/tensor.hpp>
#include <cutlass/bfloat16.h>
#include <cutlass/half.h>

#include "launch.h"
#include "tile_conv.h"

namespace sparsekit::tiles {
namespace {

using namespace cute;

// bf16/fp16: 128 positions x 64 rows a CTA, 2 x 2 warps of m16n8k16 MMAs, three stages.
template <typename T, typename MmaOp>
struct TensorCoreConfig {
  using Element = T;
  static constexpr int kM = 128, kStages = 3;
  // 64-byte K-major rows: 16-byte chunks XOR-swizzled so ldmatrix hits every bank once
  using SmemAtom =
      decltype(composition(Swizzle<2, 3, 3>{}, Layout<Shape<_8, Int<kCols>>, Stride<Int<kCols>, _1>>{}));
  using SmemA = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kM>, Int<kCols>, Int<kStages>>{}));
  using SmemB = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kRows>, Int<kCols>, Int<kStages>>{}));
  using Mma = decltype(make_tiled_mma(MmaOp{}, Layout<Shape<_2, _2, _1>>{}, Tile<_32, _32, _16>{}));
  using LoadA = Copy_Atom<SM75_U32x4_LDSM_N, T>;
  using LoadB = LoadA;
};

// fp32: 64 positions x 64 rows a CTA, 16 x 8 threads of FMAs (strict fp32, no TF32), two
// stages; rows padded by one chunk against bank conflicts, chunks kept 16-byte aligned.
struct SimtConfig {
  using Element = float;
  static constexpr int kM = 64, kStages = 2, kPitch = kCols + 4;
  using SmemA = Layout<Shape<Int<kM>, Int<kCols>, Int<kStages>>,
                       Stride<Int<kPitch>, _1, Int<kM * kPitch>>>;
  using SmemB = Layout<Shape<Int<kRows>, Int<kCols>, Int<kStages>>,
                       Stride<Int<kPitch>, _1, Int<kRows * kPitch>>>;
  using Mma = decltype(make_tiled_mma(UniversalFMA<float, float, float>{}, Layout<Shape<_16, _8, _1>>{}));
  using LoadA = Copy_Atom<UniversalCopy<float>, float>;
  using LoadB = LoadA;
};

template <class Config>
struct SharedTiles {
  array_aligned<typename Config::Element, cosize_v<typename Config::SmemA>, 128> a;
  array_aligned<typename Config::Element, cosize_v<typename Config::SmemB>, 128> b;
};

template <class Config>
__global__ void __launch_bounds__(kThreads) tile_conv_kernel(const TileConvParams p) {
  using T = typename Config::Element;
  using Chunk = uint128_t;
  constexpr int kM = Config::kM, kStages = Config::kStages, kChunk = int(sizeof(Chunk) / sizeof(T));
  static_assert(kM == positions_per_cta(int(sizeof(T))) && kChunk == chunk_elements(int(sizeof(T))));
  static_assert(size(typename Config::Mma{}) == kThreads);
  constexpr GatherShare share(int(sizeof(T)));
  constexpr int kARows = kM / share.row_step, kBRows = kRows / share.row_step;

  __shared__ SharedTiles<Config> smem;
  Tensor sA = make_tensor(make_smem_ptr(smem.a.data()), typename Config::SmemA{});  // (M, K, stage)
  Tensor sB = make_tensor(make_smem_ptr(smem.b.data()), typename Config::SmemB{});  // (N, K, stage)

  const int thread = int(threadIdx.x), column = share.column(thread);
  const int first_row = share.first_row(thread);
  const int64_t m0 = int64_t(blockIdx.x) * kM, tile = blockIdx.y;
  const int32_t k_begin = p.tile_ptr[tile], num_k = p.tile_ptr[tile + 1] - k_begin;
  const T* x = static_cast<const T*>(p.input);
  const T* w = static_cast<const T*>(p.weights);

  Position positions[kARows];
  CUTE_UNROLL
  for (int i = 0; i < kARows; ++i) positions[i] = position(p, m0 + first_row + i * share.row_step);

  // K-tile k of this row tile into stage: this thread's chunk column of its input rows
  // (zeros where the tap reads padding) and of its weight rows.
  auto load = [&](int k, int stage) {
    const int32_t ktile = k_begin + k;
    const TapShift shift = tap_shift(p, p.taps[ktile]);
    const int32_t first = p.chunk_first[ktile * share.chunks_per_row + column];
    const int32_t* channels = p.channels + int64_t(ktile) * kCols + column * kChunk;
    CUTE_UNROLL
    for (int i = 0; i < kARows; ++i) {
      const int64_t offset = tap_offset(p, positions[i], shift);
      T* dst = &sA(first_row + i * share.row_step, column * kChunk, stage);
      if (p.vector_loads && first >= 0) {
        const T* src = offset >= 0 ? x + offset + first : x;
        SM80_CP_ASYNC_CACHEALWAYS_ZFILL<Chunk>::copy(*reinterpret_cast<const Chunk*>(src),
                                                     *reinterpret_cast<Chunk*>(dst), offset >= 0);
      } else {
        CUTE_UNROLL
        for (int e = 0; e < kChunk; ++e)
          dst[e] = offset >= 0 && channels[e] >= 0 ? x[offset + channels[e]] : T(0);
      }
    }
    const T* weights = w + int64_t(ktile) * kRows * kCols + column * kChunk;
    CUTE_UNROLL
    for (int i = 0; i < kBRows; ++i) {
      const int row = first_row + i * share.row_step;
      SM80_CP_ASYNC_CACHEGLOBAL<Chunk>::copy(*reinterpret_cast<const Chunk*>(weights + row * kCols),
                                             *reinterpret_cast<Chunk*>(&sB(row, column * kChunk, stage)));
    }
  };

  typename Config::Mma mma;
  auto thr_mma = mma.get_slice(thread);
  Tensor tCrA = thr_mma.partition_fragment_A(sA(_, _, 0));  // (MMA, MMA_M, MMA_K)
  Tensor tCrB = thr_mma.partition_fragment_B(sB(_, _, 0));  // (MMA, MMA_N, MMA_K)
  Tensor acc = partition_fragment_C(mma, Shape<Int<kM>, Int<kRows>>{});
  Tensor coords = thr_mma.partition_C(make_identity_tensor(Shape<Int<kM>, Int<kRows>>{}));
  clear(acc);
  auto load_a = make_tiled_copy_A(typename Config::LoadA{}, mma);
  auto load_b = make_tiled_copy_B(typename Config::LoadB{}, mma);
  auto thr_load_a = load_a.get_slice(thread);
  auto thr_load_b = load_b.get_slice(thread);
  Tensor tXsA = thr_load_a.partition_S(sA);  // (CPY, MMA_M, MMA_K, stage)
  Tensor tXrA = thr_load_a.retile_D(tCrA);
  Tensor tXsB = thr_load_b.partition_S(sB);
  Tensor tXrB = thr_load_b.retile_D(tCrB);

  CUTE_UNROLL
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < num_k) load(s, s);
    cp_async_fence();
  }
  for (int k = 0; k < num_k; ++k) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // K-tile k is in; every thread is done with the stage refilled next
    if (k + kStages - 1 < num_k) load(k + kStages - 1, (k + kStages - 1) % kStages);
    cp_async_fence();
    const int stage = k % kStages;
    CUTE_UNROLL
    for (int kb = 0; kb < size<2>(tCrA); ++kb) {
      copy(load_a, tXsA(_, _, kb, stage), tXrA(_, _, kb));
      copy(load_b, tXsB(_, _, kb, stage), tXrB(_, _, kb));
      gemm(mma, tCrA(_, _, kb), tCrB(_, _, kb), acc);
    }
  }

  const int64_t end = p.shape.N * p.shape.OH * p.shape.OW;
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.output);
  CUTE_UNROLL
  for (int i = 0; i < size(acc); ++i) {
    const int64_t q = m0 + get<0>(coords(i));
    const int32_t row = p.tile_rows[tile * kRows + get<1>(coords(i))];
    if (row < 0 || q >= end) continue;
    float v = acc(i) + (bias != nullptr ? static_cast<float>(bias[row]) : 0.f);
    if (p.relu) v = fmaxf(v, 0.f);
    y[output_offset(p, q, row)] = static_cast<T>(v);
  }
}

template <class Config>
cudaError_t launch(const TileConvParams& p, cudaStream_t stream) {
  const Grid grid = tile_grid(p, int(sizeof(typename Config::Element)));
  if (grid.x == 0 || grid.y == 0) return cudaSuccess;
  if (!grid_fits(grid)) return cudaErrorInvalidConfiguration;
  tile_conv_kernel<Config><<<dim3(unsigned(grid.x), unsigned(grid.y)), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace
}  // namespace sparsekit::tiles

int sparsekit_cuda_tile_conv2d(const sparsekit::tiles::TileConvParams* p, void* stream) {
  using namespace sparsekit::tiles;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (p->dtype) {
    case sparsekit::DType::Float32: return launch<SimtConfig>(*p, s);
    case sparsekit::DType::BFloat16:
      return launch<TensorCoreConfig<cutlass::bfloat16_t, SM80_16x8x16_F32BF16BF16F32_TN>>(*p, s);
    case sparsekit::DType::Float16:
      return launch<TensorCoreConfig<cutlass::half_t, SM80_16x8x16_F32F16F16F32_TN>>(*p, s);
  }
  return cudaErrorInvalidValue;
}

const char* sparsekit_cuda_error_string(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}

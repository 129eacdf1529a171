// Torch-free description of one gathered dense-block convolution, shared by the CPU and CUDA
// kernels. A linear layer is the 1x1 case with N=1, H=1 and the batch laid out along W.
#pragma once

#include <cstdint>

namespace sparsekit {

enum class DType : int32_t { Float32 = 0, BFloat16 = 1, Float16 = 2 };

// Geometry of y[N, K, OH, OW] = conv(x[N, C, H, W], w[K, C / groups, KH, KW]).
struct ConvShape {
  int64_t N, C, H, W;      // input
  int64_t K, OH, OW;       // output channels and spatial size
  int64_t KH, KW;          // kernel
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t groups;
};

// The packed blocks: block b owns output rows row_idx[row_ptr[b] .. row_ptr[b+1]) and weight
// columns col_idx[col_ptr[b] .. col_ptr[b+1]) (columns in (c, kh, kw) order inside one group) and
// stores their dense tile row-major at values + val_ptr[b].
struct BlockIndex {
  const int32_t* row_idx;
  const int32_t* col_idx;
  const int64_t* row_ptr;
  const int64_t* col_ptr;
  const int64_t* val_ptr;
  int64_t num_blocks;
};

// One call of a kernel, or (shape, blocks, values and dtype) the pack a layout is built from:
// kernels read the blocks from their layout, not from here.
struct BlockConvParams {
  ConvShape shape;
  BlockIndex blocks;
  const void* input;          // addressed through in_stride (elements), any layout
  int64_t in_stride[4];
  void* output;               // addressed through out_stride (elements)
  int64_t out_stride[4];
  const void* values;         // block tiles, dtype
  const void* bias;           // [K] or nullptr, dtype
  DType dtype;                // of input, output, values and bias
  bool relu;
};

// Checks that the block index is well formed for the shape: offsets consistent, indices in
// range, each block inside one group. Returns nullptr when it is, else a message.
// num_rows, num_cols and num_values are the lengths of row_idx, col_idx and values.
const char* check_block_index(const ConvShape& shape, const BlockIndex& blocks, int64_t num_rows,
                              int64_t num_cols, int64_t num_values);

}  // namespace sparsekit

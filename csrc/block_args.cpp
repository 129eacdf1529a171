#include "block_args.h"

#include <ATen/ATen.h>

namespace sparsekit {
namespace {

DType kernel_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kBFloat16: return DType::BFloat16;
    case at::kHalf: return DType::Float16;
    default: TORCH_CHECK_VALUE(false, "sparsekit: unsupported dtype ", t.scalar_type(),
                               " (float32, bfloat16 and float16 are supported)");
  }
  return DType::Float32;
}

const char* device_name(c10::DeviceType device) {
  return device == c10::DeviceType::CUDA ? "CUDA" : "CPU";
}

// Checks the input's device and dtype and the bias, and fills p's bias and dtype.
void bind_input(BlockCall& call, const at::Tensor& input, const std::optional<at::Tensor>& bias,
                c10::DeviceType device) {
  BlockConvParams& p = call.p;
  TORCH_CHECK_VALUE(input.device().type() == device, "sparsekit: the input must be a ",
                    device_name(device), " tensor for these kernels");
  p.dtype = kernel_dtype(input);
  p.bias = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == p.shape.K &&
                          bias->scalar_type() == input.scalar_type() &&
                          bias->device() == input.device(),
                      "sparsekit: bias must be a tensor of shape [", p.shape.K,
                      "] with the input's dtype and device");
    call.keep.push_back(bias->contiguous());
    p.bias = call.keep.back().data_ptr();
  }
}

}  // namespace

BlockCall pack_call(const at::Tensor& values, const at::Tensor& row_idx,
                    const at::Tensor& col_idx, const at::Tensor& block_ptr, int64_t out_channels,
                    int64_t in_channels, at::IntArrayRef kernel_size, int64_t groups) {
  TORCH_CHECK_VALUE(values.dim() == 1, "sparsekit: values must be 1-D");
  TORCH_CHECK_VALUE(row_idx.scalar_type() == at::kInt && col_idx.scalar_type() == at::kInt &&
                        row_idx.dim() == 1 && col_idx.dim() == 1,
                    "sparsekit: row_idx and col_idx must be 1-D int32");
  TORCH_CHECK_VALUE(block_ptr.scalar_type() == at::kLong && block_ptr.dim() == 2 &&
                        block_ptr.size(0) == 3 && block_ptr.size(1) >= 1,
                    "sparsekit: block_ptr must be int64 of shape [3, num_blocks + 1]");
  for (const at::Tensor* t : {&row_idx, &col_idx, &block_ptr})
    TORCH_CHECK_VALUE(t->device() == values.device(),
                      "sparsekit: the packed tensors must be on one device");
  TORCH_CHECK_VALUE(kernel_size.size() == 2 && kernel_size[0] > 0 && kernel_size[1] > 0 &&
                        out_channels > 0 && in_channels > 0 && groups > 0,
                    "sparsekit: kernel_size (two values), channels and groups must be positive");
  BlockCall call;
  BlockConvParams& p = call.p;
  ConvShape& s = p.shape;
  s.N = s.H = s.W = s.OH = s.OW = 1;
  s.C = in_channels, s.K = out_channels, s.KH = kernel_size[0], s.KW = kernel_size[1];
  s.stride_h = s.stride_w = s.dil_h = s.dil_w = 1, s.pad_h = s.pad_w = 0, s.groups = groups;
  p.dtype = kernel_dtype(values);
  call.keep = {values.contiguous().cpu(), row_idx.contiguous().cpu(), col_idx.contiguous().cpu(),
               block_ptr.contiguous().cpu()};
  const int64_t nb = block_ptr.size(1) - 1;
  const int64_t* ptr = call.keep[3].const_data_ptr<int64_t>();
  p.blocks = {call.keep[1].const_data_ptr<int32_t>(), call.keep[2].const_data_ptr<int32_t>(), ptr,
              ptr + nb + 1, ptr + 2 * (nb + 1), nb};
  const char* error = check_block_index(s, p.blocks, row_idx.numel(), col_idx.numel(),
                                        values.numel());
  TORCH_CHECK_VALUE(error == nullptr, "sparsekit: ", error);
  p.values = call.keep[0].const_data_ptr();
  return call;
}

BlockCall conv2d_call(const at::Tensor& input, int64_t out_channels, at::IntArrayRef kernel_size,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                      int64_t groups, const std::optional<at::Tensor>& bias, bool relu,
                      c10::DeviceType device) {
  TORCH_CHECK_VALUE(input.dim() == 4, "sparsekit: block_conv2d input must be [N, C, H, W], got ",
                    input.sizes());
  TORCH_CHECK_VALUE(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 &&
                        dilation.size() == 2,
                    "sparsekit: kernel_size, stride, padding and dilation take two values");
  TORCH_CHECK_VALUE(kernel_size[0] > 0 && kernel_size[1] > 0 && stride[0] > 0 &&
                        stride[1] > 0 && dilation[0] > 0 && dilation[1] > 0 &&
                        padding[0] >= 0 && padding[1] >= 0 && out_channels > 0 && groups > 0,
                    "sparsekit: kernel_size, stride, dilation, out_channels and groups must be "
                    "positive and padding non-negative");
  BlockCall call;
  BlockConvParams& p = call.p;
  ConvShape& s = p.shape;
  s.N = input.size(0), s.C = input.size(1), s.H = input.size(2), s.W = input.size(3);
  s.K = out_channels, s.KH = kernel_size[0], s.KW = kernel_size[1];
  s.stride_h = stride[0], s.stride_w = stride[1], s.pad_h = padding[0], s.pad_w = padding[1];
  s.dil_h = dilation[0], s.dil_w = dilation[1], s.groups = groups;
  s.OH = (s.H + 2 * s.pad_h - s.dil_h * (s.KH - 1) - 1) / s.stride_h + 1;
  s.OW = (s.W + 2 * s.pad_w - s.dil_w * (s.KW - 1) - 1) / s.stride_w + 1;
  TORCH_CHECK_VALUE(s.OH > 0 && s.OW > 0, "sparsekit: input ", input.sizes(),
                    " is smaller than the dilated kernel");
  TORCH_CHECK_VALUE(s.K % groups == 0 && s.C % groups == 0, "sparsekit: groups (", groups,
                    ") must divide both input (", s.C, ") and output (", s.K, ") channels");
  bind_input(call, input, bias, device);

  // The output keeps the input's memory format, as the schema's fake says (geometry.py's
  // is_channels_last: where both formats fit, the strides decide, as in torch's conv).
  const bool channels_last = input.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                             (!input.is_contiguous() || input.stride(1) < input.stride(2));
  call.out = at::empty({s.N, s.K, s.OH, s.OW},
                       input.options().memory_format(channels_last
                                                         ? at::MemoryFormat::ChannelsLast
                                                         : at::MemoryFormat::Contiguous));
  p.input = input.data_ptr();
  for (int d = 0; d < 4; ++d) p.in_stride[d] = input.stride(d), p.out_stride[d] = call.out.stride(d);
  p.output = call.out.data_ptr();
  p.relu = relu;
  return call;
}

BlockCall linear_call(const at::Tensor& input, int64_t out_features,
                      const std::optional<at::Tensor>& bias, bool relu, c10::DeviceType device) {
  TORCH_CHECK_VALUE(input.dim() >= 1, "sparsekit: block_linear input must have a feature dim");
  TORCH_CHECK_VALUE(out_features > 0, "sparsekit: out_features must be positive");
  // [*, C] -> [M, C] (a view whenever the leading dims allow), seen as a 1x1 conv over
  // N=1, H=1, W=M: channel stride = the feature stride, W stride = the row stride.
  const at::Tensor x = input.dim() == 2 ? input : input.reshape({-1, input.size(-1)});
  BlockCall call;
  BlockConvParams& p = call.p;
  ConvShape& s = p.shape;
  s.N = 1, s.C = x.size(1), s.H = 1, s.W = x.size(0), s.K = out_features;
  s.KH = s.KW = 1, s.stride_h = s.stride_w = 1, s.pad_h = s.pad_w = 0, s.dil_h = s.dil_w = 1;
  s.groups = 1, s.OH = 1, s.OW = s.W;
  bind_input(call, input, bias, device);
  call.keep.push_back(x);  // the reshaped input, when a copy

  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end() - 1);
  out_shape.push_back(out_features);
  call.out = at::empty(out_shape, input.options());
  p.input = x.data_ptr();
  p.in_stride[0] = 0, p.in_stride[1] = x.stride(1), p.in_stride[2] = 0, p.in_stride[3] = x.stride(0);
  p.output = call.out.data_ptr();
  p.out_stride[0] = 0, p.out_stride[1] = 1, p.out_stride[2] = 0, p.out_stride[3] = out_features;
  p.relu = relu;
  return call;
}

}  // namespace sparsekit

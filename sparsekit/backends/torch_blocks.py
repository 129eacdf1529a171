"""Backend ``"torch"``: each block of a packed layer run as torch's own dense conv / linear
(oneDNN on CPU, cuDNN / cuBLAS on GPU) over the input channels the block reads.

It takes packs whose blocks hold whole kernels (all kh x kw taps of every input channel they
touch): channel- and kernel-wise plans, and any plan of a linear or 1x1 conv. Such a block is a
small dense conv, so the dense library does the arithmetic and the gather is one channel
``index_select``; channel-pruned layers, whose one block keeps every input channel, need none.
"""

import math

import torch
import torch.nn.functional as F

from ..errors import SparsekitError
from ..geometry import block_conv2d_shape, block_linear_shape, output_memory_format
from ..tensor_memo import memoize
from . import schema
from .base import Backend

WHOLE_KERNELS_ONLY = "backend 'torch' runs blocks of whole kernels only: channel or kernel plans"


def whole_kernel_blocks(col_idx: torch.Tensor, block_ptr: torch.Tensor, kernel_area: int) -> bool:
    """Whether every block's columns are whole kernels: runs of ``kernel_area`` consecutive
    columns starting at a multiple of it (the layout of ``weight.reshape(out, -1)``)."""
    if kernel_area == 1:
        return True
    widths = block_ptr[1].diff()
    if bool((widths % kernel_area).any()):
        return False
    runs = col_idx.view(-1, kernel_area).long()
    taps = torch.arange(kernel_area, device=col_idx.device)
    return bool((runs[:, 0] % kernel_area == 0).all()) and torch.equal(runs, runs[:, :1] + taps)


def _blocks(values, row_idx, col_idx, block_ptr, kernel_area):
    """(block rows, input channels of its columns, its tile) for every block."""
    rp, cp, vp = block_ptr.tolist()
    for b in range(len(rp) - 1):
        rows = row_idx[rp[b] : rp[b + 1]]
        channels = col_idx[cp[b] : cp[b + 1] : kernel_area] // kernel_area
        yield rows, channels, values[vp[b] : vp[b + 1]]


def _accumulator(shape, like: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    """Zeros in fp32 for half inputs, so blocks that share rows add up at full precision."""
    dtype = torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype
    return torch.empty(shape, dtype=dtype, device=like.device, memory_format=memory_format).zero_()


def _epilogue(acc: torch.Tensor, bias, relu: bool, dtype) -> torch.Tensor:
    """Bias along dim 1, ReLU, then the input's dtype (in the accumulator's memory format)."""
    if bias is not None:
        acc += bias.to(acc.dtype).view(-1, *([1] * (acc.dim() - 2)))
    if relu:
        acc.relu_()
    return acc.to(dtype)


def _whole_kernels(col_idx, block_ptr, kernel_area: int) -> bool:
    return memoize("whole kernels", (col_idx, block_ptr),
                   lambda: whole_kernel_blocks(col_idx, block_ptr, kernel_area))


def block_conv2d(input, values, row_idx, col_idx, block_ptr, out_channels, kernel_size, stride,
                 padding, dilation, groups, bias, relu):
    kernel_area = kernel_size[0] * kernel_size[1]
    if not _whole_kernels(col_idx, block_ptr, kernel_area):  # also where a trace skipped supports()
        raise SparsekitError(f"sparsekit::torch_block_conv2d: {WHOLE_KERNELS_ONLY}")
    # torch's CPU bf16 conv2d returns wrong values for some shapes (stride 2 along a width-1
    # output, seen with torch 2.13), so on CPU bf16 runs in fp32, where the C++ kernel is the
    # fast path anyway
    compute_dtype = torch.float32 if input.is_cpu and input.dtype == torch.bfloat16 else input.dtype
    in_per_group = input.shape[1] // groups
    rows_per_group = out_channels // groups
    shape = block_conv2d_shape(input.shape, out_channels, kernel_size, stride, padding, dilation)
    acc = _accumulator(shape, input, output_memory_format(input))
    starts = row_idx[block_ptr[0, :-1]].tolist() if groups > 1 else None
    blocks = _blocks(values, row_idx, col_idx, block_ptr, kernel_area)
    for b, (rows, channels, tile) in enumerate(blocks):
        group = starts[b] // rows_per_group if groups > 1 else 0
        x = input.narrow(1, group * in_per_group, in_per_group)
        if channels.numel() < in_per_group:  # columns are unique, so fewer means a subset
            x = x.index_select(1, channels)
        if x.shape[1] == 1:
            # torch 2.13's CPU conv2d reads a one-channel input whose strides look channels_last
            # wrongly when the output is one column wide and the stride along it above one
            x = x.clone(memory_format=torch.contiguous_format)
        tile = tile.view(rows.numel(), channels.numel(), *kernel_size)
        y = F.conv2d(x.to(compute_dtype), tile.to(compute_dtype), None, stride, padding, dilation)
        acc.index_add_(1, rows, y.to(acc.dtype))
    return _epilogue(acc, bias, relu, input.dtype)


def block_linear(input, values, row_idx, col_idx, block_ptr, out_features, bias, relu):
    x = input.reshape(-1, input.shape[-1])
    acc = _accumulator((x.shape[0], out_features), input)
    for rows, cols, tile in _blocks(values, row_idx, col_idx, block_ptr, 1):
        xb = x if cols.numel() == x.shape[1] else x.index_select(1, cols)
        y = F.linear(xb, tile.view(rows.numel(), cols.numel()))
        acc.index_add_(1, rows, y.to(acc.dtype))
    out = _epilogue(acc, bias, relu, input.dtype)
    return out.reshape(block_linear_shape(input.shape, out_features))


schema.define_ops("torch_", {"block_conv2d": block_conv2d, "block_linear": block_linear})


class TorchBackend(Backend):
    name = "torch"
    devices = ("cpu", "cuda")
    dtypes = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    auto_on = ("cpu",)
    op_prefix = "torch_"
    unsupported_reason = WHOLE_KERNELS_ONLY

    def supports(self, packed):
        return _whole_kernels(packed.col_idx, packed.block_ptr, math.prod(packed.kernel_size))


BACKEND = TorchBackend()

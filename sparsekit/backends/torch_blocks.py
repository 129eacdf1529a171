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
from . import schema
from .base import Backend, Layout

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


def channel_layout(packed) -> Layout:
    """The pack as blocks of whole kernels: tensors (values, int64 rows, and each block's
    input channels, the group's first channel added) and ints, four per block and four past
    the last: its first row, first channel and first value, and the first of its channels
    when they are consecutive (an input slice, no gather), else -1."""
    area = math.prod(packed.kernel_size)
    ptr = packed.block_ptr.cpu()
    rows = packed.row_idx.long()
    rows_per_group = packed.out_features // packed.groups
    first_rows = rows.cpu()[ptr[0, :-1]]
    group_base = (first_rows // rows_per_group) * packed.weight_shape[1]
    widths = ptr[1].diff() // area
    channels = packed.col_idx.cpu()[::area].long() // area + group_base.repeat_interleave(widths)
    channel_ptr = torch.cat([torch.zeros(1, dtype=torch.long), widths.cumsum(0)])
    runs = [
        int(c[0]) if torch.equal(c, torch.arange(int(c[0]), int(c[0]) + c.numel())) else -1
        for c in channels.split(widths.tolist())
    ]
    starts = torch.stack(
        [ptr[0], channel_ptr, ptr[2], torch.tensor(runs + [0], dtype=torch.long)], 1
    )
    return Layout((packed.values, rows, channels.to(rows.device)), tuple(starts.flatten().tolist()))


def _blocks(layout, layout_ints):
    """(rows, first consecutive channel or -1, input channels, tile) of every block of a
    ``channel_layout``."""
    values, rows, channels = layout
    starts = [layout_ints[i : i + 4] for i in range(0, len(layout_ints), 4)]
    for (r0, c0, v0, run), (r1, c1, v1, _) in zip(starts, starts[1:]):
        yield rows[r0:r1], run, channels[c0:c1], values[v0:v1]


def conv_dtype(input: torch.Tensor) -> torch.dtype:
    """The dtype torch's conv2d runs ``input``'s blocks in: torch 2.13's CPU conv2d returns wrong
    values in bf16 for some shapes (stride 2 along a width-1 output) and crashes in fp16 on
    others (a width-1 input padded along its width: F.conv2d(x[2, 2, 5, 1], w[2, 2, 3, 1], None,
    (3, 2), (2, 1), (1, 2)) segfaults), so on CPU half types run in fp32, where the C++ kernel
    is the fast path anyway."""
    half = (torch.bfloat16, torch.float16)
    return torch.float32 if input.is_cpu and input.dtype in half else input.dtype


def accumulator(shape, like: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    """Zeros in fp32 for half inputs, so blocks that share rows add up at full precision."""
    dtype = torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype
    return torch.empty(shape, dtype=dtype, device=like.device, memory_format=memory_format).zero_()


def epilogue(acc: torch.Tensor, bias, relu: bool, dtype) -> torch.Tensor:
    """Bias along dim 1, ReLU, then the input's dtype (in the accumulator's memory format)."""
    if bias is not None:
        acc += bias.to(acc.dtype).view(-1, *([1] * (acc.dim() - 2)))
    if relu:
        acc.relu_()
    return acc.to(dtype)


def block_conv2d(
    input,
    layout,
    layout_ints,
    out_channels,
    kernel_size,
    stride,
    padding,
    dilation,
    groups,
    bias,
    relu,
):
    compute_dtype = conv_dtype(input)
    shape = block_conv2d_shape(input.shape, out_channels, kernel_size, stride, padding, dilation)
    acc = accumulator(shape, input, output_memory_format(input))
    for rows, run, channels, tile in _blocks(layout, layout_ints):
        x = input.narrow(1, run, channels.numel()) if run >= 0 else input.index_select(1, channels)
        if x.shape[1] == 1:
            # torch 2.13's CPU conv2d reads a one-channel input whose strides look channels_last
            # wrongly when the output is one column wide and the stride along it above one
            x = x.clone(memory_format=torch.contiguous_format)
        tile = tile.view(rows.numel(), channels.numel(), *kernel_size)
        y = F.conv2d(x.to(compute_dtype), tile.to(compute_dtype), None, stride, padding, dilation)
        acc.index_add_(1, rows, y.to(acc.dtype))
    return epilogue(acc, bias, relu, input.dtype)


def block_linear(input, layout, layout_ints, out_features, bias, relu):
    x = input.reshape(-1, input.shape[-1])
    acc = accumulator((x.shape[0], out_features), input)
    for rows, run, cols, tile in _blocks(layout, layout_ints):
        xb = x.narrow(1, run, cols.numel()) if run >= 0 else x.index_select(1, cols)
        y = F.linear(xb, tile.view(rows.numel(), cols.numel()))
        acc.index_add_(1, rows, y.to(acc.dtype))
    out = epilogue(acc, bias, relu, input.dtype)
    return out.reshape(block_linear_shape(input.shape, out_features))


schema.define_ops("torch_", {"block_conv2d": block_conv2d, "block_linear": block_linear})


class TorchBackend(Backend):
    """Its layout (``channel_layout``) holds each block's input channels, found once: its ops
    read no column index and need no check of one."""

    name = "torch"
    devices = ("cpu", "cuda")
    dtypes = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    auto_on = ("cpu",)
    graph_safe = True  # its block table is host ints in the layout: the ops read no tensor there
    max_competing_blocks = 32
    op_prefix = "torch_"
    unsupported_reason = WHOLE_KERNELS_ONLY

    def supports(self, packed):
        return whole_kernel_blocks(packed.col_idx, packed.block_ptr, math.prod(packed.kernel_size))

    def prepack(self, packed):
        if not self.supports(packed):
            raise SparsekitError(WHOLE_KERNELS_ONLY)
        return channel_layout(packed)


BACKEND = TorchBackend()

"""Backend ``"grouped"``: a packed layer as ONE grouped convolution of torch's (cuDNN on GPU, oneDNN
on CPU), the plan a practitioner tries first.

Each block becomes a group: the input channels its columns read are gathered into one tensor,
its weights laid out as a dense ``[rows, channels, kh, kw]`` kernel with zeros at the taps and
channels it does not keep, and every block padded with zero weights to the largest block's
rows and channels, which is exact: a padded weight multiplies an input that the dense masked
layer multiplies by zero too. One ``conv2d(..., groups=blocks)`` then computes every block; the
rows are added back into the output by index (rows that several blocks write add up). A linear
is the same as one batched GEMM. Blocks of very different sizes would be padded past the dense
weight, and the padded conv would then compute more than the dense layer, which it cannot beat:
such packs are refused (``supports``).
"""

import math

import torch
import torch.nn.functional as F

from ..errors import SparsekitError
from ..geometry import block_conv2d_shape, block_linear_shape, output_memory_format
from . import schema
from .base import Backend, Layout
from .torch_blocks import accumulator, conv_dtype, epilogue

TOO_UNEQUAL = (
    "backend 'grouped' pads every block to the largest: these blocks would compute more than the "
    "dense layer"
)


def _extent(packed) -> tuple[int, int, int, int]:
    """(blocks, the most rows and the most input channels a block holds, the kernel's taps) of
    a pack, read on the host."""
    area = math.prod(packed.kernel_size) if packed.kernel_size else 1
    rows = channels = 0
    ptr = packed.block_ptr.cpu()
    col_idx = packed.col_idx.cpu().long()
    for b in range(packed.num_blocks):
        rows = max(rows, int(ptr[0, b + 1] - ptr[0, b]))
        kept = col_idx[ptr[1, b] : ptr[1, b + 1]] // area
        channels = max(channels, kept.unique().numel())
    return packed.num_blocks, rows, channels, area


def grouped_layout(packed) -> Layout:
    """Tensors: the padded weights ``[blocks * rows, channels, *kernel]``, the input channel of
    every group slot (``[blocks * channels]``; a padding slot reads its group's first channel,
    with zero weights), and, for every weight row that is a block's row, its slot and the output
    row it adds to. Ints: blocks, rows, channels."""
    blocks, rows, channels, area = _extent(packed)
    kernel = list(packed.kernel_size) or [1, 1]
    weight = torch.zeros(blocks, rows, channels, area, dtype=packed.values.dtype)
    gather = torch.zeros(blocks, channels, dtype=torch.long)
    slots, targets = [], []
    rows_per_group = packed.out_features // packed.groups
    for b, (block_rows, cols, tile) in enumerate(packed.to("cpu").blocks()):
        block_rows, cols = block_rows.long(), cols.long()
        kept, position = torch.unique(cols // area, return_inverse=True)
        group_base = int(block_rows[0]) // rows_per_group * packed.weight_shape[1]
        gather[b, : kept.numel()] = kept + group_base
        gather[b, kept.numel() :] = gather[b, 0]
        r = torch.arange(block_rows.numel())
        weight[b, r[:, None], position[None, :], (cols % area)[None, :]] = tile
        slots.append(b * rows + r)
        targets.append(block_rows)
    device = packed.values.device
    flat = torch.cat(slots) if slots else torch.zeros(0, dtype=torch.long)
    return Layout(
        (
            weight.view(blocks * rows, channels, *kernel).to(device),
            gather.flatten().to(device),
            flat.to(device),
            (torch.cat(targets) if targets else flat).to(device),
        ),
        (blocks, rows, channels),
    )


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
    weight, gather, slots, rows = layout
    shape = block_conv2d_shape(input.shape, out_channels, kernel_size, stride, padding, dilation)
    acc = accumulator(shape, input, output_memory_format(input))
    if layout_ints[0]:
        dtype = conv_dtype(input)
        x = input.index_select(1, gather).to(dtype)
        y = F.conv2d(x, weight.to(dtype), None, stride, padding, dilation, layout_ints[0])
        acc.index_add_(1, rows, y.index_select(1, slots).to(acc.dtype))
    return epilogue(acc, bias, relu, input.dtype)


def block_linear(input, layout, layout_ints, out_features, bias, relu):
    weight, gather, slots, rows = layout
    blocks, height, width = layout_ints
    x = input.reshape(-1, input.shape[-1])
    acc = accumulator((x.shape[0], out_features), input)
    if blocks:
        xg = x.index_select(1, gather).view(-1, blocks, width).transpose(0, 1)  # [G, M, C]
        y = torch.bmm(xg, weight.view(blocks, height, width).transpose(1, 2))  # [G, M, R]
        y = y.transpose(0, 1).reshape(x.shape[0], blocks * height)
        acc.index_add_(1, rows, y.index_select(1, slots).to(acc.dtype))
    out = epilogue(acc, bias, relu, input.dtype)
    return out.reshape(block_linear_shape(input.shape, out_features))


schema.define_ops("grouped_", {"block_conv2d": block_conv2d, "block_linear": block_linear})


class GroupedBackend(Backend):
    """Its layout (``grouped_layout``) is the padded weights and the gather and scatter indices,
    built once: its ops read no block index."""

    name = "grouped"
    devices = ("cpu", "cuda")
    dtypes = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    # opt-in until its tests pass on a GPU, the device it is for: auto never picks it, and the
    # bench suites time it when asked (SPARSEKIT_BENCH_ALSO=grouped; the GPU session does)
    auto_on = ()
    benchmarked = False
    graph_safe = True  # its indices are tensors on the device: the ops read nothing on the host
    op_prefix = "grouped_"
    unsupported_reason = TOO_UNEQUAL

    def supports(self, packed):
        blocks, rows, channels, area = _extent(packed)
        return blocks * rows * channels * area <= math.prod(packed.weight_shape)

    def prepack(self, packed):
        if not self.supports(packed):
            raise SparsekitError(TOO_UNEQUAL)
        return grouped_layout(packed)


BACKEND = GroupedBackend()

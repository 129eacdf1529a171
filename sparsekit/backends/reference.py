"""Backend ``"reference"``: the ops in plain torch, the definition the kernels are tested
against: an explicit im2col and one matmul per block, accumulated in fp32 (fp64 for fp64). Its
layout is the pack itself. It runs on any device and dtype, slowly: ``auto`` never picks it."""

import math

import torch
import torch.nn.functional as F

from ..formats import PackedWeight
from ..geometry import block_conv2d_shape, output_memory_format
from . import schema
from .base import Backend


def _accumulate_blocks(columns: torch.Tensor, weight: PackedWeight, acc: torch.Tensor) -> None:
    """acc[:, rows] += tile @ columns[:, group offset + cols] for every block ([B, cols, L])."""
    rows_per_group = weight.out_features // weight.groups
    cols_per_group = math.prod(weight.weight_shape[1:])
    for rows, cols, tile in weight.blocks():
        group = int(rows[0]) // rows_per_group
        x = columns[:, group * cols_per_group + cols.long()]
        acc[:, rows.long()] += tile.to(acc.dtype) @ x


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _epilogue(acc: torch.Tensor, bias, relu: bool) -> torch.Tensor:
    if bias is not None:
        acc += bias.to(acc.dtype)[:, None]
    return acc.relu_() if relu else acc


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
    weight = PackedWeight((out_channels, input.shape[1] // groups, *kernel_size), groups, *layout)
    n, _, oh, ow = block_conv2d_shape(
        input.shape, out_channels, kernel_size, stride, padding, dilation
    )
    acc_dtype = _accumulator_dtype(input.dtype)
    columns = F.unfold(input.to(acc_dtype), kernel_size, dilation, padding, stride)
    acc = torch.zeros(n, out_channels, oh * ow, dtype=acc_dtype, device=input.device)
    _accumulate_blocks(columns, weight, acc)
    out = _epilogue(acc, bias, relu).reshape(n, out_channels, oh, ow).to(input.dtype)
    return out.contiguous(memory_format=output_memory_format(input))


def block_linear(input, layout, layout_ints, out_features, bias, relu):
    weight = PackedWeight((out_features, input.shape[-1]), 1, *layout)
    acc_dtype = _accumulator_dtype(input.dtype)
    x = input.reshape(-1, input.shape[-1]).to(acc_dtype).T[None]  # [1, in, M]
    acc = torch.zeros(1, out_features, x.shape[2], dtype=acc_dtype, device=input.device)
    _accumulate_blocks(x, weight, acc)
    out = _epilogue(acc, bias, relu)[0].T.contiguous()  # [M, out], row-major as the fake says
    return out.reshape(*input.shape[:-1], out_features).to(input.dtype)


schema.define_ops("reference_", {"block_conv2d": block_conv2d, "block_linear": block_linear})


class ReferenceBackend(Backend):
    name = "reference"
    devices = ("cpu", "cuda")
    dtypes = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    benchmarked = False  # slow by design
    op_prefix = "reference_"


BACKEND = ReferenceBackend()

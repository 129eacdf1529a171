"""Triton block convolution and block linear: the gathered dense-block GEMM on tensor cores.

A program computes a ``BLOCK_M x BLOCK_N`` tile of one block's output rows x output positions.
Its K loop walks the block's columns, decodes each to ``(cin, kh, kw)`` and gathers the input
straight from the (strided) activation: an implicit im2col, never materialised. ``tl.dot``
accumulates in fp32; the epilogue adds bias, applies ReLU and scatters the rows into the output,
NCHW or channels_last like the input (a pixel of either is ``OH * OW`` positions of one stride). A linear layer is the 1x1 convolution of ``[M, in, 1, 1]``.

Rows that several blocks share are summed deterministically: blocks are split into waves
whose rows are disjoint, each row meeting its blocks in block order, and the waves run one
after another into an fp32 buffer. Packs whose rows are disjoint (channel-, kernel-wise and
regrouped plans) take one wave with the epilogue fused.

fp32 inputs use strict fp32 products unless ``torch.get_float32_matmul_precision()`` allows
TF32. Under ``TRITON_INTERPRET=1`` (CPU tests) one small config runs.
"""

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sparsekit.geometry import block_conv2d_shape, block_linear_shape, output_memory_format
from sparsekit.tensor_memo import memoize

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _configs() -> list[triton.Config]:
    if INTERPRETED:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}, num_warps=1, num_stages=1)]
    # Hopper: 64-128 row tiles match the 32-256-row blocks of regrouped plans; K tiles of 32-64
    # columns keep the gathered input tile in registers with 3-4 pipeline stages
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
        for m, n, k, w, s in [
            (64, 64, 32, 4, 3), (64, 128, 32, 4, 4), (128, 64, 32, 4, 4), (128, 128, 32, 8, 3),
            (64, 128, 64, 4, 3), (128, 128, 64, 8, 3), (32, 128, 64, 4, 4), (128, 256, 32, 8, 3),
        ]
    ]


@triton.autotune(
    configs=_configs(),
    key=["out_channels", "positions", "max_cols", "KH", "KW", "INPUT_PRECISION"],
    restore_value=["out"],  # tuning reruns a wave that accumulates into ``out``
)
@triton.jit
def _block_conv_kernel(
    x, values, row_idx, col_idx, block_ptr, wave_blocks, bias, out,
    out_channels, in_per_group, rows_per_group, positions, max_cols,
    OH, OW, H, W, sxn, sxc, sxh, sxw, son, soc, sop, blocks_plus_one,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    ACCUMULATE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    block = tl.load(wave_blocks + tl.program_id(2))
    r0 = tl.load(block_ptr + block)
    rows = tl.load(block_ptr + block + 1) - r0
    if pid_m * BLOCK_M >= rows:
        return
    c0 = tl.load(block_ptr + blocks_plus_one + block)
    cols = tl.load(block_ptr + blocks_plus_one + block + 1) - c0
    v0 = tl.load(block_ptr + 2 * blocks_plus_one + block)

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < rows
    out_rows = tl.load(row_idx + r0 + m, mask=m_ok, other=0)
    channel0 = (tl.load(row_idx + r0) // rows_per_group) * in_per_group

    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < positions
    image = n // (OH * OW)
    pixel = n % (OH * OW)
    ih0 = (pixel // OW) * stride_h - pad_h
    iw0 = (pixel % OW) * stride_w - pad_w
    x_image = x + image.to(tl.int64) * sxn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, cols, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < cols
        col = tl.load(col_idx + c0 + k, mask=k_ok, other=0)
        cin = col // (KH * KW)
        kh = (col // KW) % KH
        kw = col % KW
        ih = ih0[None, :] + (kh * dil_h)[:, None]
        iw = iw0[None, :] + (kw * dil_w)[:, None]
        inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_tile = tl.load(
            x_image[None, :] + ((channel0 + cin) * sxc)[:, None] + ih * sxh + iw * sxw,
            mask=k_ok[:, None] & n_ok[None, :] & inside, other=0.0,
        )
        w_tile = tl.load(
            values + v0 + m[:, None] * cols + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0
        )
        acc = tl.dot(w_tile, x_tile, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias + out_rows, mask=m_ok, other=0.0).to(tl.float32)[:, None]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    target = out + image.to(tl.int64)[None, :] * son + (out_rows * soc)[:, None] + pixel[None, :] * sop
    ok = m_ok[:, None] & n_ok[None, :]
    if ACCUMULATE:
        acc += tl.load(target, mask=ok, other=0.0)
    tl.store(target, acc.to(out.dtype.element_ty), mask=ok)


@dataclass(frozen=True)
class _Schedule:
    """Blocks split into waves of disjoint rows, and the rows no block covers."""

    waves: list  # [(block ids int32 on the device, most rows of a block in the wave)]
    uncovered: torch.Tensor  # int64 row indices
    max_cols: int


def _schedule(row_idx: torch.Tensor, block_ptr: torch.Tensor, out_channels: int) -> _Schedule:
    rows, ptr = row_idx.tolist(), block_ptr.tolist()
    last_wave = [-1] * out_channels
    waves: list[list[int]] = []
    for b in range(len(ptr[0]) - 1):
        block_rows = rows[ptr[0][b] : ptr[0][b + 1]]
        wave = 1 + max((last_wave[r] for r in block_rows), default=-1)
        for r in block_rows:
            last_wave[r] = wave
        waves += [[] for _ in range(wave + 1 - len(waves))]
        waves[wave].append(b)
    sizes = [ptr[0][b + 1] - ptr[0][b] for b in range(len(ptr[0]) - 1)]
    device = row_idx.device
    return _Schedule(
        waves=[(torch.tensor(w, dtype=torch.int32, device=device), max(sizes[b] for b in w)) for w in waves],
        uncovered=torch.tensor([r for r, w in enumerate(last_wave) if w < 0], dtype=torch.int64, device=device),
        max_cols=max((ptr[1][b + 1] - ptr[1][b] for b in range(len(sizes))), default=0),
    )


def _input_precision(dtype: torch.dtype) -> str:
    tf32 = dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"
    return "ieee" if dtype == torch.float32 and not tf32 else "tf32"


def _run(x, strides, geometry, values, row_idx, col_idx, block_ptr, out_channels, groups, bias, relu,
         memory_format=torch.contiguous_format):
    """The output ``[N, out_channels, OH, OW]`` (in ``memory_format``) of the block convolution
    of ``x``, whose strides are ``strides``."""
    n, c, h, w, kh, kw, stride, padding, dilation = geometry
    oh, ow = block_conv2d_shape((n, c, h, w), out_channels, (kh, kw), stride, padding, dilation)[2:]
    plan = memoize(
        "triton schedule", (row_idx, block_ptr), lambda: _schedule(row_idx, block_ptr, out_channels)
    )
    fused = len(plan.waves) <= 1
    out_dtype = x.dtype if fused else torch.float32
    out = torch.empty((n, out_channels, oh, ow), dtype=out_dtype, device=x.device, memory_format=memory_format)
    if fused and plan.uncovered.numel():  # rows without blocks: bias (then ReLU) or zeros
        fill = torch.zeros(plan.uncovered.numel(), dtype=x.dtype, device=x.device)
        if bias is not None:
            fill = bias[plan.uncovered].relu() if relu else bias[plan.uncovered]
        out[:, plan.uncovered] = fill.view(1, -1, 1, 1)
    elif not fused:
        out.zero_()
    positions = n * oh * ow
    precision = _input_precision(x.dtype)
    for i, (blocks, max_rows) in enumerate(plan.waves):
        if positions == 0:
            break
        grid = lambda meta, max_rows=max_rows, count=blocks.numel(): (  # noqa: E731
            triton.cdiv(positions, meta["BLOCK_N"]), triton.cdiv(max_rows, meta["BLOCK_M"]), count,
        )
        _block_conv_kernel[grid](
            x, values, row_idx, col_idx, block_ptr, blocks, bias if bias is not None else values, out,
            out_channels, c // groups, out_channels // groups, positions, plan.max_cols,
            oh, ow, h, w, *strides, out.stride(0), out.stride(1), out.stride(3), block_ptr.shape[1],
            *stride, *padding, *dilation,
            KH=kh, KW=kw, HAS_BIAS=fused and bias is not None, RELU=fused and relu,
            ACCUMULATE=i > 0, INPUT_PRECISION=precision,
        )
    if fused:
        return out
    if bias is not None:
        out += bias.to(out.dtype).view(1, -1, 1, 1)
    return (out.relu_() if relu else out).to(x.dtype)


def block_conv2d(input, values, row_idx, col_idx, block_ptr, out_channels, kernel_size, stride,
                 padding, dilation, groups, bias, relu):
    geometry = (*input.shape, *kernel_size, stride, padding, dilation)
    return _run(input, input.stride(), geometry, values, row_idx, col_idx, block_ptr, out_channels,
                groups, bias, relu, output_memory_format(input))


def block_linear(input, values, row_idx, col_idx, block_ptr, out_features, bias, relu):
    x = input.reshape(-1, input.shape[-1])
    geometry = (x.shape[0], x.shape[1], 1, 1, 1, 1, (1, 1), (0, 0), (1, 1))
    out = _run(x, (*x.stride(), 0, 0), geometry, values, row_idx, col_idx, block_ptr, out_features,
               1, bias, relu)
    return out.view(block_linear_shape(input.shape, out_features))

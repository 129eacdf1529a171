"""Triton block convolution and block linear: the gathered dense-block GEMM on tensor cores.

One persistent launch per layer. Its work items are (a tile of ``BLOCK_M`` output positions) x
(a row tile of ``row_tiles``: 32, 64 or 128 output rows), row tile fastest, so the programs
running at one time read the same input positions from L2. Positions lie on the MMA's M, the
row tile on N. A work item loops over the K-tiles of its row tile: ``K_TILE`` columns of one
block at one tap, so each position's inputs are ``row base + channel offset`` under one bounds
mask (contiguous channels load as vectors: the input should be channels_last). ``tl.dot``
accumulates in fp32; the epilogue adds bias, applies ReLU and writes the rows, NCHW or
channels_last like the input. A linear layer ``[batch, in]`` is a 1x1 conv with the batch on M.
Offsets of images and positions are int64; those inside an image too where one can pass 2**31
(``WIDE``).

fp32 inputs use strict fp32 products unless ``torch.get_float32_matmul_precision()`` allows
TF32. Under ``TRITON_INTERPRET=1`` (CPU tests) one small config runs.
"""

import functools
import os

import torch
import triton
import triton.language as tl

from sparsekit.errors import SparsekitError
from sparsekit.geometry import block_conv2d_shape, block_linear_shape, output_memory_format

from . import row_tiles
from .row_tiles import K_TILE, RowTiles

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# fp32 accumulator elements per thread above which a kernel spills on sm_90a or sm_80 (read from
# the cubins of ``aot``), by load path and whether fp32 is strict: the gathered input tile leaves
# fewer registers over, and strict fp32, whose products run on FMA units, fewer still
ACC_PER_THREAD = {
    ("consecutive", False): 32,
    ("gathered", False): 16,
    ("consecutive", True): 8,
    ("gathered", True): 8,
}


# autotune configs (``ROWS`` comes from the layout, ``K_TILE`` is fixed); ``aot`` compiles each
GPU_CONFIGS = [
    triton.Config({"BLOCK_M": m}, num_warps=w, num_stages=s)
    for m, w, s in [(64, 4, 3), (64, 4, 4), (64, 8, 3), (128, 8, 3), (128, 8, 4)]
]
INTERPRETER_CONFIGS = [triton.Config({"BLOCK_M": 16}, num_warps=1, num_stages=1)]


def fits(config: triton.Config, rows: int, consecutive: bool, strict: bool) -> bool:
    """Whether ``config``'s accumulator for ``rows``-row tiles stays in registers, on the
    consecutive or gathered load path, in strict fp32 or on tensor cores."""
    cap = ACC_PER_THREAD["consecutive" if consecutive else "gathered", strict]
    return config.kwargs["BLOCK_M"] * rows <= cap * 32 * config.num_warps


def serves_wide(config: triton.Config) -> bool:
    """Whether ``config`` runs the int64 (``WIDE``) variant: only the one of fewest accumulator
    elements per thread, which holds every row-tile height the others do (and the int64
    offsets beside it)."""
    return (config.kwargs["BLOCK_M"], config.num_warps) == (64, 8)


def row_tiles_that_fit(dtype: torch.dtype):
    """Which row-tile heights some config holds, for ``row_tiles.build``: a pack's fp32 layout
    must serve strict fp32 (the interpreter takes any)."""
    strict = dtype == torch.float32
    return lambda rows, consecutive: (
        INTERPRETED or any(fits(c, rows, consecutive, strict) for c in GPU_CONFIGS)
    )


def _prune(configs, named_args, **kwargs):
    if INTERPRETED:
        return configs
    rows, positions = kwargs["ROWS"], named_args["positions"]
    kept = [
        c
        for c in configs
        if fits(c, rows, kwargs["CONSECUTIVE"], kwargs["INPUT_PRECISION"] == "ieee")
        and (serves_wide(c) or not kwargs["WIDE"])
    ]
    # no tile much taller than the positions there are
    small = [c for c in kept if c.kwargs["BLOCK_M"] <= max(64, triton.next_power_of_2(positions))]
    return small or kept[:1]  # the layout's rows always fit some config (row_tiles_that_fit)


def size_class(positions: int) -> int:
    """The autotune key's stand-in for the batch: configs are tuned once per power of two of
    position tiles (up to 2**12), not per batch size."""
    return min(12, max(0, (positions - 1).bit_length() - 6))


@triton.jit
def _input_tile(
    x_image,
    kt,
    taps,
    channels_of,
    ih0,
    iw0,
    n_ok,
    H,
    W,
    sxc,
    sxh,
    sxw,
    dil_h,
    dil_w,
    KW: tl.constexpr,
    WIDE: tl.constexpr,
    CONSECUTIVE: tl.constexpr,
    X_CHANNELS_INNER: tl.constexpr,
    K_TILE: tl.constexpr,
):
    """The ``[positions, K_TILE]`` input tile of K-tile ``kt``: its channels at its tap."""
    k = tl.arange(0, K_TILE)
    tap = tl.load(taps + kt)
    ih = ih0 + (tap // KW) * dil_h
    iw = iw0 + (tap % KW) * dil_w
    inside = n_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    at = ih * sxh + iw * sxw
    if CONSECUTIVE:
        channel = tl.multiple_of(tl.load(channels_of + kt * K_TILE), K_TILE) + k
        x_ok = inside[:, None]
    else:
        channel = tl.load(channels_of + kt * K_TILE + k)
        x_ok = inside[:, None] & (channel >= 0)[None, :]
    if WIDE:
        channel = channel.to(tl.int64)
    if X_CHANNELS_INNER and not CONSECUTIVE:
        # gathered channels carry no contiguity the compiler can see, and it then lays lanes
        # along the first axis: channels first puts a warp on one position's run
        return tl.trans(
            tl.load(
                x_image[None, :] + (at[None, :] + channel[:, None] * sxc),
                mask=tl.trans(x_ok),
                other=0.0,
            )
        )
    return tl.load(x_image[:, None] + (at[:, None] + channel[None, :] * sxc), mask=x_ok, other=0.0)


# what the autotuner tunes per (with the tensors' dtypes); ``_launch`` keeps its choices by it too
TUNING_KEY = [
    "ROWS",
    "KW",
    "channels",
    "size_class",
    "INPUT_PRECISION",
    "CONSECUTIVE",
    "WIDE",
    "X_CHANNELS_INNER",
    "OUT_CHANNELS_INNER",
]


@triton.autotune(
    configs=INTERPRETER_CONFIGS if INTERPRETED else GPU_CONFIGS,
    key=TUNING_KEY,
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def tile_conv_kernel(
    x,
    out,
    bias,
    tile_rows,
    tile_ptr,
    taps,
    channels_of,
    weights,
    positions,
    num_row_tiles,
    channels,
    size_class,
    OH,
    OW,
    H,
    W,
    sxn,
    sxc,
    sxh,
    sxw,
    son,
    soc,
    sop,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    KW: tl.constexpr,
    WIDE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    RELU: tl.constexpr,
    CONSECUTIVE: tl.constexpr,
    X_CHANNELS_INNER: tl.constexpr,
    OUT_CHANNELS_INNER: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    ROWS: tl.constexpr,
    K_TILE: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    k = tl.arange(0, K_TILE)
    j = tl.arange(0, ROWS)
    work = tl.cdiv(positions, BLOCK_M) * num_row_tiles
    for item in range(tl.program_id(0), work, tl.num_programs(0)):
        tile = item % num_row_tiles
        n = tl.cast(item // num_row_tiles, tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        n_ok = n < positions
        image = n // (OH * OW)
        pixel = n % (OH * OW)
        if not WIDE:  # offsets inside an image fit int32
            pixel = pixel.to(tl.int32)
        ih0 = (pixel // OW) * stride_h - pad_h
        iw0 = (pixel % OW) * stride_w - pad_w
        x_image = x + image * sxn

        acc = tl.zeros((BLOCK_M, ROWS), dtype=tl.float32)
        first, last = tl.load(tile_ptr + tile), tl.load(tile_ptr + tile + 1)
        if CONSECUTIVE or x.dtype.element_ty.primitive_bitwidth > 16:
            # vector loads, or gathered 4-byte ones: triton pipelines them through shared memory
            for kt in range(first, last):
                x_tile = _input_tile(
                    x_image,
                    kt,
                    taps,
                    channels_of,
                    ih0,
                    iw0,
                    n_ok,
                    H,
                    W,
                    sxc,
                    sxh,
                    sxw,
                    dil_h,
                    dil_w,
                    KW,
                    WIDE,
                    CONSECUTIVE,
                    X_CHANNELS_INNER,
                    K_TILE,
                )
                w_tile = tl.load(
                    weights
                    + tl.cast(kt, tl.int64) * (K_TILE * ROWS)
                    + k[:, None] * ROWS
                    + j[None, :]
                )
                acc = tl.dot(x_tile, w_tile, acc, input_precision=INPUT_PRECISION)
        else:
            # gathered 2-byte elements are too narrow for cp.async, so triton would wait for each
            # tile's loads before its MMA: the next K-tile (past the last, the next row tile's or
            # the layout's sentinel, unused) is loaded into registers while this one multiplies
            x_tile = _input_tile(
                x_image,
                first,
                taps,
                channels_of,
                ih0,
                iw0,
                n_ok,
                H,
                W,
                sxc,
                sxh,
                sxw,
                dil_h,
                dil_w,
                KW,
                WIDE,
                False,
                X_CHANNELS_INNER,
                K_TILE,
            )
            for kt in range(first, last):
                x_next = _input_tile(
                    x_image,
                    kt + 1,
                    taps,
                    channels_of,
                    ih0,
                    iw0,
                    n_ok,
                    H,
                    W,
                    sxc,
                    sxh,
                    sxw,
                    dil_h,
                    dil_w,
                    KW,
                    WIDE,
                    False,
                    X_CHANNELS_INNER,
                    K_TILE,
                )
                w_tile = tl.load(
                    weights
                    + tl.cast(kt, tl.int64) * (K_TILE * ROWS)
                    + k[:, None] * ROWS
                    + j[None, :]
                )
                acc = tl.dot(x_tile, w_tile, acc, input_precision=INPUT_PRECISION)
                x_tile = x_next

        if HAS_BIAS:
            rows = tl.load(tile_rows + tile * ROWS + j)
            acc += tl.load(bias + rows, mask=rows >= 0, other=0.0).to(tl.float32)[None, :]
        if RELU:
            acc = tl.maximum(acc, 0.0)
        # the rows are scattered, so every element needs its own 64-bit address: storing the
        # tile in two halves keeps half of them live (whole tiles spill)
        acc = tl.permute(
            tl.reshape(acc.to(out.dtype.element_ty), (BLOCK_M, 2, ROWS // 2)), (0, 2, 1)
        )
        left, right = tl.split(acc)
        out_at = out + image * son + pixel * sop
        for part in tl.static_range(2):
            rows = tl.load(tile_rows + tile * ROWS + part * (ROWS // 2) + tl.arange(0, ROWS // 2))
            if WIDE:
                rows = rows.to(tl.int64)
            half = left if part == 0 else right
            if OUT_CHANNELS_INNER:  # rows first, as for the gathered input tile
                tl.store(
                    out_at[None, :] + (rows * soc)[:, None],
                    tl.trans(half),
                    mask=n_ok[None, :] & (rows >= 0)[:, None],
                )
            else:
                tl.store(
                    out_at[:, None] + (rows * soc)[None, :],
                    half,
                    mask=n_ok[:, None] & (rows >= 0)[None, :],
                )


def _input_precision(dtype: torch.dtype) -> str:
    tf32 = dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"
    return "ieee" if dtype == torch.float32 and not tf32 else "tf32"


def layout(values, row_idx, col_idx, block_ptr, out_channels, in_channels, kernel_size, groups):
    """The layout of a (checked) pack, as the ops take it: the row tiles' tensors
    (``row_tiles``) and the ints ``(in_channels, out_channels, kh, kw, groups, consecutive)``."""
    tiles = row_tiles.build(
        values,
        row_idx,
        col_idx,
        block_ptr,
        out_channels,
        in_channels,
        groups,
        kernel_size[0] * kernel_size[1],
        row_tiles_that_fit(values.dtype),
    )
    return tiles.tensors(), (
        in_channels,
        out_channels,
        *kernel_size,
        groups,
        int(tiles.consecutive),
    )


def _tiles(
    layout_tensors, layout_ints, op, in_channels, out_channels, kernel_size, groups
) -> RowTiles:
    """The row tiles of a layout, after checking that it was built for this call's layer."""
    if list(layout_ints[:5]) != [in_channels, out_channels, *kernel_size, groups]:
        raise SparsekitError(
            f"sparsekit::triton_{op}: the layout was built for another layer (its ints "
            f"{list(layout_ints)} are not the call's in and out channels, kernel size and groups)"
        )
    return RowTiles.of(layout_tensors, bool(layout_ints[5]))


@functools.cache
def _sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def programs(work_items: int, device: torch.device) -> int:
    """Programs of the persistent launch: every work item under the interpreter, else up to
    four per SM (the loop strides over the rest)."""
    if INTERPRETED or device.type != "cuda":
        return work_items
    return min(work_items, 4 * _sms(device))


# The config the autotuner chose, per key of its (with the tensors' dtypes and the device, as
# its own cache has them): later calls of that key launch the kernel with it directly, past the
# autotuner's per-call work, and never tune again, which a CUDA graph capture could not hold.
_CHOSEN: dict[tuple, triton.Config] = {}
# Whether later calls launch past the autotuner. Under the interpreter, where its tests ran; on a
# GPU not until they have passed there (the GPU session runs them with it on: tests/test_triton.py
# test_a_chosen_config_is_launched_directly_on_later_calls), as for any code `auto` reaches.
DIRECT_LAUNCH = INTERPRETED


def _launch(work, args: tuple, constexprs: dict, key: tuple) -> None:
    """``tile_conv_kernel`` on ``args``, with ``programs(work(BLOCK_M))`` programs: through the
    autotuner the first time ``key`` is seen, then (``DIRECT_LAUNCH``) with the config it chose."""
    config = _CHOSEN.get(key) if DIRECT_LAUNCH else None
    if config is None:
        tile_conv_kernel[lambda meta: (work(meta["BLOCK_M"]),)](*args, **constexprs)
        if DIRECT_LAUNCH:
            _CHOSEN[key] = tile_conv_kernel.best_config
        return
    grid = (work(config.kwargs["BLOCK_M"]),)
    tile_conv_kernel.fn[grid](*args, **constexprs, **config.all_kwargs())


def _run(x, strides, geometry, tiles: RowTiles, out_channels, bias, relu, memory_format):
    """The output ``[N, out_channels, OH, OW]`` (in ``memory_format``) of the block convolution
    of ``x``, whose strides are ``strides``."""
    n, c, h, w, kh, kw, stride, padding, dilation = geometry
    oh, ow = block_conv2d_shape((n, c, h, w), out_channels, (kh, kw), stride, padding, dilation)[2:]
    out = torch.empty(
        (n, out_channels, oh, ow), dtype=x.dtype, device=x.device, memory_format=memory_format
    )
    positions = n * oh * ow
    if positions == 0:
        return out
    # offsets inside an image (input or output) past int32 need the int64 variant
    reach = max(
        (c - 1) * strides[1] + (h - 1) * strides[2] + (w - 1) * strides[3],
        (out_channels - 1) * out.stride(1) + (oh * ow - 1) * out.stride(3),
    )
    args = (
        x,
        out,
        bias if bias is not None else tiles.weights,
        tiles.tile_rows,
        tiles.tile_ptr,
        tiles.taps,
        tiles.channels,
        tiles.weights,
        positions,
        tiles.num_tiles,
        c,
        size_class(positions),
        oh,
        ow,
        h,
        w,
        *strides,
        out.stride(0),
        out.stride(1),
        out.stride(3),
        *stride,
        *padding,
        *dilation,
    )
    constexprs = {
        "KW": kw,
        "WIDE": reach >= 2**31,
        "HAS_BIAS": bias is not None,
        "RELU": relu,
        "CONSECUTIVE": tiles.consecutive,
        "X_CHANNELS_INNER": strides[1] == 1,
        "OUT_CHANNELS_INNER": out.stride(1) == 1,
        "INPUT_PRECISION": _input_precision(x.dtype),
        "ROWS": tiles.rows,
        "K_TILE": K_TILE,
    }
    named = constexprs | {"channels": c, "size_class": args[11]}
    key = (*(named[k] for k in TUNING_KEY), x.dtype, args[2].dtype, tiles.weights.dtype, x.device)

    def work(block_m: int) -> int:
        return programs(triton.cdiv(positions, block_m) * tiles.num_tiles, x.device)

    _launch(work, args, constexprs, key)
    return out


def block_conv2d(
    input,
    layout_tensors,
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
    tiles = _tiles(
        layout_tensors,
        layout_ints,
        "block_conv2d",
        input.shape[1],
        out_channels,
        list(kernel_size),
        groups,
    )
    geometry = (*input.shape, *kernel_size, stride, padding, dilation)
    return _run(
        input,
        input.stride(),
        geometry,
        tiles,
        out_channels,
        bias,
        relu,
        output_memory_format(input),
    )


def block_linear(input, layout_tensors, layout_ints, out_features, bias, relu):
    x = input.reshape(-1, input.shape[-1])
    tiles = _tiles(layout_tensors, layout_ints, "block_linear", x.shape[1], out_features, [1, 1], 1)
    geometry = (x.shape[0], x.shape[1], 1, 1, 1, 1, (1, 1), (0, 0), (1, 1))
    out = _run(
        x, (*x.stride(), 0, 0), geometry, tiles, out_features, bias, relu, torch.contiguous_format
    )
    return out.view(block_linear_shape(input.shape, out_features))

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.benchmark import Timer

from sparsekit import SparsekitError, backends, ops, pack
from sparsekit.backends import schema
from sparsekit.geometry import is_channels_last, output_memory_format

from .helpers import (
    CONV_CASES,
    CPU_BACKENDS,
    LAYOUTS,
    assert_matches,
    backend_dtypes,
    conv_input,
    expected_conv,
    expected_linear,
    pack_for,
    packed_conv,
)

BACKEND_DTYPES = [(b, d) for b in CPU_BACKENDS for d in backend_dtypes(b)]
THREADS = torch.get_num_threads()


def test_every_cpu_backend_is_tested():
    assert {"cpu", "torch", "reference"} <= set(CPU_BACKENDS) and len(BACKEND_DTYPES) >= 10


@pytest.mark.parametrize(
    "shape", [(16, 1, 3, 3), (4, 1, 8, 8), (4, 3, 1, 1), (4, 1, 1, 1), (2, 3, 1, 5), (2, 3, 4, 5)]
)
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format], ids=str)
def test_is_channels_last_reads_a_tensor_as_torch_conv_does(shape, fmt):
    """Tensors with one channel or one pixel are contiguous in both formats; their strides decide,
    as they decide the strides of torch's conv output (six channels, so never ambiguous)."""
    t = torch.randn(shape).to(memory_format=fmt)
    out = F.conv2d(t, torch.randn(6, shape[1], 1, 1))
    torch_says = out.stride() == torch.empty(out.shape, memory_format=torch.channels_last).stride()
    assert is_channels_last(t) == is_channels_last(out) == torch_says
    assert torch_says == (fmt == torch.channels_last and shape[1:] != (1, 1, 1))


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("backend", "dtype"), BACKEND_DTYPES, ids=str)
def test_block_conv2d_matches_conv2d(case, layout, backend, dtype):
    n, cin, cout, hw, kernel, stride, padding, dilation, groups = case
    packed = packed_conv(cout, cin, kernel, groups, dtype, backend=backend)
    x = conv_input((n, cin, *hw), dtype, layout)
    bias = torch.randn(cout).to(dtype)
    x_before = x.clone()
    for relu in (False, True):
        y = ops.block_conv2d(x, packed, bias, stride, padding, dilation, relu=relu, backend=backend)
        assert y.is_contiguous(memory_format=output_memory_format(x))  # the input's format
        assert_matches(y, expected_conv(x, packed, bias, stride, padding, dilation, relu), dtype)
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_channels_last_in_channels_last_out(backend):
    packed = packed_conv(16, 8, (3, 3), 1, torch.float32, backend=backend)
    x = torch.randn(2, 8, 6, 5).to(memory_format=torch.channels_last)
    y = ops.block_conv2d(x, packed, padding=1, backend=backend)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    plain = ops.block_conv2d(x.contiguous(), packed, padding=1, backend=backend)
    assert plain.is_contiguous() and torch.equal(y, plain)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("groups", [1, 4])
def test_one_channel_inputs_in_channels_last_with_a_one_column_output(backend, groups):
    """torch 2.13's own CPU conv2d gets this case wrong (one input channel, strides of a
    channels_last tensor, stride 2 along a one-column output); the ops must not."""
    packed = packed_conv(
        4, groups, (3, 3), groups, torch.float32, "dense", 1.0, "random", backend=backend
    )
    x = torch.randn(2, groups, 4, 3).to(memory_format=torch.channels_last)
    y = ops.block_conv2d(x, packed, None, (1, 2), (1, 0), backend=backend)
    assert y.shape[-1] == 1
    assert_matches(y, expected_conv(x, packed, None, (1, 2), (1, 0), 1, False), torch.float32)


@pytest.mark.parametrize("shape", [(33,), (1, 33), (7, 33), (2, 3, 33)], ids=str)
@pytest.mark.parametrize(("backend", "dtype"), BACKEND_DTYPES, ids=str)
def test_block_linear_matches_linear(shape, backend, dtype):
    weight = torch.randn(100, 33).to(dtype)
    packed = pack(weight, torch.rand(100, 33) < 0.3, structure="group")
    bias = torch.randn(100).to(dtype)
    x = torch.randn(shape).to(dtype)
    for relu in (False, True):
        y = ops.block_linear(x, packed, bias, relu=relu, backend=backend)
        assert y.shape == (*shape[:-1], 100)
        assert_matches(y, expected_linear(x, packed, bias, relu), dtype)


def test_block_linear_takes_non_contiguous_input():
    packed = pack(torch.randn(20, 16), torch.rand(20, 16) < 0.5)
    x = torch.randn(16, 9).T  # [9, 16] with a feature stride of 9
    assert not x.is_contiguous()
    assert_matches(
        ops.block_linear(x, packed), expected_linear(x, packed, None, False), torch.float32
    )


@st.composite
def conv_problems(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 5))
    cout = groups * draw(st.integers(1, 6))
    if draw(st.booleans()) and cin == cout:
        groups = cin  # depthwise
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    hw = [
        draw(st.integers(max(1, dilation[i] * (kernel[i] - 1) + 1 - 2 * padding[i]), 12))
        for i in range(2)
    ]
    return dict(
        n=draw(st.integers(1, 3)),
        cin=cin,
        cout=cout,
        groups=groups,
        kernel=kernel,
        hw=hw,
        stride=stride,
        padding=padding,
        dilation=dilation,
        structure=draw(st.sampled_from(["dense", "channel", "kernel", "group", "auto"])),
        kind=draw(st.sampled_from(["random", "channel", "kernel", "blocks", "mixed"])),
        density=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
        layout=draw(st.sampled_from(LAYOUTS)),
        bias=draw(st.booleans()),
        relu=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31)),
    )


@pytest.mark.parametrize(("backend", "dtype"), BACKEND_DTYPES, ids=str)
@given(p=conv_problems())
def test_block_conv2d_property(backend, dtype, p):
    gen = torch.Generator().manual_seed(p["seed"])
    packed = packed_conv(
        p["cout"],
        p["cin"],
        p["kernel"],
        p["groups"],
        dtype,
        p["structure"],
        p["density"],
        p["kind"],
        gen,
        backend,
    )
    x = conv_input((p["n"], p["cin"], *p["hw"]), dtype, p["layout"], gen)
    bias = torch.randn(p["cout"], generator=gen).to(dtype) if p["bias"] else None
    args = (bias, p["stride"], p["padding"], p["dilation"], p["relu"])
    y = ops.block_conv2d(x, packed, *args, backend=backend)
    assert y.is_contiguous(memory_format=output_memory_format(x))
    assert_matches(y, expected_conv(x, packed, *args), dtype)


@pytest.mark.parametrize(("backend", "dtype"), BACKEND_DTYPES, ids=str)
@given(
    lead=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    in_features=st.integers(1, 40),
    out_features=st.integers(1, 40),
    structure=st.sampled_from(["dense", "channel", "kernel", "group", "auto"]),
    density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    bias=st.booleans(),
    relu=st.booleans(),
    transposed=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_block_linear_property(
    backend,
    dtype,
    lead,
    in_features,
    out_features,
    structure,
    density,
    bias,
    relu,
    transposed,
    seed,
):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=gen).to(dtype)
    mask = torch.rand(weight.shape, generator=gen) < density
    packed = pack_for(backend, weight, mask, structure)
    if transposed:  # non-contiguous: features are not the innermost stride
        x = torch.randn(in_features, *lead, generator=gen).to(dtype).movedim(0, -1)
    else:
        x = torch.randn(*lead, in_features, generator=gen).to(dtype)
    b = torch.randn(out_features, generator=gen).to(dtype) if bias else None
    y = ops.block_linear(x, packed, b, relu=relu, backend=backend)
    assert_matches(y, expected_linear(x, packed, b, relu), dtype)


def test_all_zero_weight_outputs_bias():
    packed = pack(torch.randn(5, 3, 3, 3), torch.zeros(5, 3, 3, 3))
    bias = torch.randn(5)
    y = ops.block_conv2d(torch.randn(2, 3, 6, 6), packed, bias, padding=1)
    assert torch.equal(y, bias.view(1, 5, 1, 1).expand(2, 5, 6, 6))
    assert torch.equal(ops.block_conv2d(torch.randn(1, 3, 4, 4), packed), torch.zeros(1, 5, 2, 2))


def test_empty_batch():
    packed = packed_conv(4, 2, (3, 3), 1, torch.float32)
    assert ops.block_conv2d(torch.randn(0, 2, 5, 5), packed).shape == (0, 4, 3, 3)
    lin = pack(torch.randn(4, 3))
    assert ops.block_linear(torch.randn(0, 3), lin).shape == (0, 4)


@pytest.mark.parametrize("op", ["conv", "linear"])
def test_cpu_kernel_is_deterministic_across_thread_counts(op):
    if op == "conv":
        packed = packed_conv(
            64, 32, (3, 3), 1, torch.float32, structure="group", density=0.3, kind="random"
        )
        x = torch.randn(4, 32, 15, 15)
        run = lambda: ops.block_conv2d(x, packed, padding=1)  # noqa: E731
    else:  # one tile of positions: its rows are split among the threads
        weight = torch.randn(1024, 1024) * (torch.rand(1024, 1024) < 0.3)
        packed, x = pack(weight, structure="group"), torch.randn(8, 1024)
        run = lambda: ops.block_linear(x, packed)  # noqa: E731
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(max(2, threads))
        many = run()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)
    if op == "linear":
        torch.testing.assert_close(many, F.linear(x, weight), atol=1e-3, rtol=1e-4)


def test_cpu_phase_profile_counts_the_calls_inside_it_only():
    from sparsekit.backends import cpu

    packed = packed_conv(
        64, 32, (3, 3), 1, torch.float32, structure="group", density=0.3, kind="random"
    )
    x = torch.randn(2, 32, 6, 5)
    ops.block_conv2d(x, packed, padding=1)  # outside: not counted
    with cpu.phase_profile() as totals:
        for _ in range(3):
            ops.block_conv2d(x, packed, padding=1)
    ops.block_conv2d(x, packed, padding=1)
    assert totals["calls"] == 3 and totals["tap_calls"] == 0  # small blocks: the planes kernel
    assert (
        totals["pack_s"] > 0
        and totals["tiles_s"] > 0
        and totals["micro_s"] > 0
        and totals["store_s"] > 0
    )
    # Padded grid: 6 + 1 shared zero rows by 5 + 1 columns per image, in whole 128-position tiles.
    assert totals["grid_positions"] == 3 * 128 * -(-2 * 7 * 6 // 128)


def test_cpu_planes_kernel_puts_a_batch_of_16_innermost():
    """With 16 images, each output row (4 columns x 16 images) fills half a tile: a tile holds
    two rows, skipping their zero columns, and nothing is computed but the outputs (the images'
    padded planes would compute 400 positions)."""
    from sparsekit.backends import cpu

    packed = packed_conv(
        24, 40, (3, 3), 1, torch.float32, structure="group", density=0.3, kind="random"
    )
    x = torch.randn(16, 40, 4, 4).contiguous(memory_format=torch.channels_last)
    with cpu.phase_profile() as totals:
        y = ops.block_conv2d(x, packed, padding=1)
    assert totals["calls"] == 1 and totals["tap_calls"] == 0
    assert totals["grid_positions"] == 2 * 128
    assert_matches(y, expected_conv(x, packed, None, 1, 1, 1, False), torch.float32)


def kernel_sparse_weight(out_channels, in_channels, kernel, gen):
    """Whole kernels kept (about 30%), rows in runs of 1 to 4 sharing their kernels (blocks of 1-4
    rows), 15% of the kept kernels' taps zero: tap rows of every shape."""
    sizes = torch.randint(1, 5, (out_channels,), generator=gen)
    owner = torch.repeat_interleave(torch.arange(out_channels), sizes)[:out_channels]
    kept = (torch.rand(out_channels, in_channels, generator=gen) < 0.3)[owner]
    taps = torch.rand(out_channels, in_channels, *kernel, generator=gen) < 0.85
    weight = torch.randn(out_channels, in_channels, *kernel, generator=gen)
    return weight * kept[:, :, None, None] * taps


@pytest.mark.parametrize("batch", [16, 17, 32, 48])
@pytest.mark.parametrize(
    "kernel,stride,dilation",
    [((3, 3), 1, 1), ((3, 3), 2, 1), ((3, 3), 1, 2), ((1, 3), 1, 1), ((3, 5), 1, 1)],
    ids=["3x3", "stride2", "dilation2", "1x3", "3x5"],
)
@pytest.mark.parametrize("structure", ["kernel", "group", "unstructured"])
@pytest.mark.parametrize("size", [(8, 8), (5, 4)], ids=["8x8", "5x4"])
@pytest.mark.parametrize("channels", [24, 32])
def test_cpu_planes_kernel_reads_tap_row_windows_exactly(
    batch, kernel, stride, dilation, structure, size, channels
):
    """Kernel masks with 16 images or more load each tap row's reads once (AVX-512 CPUs): runs
    of every shape (whole rows, taps missing, stride phases apart, dilated, too wide for a window),
    blocks of 1-4 rows; output rows of half a tile (4 pixels of 16 images, 2 of 32), a tile
    holding two of them (an odd number of rows leaves the last tile half empty); 32 channels of
    16, 32 or 48 channels-last images are packed by input rows; against fp64."""
    from sparsekit.backends import cpu

    gen = torch.Generator().manual_seed(batch * 10 + kernel[1] + stride + dilation + size[0])
    weight = kernel_sparse_weight(40, channels, kernel, gen)
    if structure == "unstructured":
        weight *= torch.rand(weight.shape, generator=gen) < 0.4
    packed = pack(weight, structure="group" if structure == "unstructured" else structure)
    bias = torch.randn(40, generator=gen)
    padding = (kernel[0] // 2 * dilation, kernel[1] // 2 * dilation)
    fmt = torch.channels_last if batch % 2 else torch.contiguous_format
    if channels == 32:  # whole 16-channel blocks of channels-last points: packed by input rows
        fmt = torch.channels_last
    x = torch.randn(batch, channels, *size, generator=gen).contiguous(memory_format=fmt)
    with cpu.phase_profile() as totals:
        y = ops.block_conv2d(x, packed, bias, stride, padding, dilation, relu=True)
    assert totals["calls"] == 1 and totals["tap_calls"] == 0
    # windows: whole kernel rows of one stride phase within kMaxWindowShift vectors (a pixel is
    # batch / 16 of them), on x86-64-v4 CPUs; unstructured runs vary
    windowed = (
        cpu_has("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd")
        and batch % 16 == 0
        and stride == 1
        and kernel[1] <= 4
        and (kernel[1] - 1) * (batch // 16) * dilation <= 4
    )
    if structure != "unstructured":
        assert totals["window_calls"] == windowed
    if batch == 16 and size == (5, 4) and stride == 1:  # 3 tiles of two rows, none wasted
        assert totals["grid_positions"] == 3 * 128
    assert_matches(
        y, expected_conv(x, packed, bias, stride, padding, dilation, True), torch.float32
    )
    torch.set_num_threads(1)
    try:
        assert torch.equal(ops.block_conv2d(x, packed, bias, stride, padding, dilation, True), y)
    finally:
        torch.set_num_threads(THREADS)


def test_cpu_planes_kernel_splits_rows_among_threads_with_windows_and_half_rows():
    """Two tiles of two half rows (4x4 maps, 16 images) and enough work to run in parallel: each
    tile's rows are split among the threads (windows, row packing, channels_last), with the same
    result on one thread as on two, against fp64."""
    from sparsekit.backends import cpu

    gen = torch.Generator().manual_seed(0)
    packed = pack(kernel_sparse_weight(128, 64, (3, 3), gen), structure="kernel")
    x = torch.randn(16, 64, 4, 4, generator=gen).contiguous(memory_format=torch.channels_last)
    torch.set_num_threads(2)
    try:
        with cpu.phase_profile() as totals:
            y = ops.block_conv2d(x, packed, padding=1)
        torch.set_num_threads(1)
        assert torch.equal(ops.block_conv2d(x, packed, padding=1), y)
    finally:
        torch.set_num_threads(THREADS)
    assert totals["grid_positions"] == 2 * 128
    assert totals["window_calls"] == cpu_has("avx512f", "avx512bw", "avx512dq", "avx512vl")
    assert_matches(y, expected_conv(x, packed, None, 1, 1, 1, False), torch.float32)


def test_cpu_planes_kernel_reads_no_windows_for_lone_taps():
    """Unstructured masks' tap rows hold one column on average: no windows (their dispatch would
    cost more than the loads it saves)."""
    from sparsekit.backends import cpu

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 24, 3, 3, generator=gen) * (
        torch.rand(40, 24, 3, 3, generator=gen) < 0.1
    )
    x = torch.randn(16, 24, 8, 8, generator=gen)
    with cpu.phase_profile() as totals:
        y = ops.block_conv2d(x, pack(weight, structure="group"), padding=1)
    assert totals["calls"] == 1 and totals["window_calls"] == 0
    torch.testing.assert_close(y, F.conv2d(x, weight, padding=1), atol=1e-4, rtol=1e-4)


def tap_kernel_conv(out_channels=48, in_channels=16, gen=None):
    """A channel-pruned 3x3 conv (one block of 24 whole rows), which runs on the exact-position
    kernel."""
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=gen)
    weight[torch.randperm(out_channels, generator=gen)[: out_channels // 2]] = 0
    return pack(weight, structure="channel")


def test_cpu_exact_position_kernel_runs_at_exact_positions():
    from sparsekit.backends import cpu

    packed, x = tap_kernel_conv(), torch.randn(2, 16, 6, 5)
    with cpu.phase_profile() as totals:
        y = ops.block_conv2d(x, packed, padding=1)
    assert totals["calls"] == totals["tap_calls"] == 1
    assert totals["grid_positions"] == 24 * -(
        -2 * 6 * 5 // 24
    )  # whole 24-position tiles, no padding
    assert_matches(y, expected_conv(x, packed, None, 1, 1, 1, False), torch.float32)


def cpu_has(*flags: str) -> bool:
    """Whether this CPU has every one of ``flags`` (as Linux's /proc/cpuinfo names them)."""
    with open("/proc/cpuinfo") as info:
        line = next((entry for entry in info if entry.startswith("flags")), "")
    return set(flags) <= set(line.split())


@pytest.mark.parametrize(
    "memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"]
)
@pytest.mark.parametrize("kept", ["channels", "kernels"])
def test_cpu_exact_position_kernel_in_bf16(kept, memory_format):
    """bf16 on the exact-position kernel, which multiplies bf16 columns two at a time where the
    CPU can (AVX512-BF16): whole input channels (pairs of adjacent channels), or 3x3 kernels of
    scattered channels, an odd number of them (pairs of others, a lone column)."""
    from sparsekit.backends import cpu

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 21, 3, 3, generator=gen)
    if kept == "channels":
        weight[:, 5:12] = 0
    else:
        for rows in torch.arange(48).split(24):
            weight[rows[:, None], torch.randperm(21, generator=gen)[:8]] = 0  # 13 kept
    packed = pack(weight.bfloat16(), structure="kernel")
    bias = torch.randn(48, generator=gen).bfloat16()
    x = torch.randn(3, 21, 6, 7, generator=gen).bfloat16().contiguous(memory_format=memory_format)
    with cpu.phase_profile() as totals:
        y = ops.block_conv2d(x, packed, bias, padding=1, relu=True)
    assert totals["tap_calls"] == 1 and totals["pair_calls"] == cpu_has(
        "avx512_bf16", "avx512_vbmi2"
    )
    assert_matches(y, expected_conv(x, packed, bias, 1, 1, 1, True), torch.bfloat16)


@pytest.mark.parametrize("rows", [1, 3, 8, 10, 11, 12, 16, 24])
def test_cost_model_knows_which_cpu_kernel_runs_a_pack(rows):
    from sparsekit.backends import cpu
    from sparsekit.planners import cost
    from sparsekit.planners.blocks import Block

    weight = torch.zeros(48, 16, 3, 3)
    weight[:rows, :5] = 1  # one block of `rows` rows
    weight[24 : 24 + rows, 5:] = 1  # and another
    packed = pack(weight, structure="kernel")
    blocks = [Block(r, c) for r, c, _ in packed.blocks()]
    with cpu.phase_profile() as totals:
        ops.block_conv2d(torch.randn(1, 16, 4, 4), packed, padding=1)
    assert cost.runs_exact_position(blocks) == (totals["tap_calls"] == 1) == (rows >= 11)


def planes_kernel_conv(out_channels=48, in_channels=16, gen=None):
    """An unstructured 3x3 conv (lone rows), which runs on the planes kernel."""
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=gen)
    weight *= torch.rand(weight.shape, generator=gen) < 0.2
    return pack(weight, structure="group")


# Both CPU kernels keep a pack's weights in their own layout between calls.
CPU_KERNELS = [("taps", tap_kernel_conv), ("planes", planes_kernel_conv)]


def runs_on(kernel, packed, x):
    from sparsekit.backends import cpu

    with cpu.phase_profile() as totals:
        y = ops.block_conv2d(x, packed, padding=1)
    assert totals["tap_calls"] == (kernel == "taps")
    return y


@pytest.mark.parametrize("kernel,make", CPU_KERNELS)
def test_cpu_kernel_sees_weights_changed_in_place(kernel, make):
    # Writing to the pack (a version bump) must not leave the kernel computing with the old ones.
    packed, x = make(), torch.randn(2, 16, 7, 7).to(memory_format=torch.channels_last)
    before = runs_on(kernel, packed, x)
    assert_matches(before, expected_conv(x, packed, None, 1, 1, 1, False), torch.float32)
    packed.values.mul_(-2)
    after = ops.block_conv2d(x, packed, padding=1)
    assert_matches(after, expected_conv(x, packed, None, 1, 1, 1, False), torch.float32)
    torch.testing.assert_close(after, -2 * before)


@pytest.mark.parametrize("kernel,make", CPU_KERNELS)
def test_cpu_kernel_never_reuses_the_layout_of_a_freed_pack(kernel, make):
    # Packs made and freed one after the other, same shapes, often at the same addresses.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 5, 5, generator=gen)
    for _ in range(8):
        packed = make(gen=gen)
        assert_matches(
            runs_on(kernel, packed, x),
            expected_conv(x, packed, None, 1, 1, 1, False),
            torch.float32,
        )
        del packed


@pytest.mark.parametrize("kernel,make", CPU_KERNELS)
def test_cpu_kernel_runs_packs_made_in_inference_mode(kernel, make):
    x = torch.randn(2, 16, 5, 5)
    with torch.inference_mode():
        packed = make()
        y = runs_on(kernel, packed, x)
        packed.values.mul_(-2)  # inference tensors have no version: such packs are never kept
        y2 = ops.block_conv2d(x, packed, padding=1)
    torch.testing.assert_close(y2, -2 * y)


def test_cpu_planes_kernel_keeps_a_layout_per_input_size():
    # Its columns depend on the input's size: calls alternating between more sizes than a pack
    # keeps layouts for, each with the layout of its own size.
    gen = torch.Generator().manual_seed(0)
    packed = planes_kernel_conv(gen=gen)
    inputs = [
        torch.randn(n, 16, size, size, generator=gen)
        for n, size in [(1, 5), (16, 4), (3, 6), (17, 5), (2, 7), (1, 5)]
    ]
    for x in inputs + inputs[::-1]:
        assert_matches(
            runs_on("planes", packed, x),
            expected_conv(x, packed, None, 1, 1, 1, False),
            torch.float32,
        )


SAMPLES = [  # (input shape, weight shape, groups, dtype, bias, channels_last input)
    ((2, 6, 7, 7), (8, 6, 3, 3), 1, torch.float32, True, False),
    ((1, 4, 5, 5), (4, 2, 3, 3), 2, torch.bfloat16, False, False),
    ((3, 3, 4, 4), (5, 3, 1, 1), 1, torch.float16, True, False),
    ((2, 6, 5, 4), (8, 6, 3, 3), 1, torch.float32, True, True),
]


def backend_op(backend: str, op: str):
    return getattr(torch.ops.sparsekit, f"{backends.get(backend).op_prefix}{op}").default


def layout_args(backend: str, packed) -> tuple:
    """(layout, layout_ints) of ``backend``'s layout of ``packed``, as its ops take them."""
    layout = backends.get(backend).prepack(packed)
    return list(layout.tensors), list(layout.ints)


@pytest.mark.parametrize("sample", SAMPLES, ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck_block_conv2d(sample, backend):
    """The op's schema, fake (shape and strides) and autograd registration agree with its kernel."""
    x_shape, w_shape, groups, dtype, with_bias, channels_last = sample
    weight = torch.randn(w_shape).to(dtype)
    p = pack_for(backend, weight, torch.rand(w_shape) < 0.5, "group", groups)
    bias = torch.randn(w_shape[0]).to(dtype) if with_bias else None
    x = torch.randn(x_shape).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    args = (
        x,
        *layout_args(backend, p),
        w_shape[0],
        list(w_shape[2:]),
        [1, 1],
        [1, 1],
        [1, 1],
        groups,
        bias,
        True,
    )
    torch.library.opcheck(backend_op(backend, "block_conv2d"), args)


@pytest.mark.parametrize("x_shape", [(5, 12), (2, 3, 12), (12,)], ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck_block_linear(x_shape, backend):
    for dtype in backend_dtypes(backend):
        p = pack(torch.randn(9, 12).to(dtype), torch.rand(9, 12) < 0.5, structure="kernel")
        args = (
            torch.randn(x_shape).to(dtype),
            *layout_args(backend, p),
            9,
            torch.randn(9).to(dtype),
            False,
        )
        torch.library.opcheck(backend_op(backend, "block_linear"), args)


def test_the_cpu_kernels_are_registered_against_the_one_schema():
    """The extension registers no schema of its own: its kernels sit under the ops that
    backends/schema.py defines (the dispatcher checked their C++ signatures at load)."""
    for op in schema.SCHEMAS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsekit::{op}", "CPU")
        assert (
            str(getattr(torch.ops.sparsekit, op).default._schema)
            == f"sparsekit::{op}{schema.SCHEMAS[op]}"
        )
    assert torch._C._dispatch_has_kernel_for_dispatch_key("sparsekit::prepack", "CPU")


def test_torch_backend_runs_half_types_in_fp32_on_cpu():
    """torch 2.13's CPU fp16 conv2d crashes the process on a width-1 input padded along its
    width (this geometry); the torch backend computes half types in fp32 on CPU."""
    packed = pack(torch.randn(2, 2, 3, 1).half(), structure="kernel")
    x = torch.randn(2, 2, 5, 1).half()
    args = (None, (3, 2), (2, 1), (1, 2), False)
    assert_matches(
        ops.block_conv2d(x, packed, *args, backend="torch"),
        expected_conv(x, packed, *args),
        torch.float16,
    )


def test_torch_backend_refuses_blocks_of_partial_kernels():
    weight = torch.zeros(4, 3, 3, 3)
    weight[:, 0, 1, 1] = 1.0  # the centre tap only: the group plan stores one column per row
    packed = pack(weight, structure="group")
    assert not ops.supports(packed, "torch") and ops.supports(
        pack(weight, structure="kernel"), "torch"
    )
    x = torch.randn(1, 3, 5, 5)
    with pytest.raises(SparsekitError, match="whole kernels"):
        ops.block_conv2d(x, packed, backend="torch")
    with pytest.raises(SparsekitError, match="whole kernels"):  # no layout of it is made
        backends.get("torch").prepack(packed)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_ops_trace_under_torch_compile(backend):
    """The ops on layouts built beforehand (as layers hold them) trace whole; ``ops``' functions
    build a layout per call and are for eager use."""
    conv = packed_conv(8, 4, (3, 3), 1, torch.float32, backend=backend)
    lin = pack(torch.randn(6, 8 * 3 * 3), torch.rand(6, 72) < 0.5)
    chosen = backends.get(backend)
    conv_layout, lin_layout = chosen.prepack(conv), chosen.prepack(lin)

    def f(x):
        y = chosen.block_conv2d(x, conv_layout, conv, None, (2, 2), (1, 1), (1, 1), True)
        return chosen.block_linear(y.flatten(1), lin_layout, lin, None, False)

    x = torch.randn(2, 4, 6, 6)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    expected = ops.block_linear(
        ops.block_conv2d(x, conv, None, 2, 1, relu=True, backend=backend).flatten(1),
        lin,
        backend=backend,
    )
    assert torch.equal(compiled(x), f(x)) and torch.equal(f(x), expected)


def test_dense_plan_is_within_10x_of_dense_conv():
    """The slowest plan (every weight kept) on a mid-size layer stays within 10x of oneDNN."""
    weight = torch.randn(128, 128, 3, 3)
    packed = pack(weight, structure="dense")
    x = torch.randn(8, 128, 16, 16)
    threads = torch.get_num_threads()
    dense = Timer(
        "F.conv2d(x, w, None, 1, 1)", globals=dict(F=F, x=x, w=weight), num_threads=threads
    )
    sparse = Timer(
        "ops.block_conv2d(x, p, None, 1, 1)",
        globals=dict(ops=ops, x=x, p=packed),
        num_threads=threads,
    )
    ratio = (
        sparse.blocked_autorange(min_run_time=0.5).median
        / dense.blocked_autorange(min_run_time=0.5).median
    )
    assert ratio < 10, f"dense-plan block_conv2d is {ratio:.1f}x slower than F.conv2d"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p, x: ops.block_conv2d(x.double(), p), "dtype"),
        (lambda p, x: ops.block_conv2d(x[:, :2], p), "input shape"),
        (lambda p, x: ops.block_conv2d(x[..., :1, :1], p), "smaller than the dilated kernel"),
        (lambda p, x: ops.block_conv2d(x, p, stride=0), "stride"),
        (lambda p, x: ops.block_conv2d(x, p, padding=(1, 2, 3)), "padding"),
        (lambda p, x: ops.block_conv2d(x, p, torch.randn(3)), "bias"),
        (lambda p, x: ops.block_conv2d(x, p, backend="fpga"), "backend"),
        (lambda p, x: ops.block_conv2d(x, "weight"), "PackedWeight"),
        (lambda p, x: ops.block_linear(x, p), "block_conv2d"),
        (lambda p, x: ops.block_linear(torch.randn(2, 5), pack(torch.randn(3, 4))), "features"),
        (lambda p, x: ops.block_conv2d(x, pack(torch.randn(3, 4))), "block_linear"),
    ],
)
def test_bad_op_arguments_are_sparsekit_errors(call, message):
    packed = packed_conv(4, 3, (3, 3), 1, torch.float32)
    with pytest.raises(SparsekitError, match=message):
        call(packed, torch.randn(2, 3, 5, 5))


def test_malformed_packs_get_no_layout():
    """The index is checked once, when a layout is built, by the Python layers and by the raw
    prepack op alike: nothing a kernel reads from its layout is out of bounds."""
    p = packed_conv(4, 3, (3, 3), 1, torch.float32, density=1.0, kind="random")
    rows = p.row_idx.clone()
    rows[0] = 4  # out of range
    geometry = (4, 3, [3, 3], 1)
    with pytest.raises(ValueError, match="row index out of range"):
        torch.ops.sparsekit.prepack(p.values, rows, p.col_idx, p.block_ptr, *geometry)
    with pytest.raises(ValueError, match="offsets"):
        torch.ops.sparsekit.prepack(p.values[:-1], p.row_idx, p.col_idx, p.block_ptr, *geometry)
    with pytest.raises(SparsekitError, match="row index lies outside"):
        dataclasses.replace(p, row_idx=rows).check()
    with pytest.raises(SparsekitError, match="do not end at the lengths"):
        ops.block_conv2d(torch.randn(1, 3, 5, 5), dataclasses.replace(p, values=p.values[:-1]))


def test_raw_ops_refuse_a_layout_of_another_layer():
    """A call checks that its layout was built for its layer and dtype, in O(1)."""
    p = packed_conv(4, 3, (3, 3), 1, torch.float32)
    layout, ints = layout_args("cpu", p)
    x = torch.randn(1, 3, 5, 5)
    run = lambda x, out, layout: torch.ops.sparsekit.block_conv2d(  # noqa: E731
        x, layout, ints, out, [3, 3], [1, 1], [0, 0], [1, 1], 1, None, False
    )
    assert run(x, 4, layout).shape == (1, 4, 3, 3)
    with pytest.raises(ValueError, match="another layer"):
        run(x, 5, layout)
    with pytest.raises(ValueError, match="another dtype"):
        run(x.bfloat16(), 4, layout)
    with pytest.raises(ValueError, match="not a CPU layout"):
        run(x, 4, [torch.zeros(256, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="damaged"):
        run(x, 4, [layout[0][:-64].clone()])


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, "reference"])
def test_ops_have_no_gradient(backend):
    packed = packed_conv(4, 3, (3, 3), 1, torch.float32, backend=backend)
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    y = ops.block_conv2d(x, packed, backend=backend)
    assert y.requires_grad  # a call recording a gradient is kept in the graph, then refused
    # (the C++ Autograd kernel raises ValueError, of which SparsekitError is one)
    with pytest.raises(ValueError, match="block_conv2d: sparsekit ops are .* no gradient"):
        y.sum().backward()
    with torch.no_grad():
        assert ops.block_conv2d(x, packed, backend=backend).grad_fn is None

"""The Triton backend: on a GPU every dtype and shape; without one, Triton's interpreter on tiny
shapes in fp32 and fp16 (conftest sets TRITON_INTERPRET=1)."""

import pytest
import torch
from sparsekit.triton_kernels import block_conv, row_tiles
from torch import nn

import sparsekit
from sparsekit import PackedWeight, SparsekitError, backends, ops, pack, zoo
from sparsekit.geometry import output_memory_format

from .helpers import (
    CONV_CASES,
    LAYOUTS,
    assert_matches,
    conv_input,
    expected_conv,
    expected_linear,
    packed_conv,
)

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
UNAVAILABLE = backends.get("triton").unavailable(torch.device(DEVICE))
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"backend 'triton' {UNAVAILABLE}")
DTYPES = [torch.float32, torch.float16] + [torch.bfloat16] * GPU  # the interpreter has no bf16


def on_device(packed: PackedWeight) -> PackedWeight:
    return packed.to(DEVICE)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_block_conv2d_matches_conv2d(case, dtype, layout):
    n, cin, cout, hw, kernel, stride, padding, dilation, groups = case
    packed = packed_conv(cout, cin, kernel, groups, dtype)
    x = conv_input((n, cin, *hw), dtype, layout)
    bias = torch.randn(cout).to(dtype)
    for relu in (False, True):
        y = ops.block_conv2d(
            x.to(DEVICE),
            on_device(packed),
            bias.to(DEVICE),
            stride,
            padding,
            dilation,
            relu=relu,
            backend="triton",
        )
        assert y.is_contiguous(memory_format=output_memory_format(x)) and y.device.type == DEVICE
        assert_matches(
            y.cpu(), expected_conv(x, packed, bias, stride, padding, dilation, relu), dtype
        )


@pytest.mark.parametrize("shape", [(33,), (1, 33), (7, 33), (2, 3, 33)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("structure", ["group", "channel", "dense"])
def test_block_linear_matches_linear(shape, dtype, structure):
    weight = torch.randn(100, 33).to(dtype)
    packed = pack(weight, torch.rand(100, 33) < 0.3, structure=structure)
    bias = torch.randn(100).to(dtype)
    x = torch.randn(shape).to(dtype)
    for relu in (False, True):
        y = ops.block_linear(
            x.to(DEVICE), on_device(packed), bias.to(DEVICE), relu, backend="triton"
        )
        assert y.shape == (*shape[:-1], 100)
        assert_matches(y.cpu(), expected_linear(x, packed, bias, relu), dtype)


def overlapping_blocks(dtype) -> PackedWeight:
    """Three blocks over 6 rows of a [6, 2, 3, 3] weight: rows 1 and 2 lie in two blocks, row 4
    in three, row 5 in none."""
    blocks = [([0, 1, 2, 4], [0, 4, 9]), ([1, 2, 4], [1, 17]), ([3, 4], [2, 3, 5, 8, 10])]
    rows = [torch.tensor(r, dtype=torch.int32) for r, _ in blocks]
    cols = [torch.tensor(c, dtype=torch.int32) for _, c in blocks]
    sizes = torch.tensor([[len(r), len(c), len(r) * len(c)] for r, c in blocks])
    block_ptr = torch.zeros(3, len(blocks) + 1, dtype=torch.int64)
    block_ptr[:, 1:] = sizes.T.cumsum(1)
    values = torch.randn(int(block_ptr[2, -1])).to(dtype)
    return PackedWeight((6, 2, 3, 3), 1, values, torch.cat(rows), torch.cat(cols), block_ptr)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_in_several_blocks_add_up_deterministically(dtype):
    packed = overlapping_blocks(dtype)
    x = torch.randn(2, 2, 5, 6).to(dtype)
    bias = torch.randn(6).to(dtype)

    def run():
        return ops.block_conv2d(
            x.to(DEVICE), on_device(packed), bias.to(DEVICE), 1, 1, relu=True, backend="triton"
        )

    first = run()
    assert_matches(first.cpu(), expected_conv(x, packed, bias, 1, 1, 1, True), dtype)
    assert torch.equal(first, run())


def unpack_tiles(tiles, out_channels: int, in_channels: int, kernel_area: int) -> torch.Tensor:
    """The dense ``[out, in * kernel_area]`` weight (all groups' channels) a layout holds."""
    dense = torch.zeros(out_channels, in_channels * kernel_area, dtype=torch.float64)
    ptr = tiles.tile_ptr.tolist()
    for t, rows in enumerate(tiles.tile_rows.tolist()):
        for kt in range(ptr[t], ptr[t + 1]):
            for k, channel in enumerate(tiles.channels[kt].tolist()):
                for j, row in enumerate(rows):
                    if channel < 0 or row < 0:
                        assert tiles.weights[kt, k, j] == 0
                        continue
                    dense[row, channel * kernel_area + int(tiles.taps[kt])] += float(
                        tiles.weights[kt, k, j]
                    )
    return dense


def grouped_dense(packed: PackedWeight) -> torch.Tensor:
    """``unpack(packed)`` with every group's columns placed at its own input channels."""
    weight = sparsekit.unpack(packed).double()
    out, per_group = weight.shape[0], weight[0].numel()
    dense = torch.zeros(out, per_group * packed.groups, dtype=torch.float64)
    for g in range(packed.groups):
        rows = slice(g * out // packed.groups, (g + 1) * out // packed.groups)
        dense[rows, g * per_group : (g + 1) * per_group] = weight[rows].reshape(-1, per_group)
    return dense


@pytest.mark.parametrize(
    "case",
    [
        ("group", 40, 16, 1),
        ("channel", 100, 64, 1),
        ("kernel", 20, 8, 1),
        ("dense", 33, 5, 1),
        ("group", 24, 12, 3),
        ("overlapping", 6, 2, 1),
    ],
    ids=str,
)
def test_row_tiles_hold_the_packed_weight_once(case):
    structure, cout, cin, groups = case
    packed = (
        overlapping_blocks(torch.float32)
        if structure == "overlapping"
        else packed_conv(cout, cin, (3, 3), groups, torch.float32, structure=structure)
    )
    tiles = row_tiles.build(
        packed.values,
        packed.row_idx,
        packed.col_idx,
        packed.block_ptr,
        cout,
        packed.in_features,
        groups,
        9,
    )
    assert torch.equal(unpack_tiles(tiles, cout, packed.in_features, 9), grouped_dense(packed))
    rows = tiles.tile_rows[tiles.tile_rows >= 0]
    assert sorted(rows.tolist()) == list(range(cout))  # every row in one tile
    k_tiles = int(tiles.tile_ptr[-1])
    assert tiles.weights.shape == (k_tiles, row_tiles.K_TILE, tiles.rows)
    # the sentinel the kernel may prefetch past a row tile's last K-tile: channels all padding
    assert tiles.taps.shape == (k_tiles + 1,) and tiles.channels.shape == (
        k_tiles + 1,
        row_tiles.K_TILE,
    )
    assert tiles.channels[-1].eq(-1).all()


def test_whole_channel_runs_load_consecutive_channels():
    dense = packed_conv(40, 64, (3, 3), 1, torch.float32, structure="channel", density=1.0)
    partial = packed_conv(40, 64, (3, 3), 1, torch.float32, structure="group")
    build = lambda p: row_tiles.build(p.values, p.row_idx, p.col_idx, p.block_ptr, 40, 64, 1, 9)  # noqa: E731
    assert build(dense).consecutive and not build(partial).consecutive


@pytest.mark.parametrize("consecutive", [True, False])
@pytest.mark.parametrize("cout, rows", [(20, 32), (40, 64), (100, 128)])
def test_row_tile_heights_and_load_paths(consecutive, cout, rows):
    """Each tile height the interpreter can choose, on both load paths (one block over all 64
    input channels, or over all but two), channels_last."""
    weight = torch.randn(cout, 64, 3, 3)
    mask = torch.ones_like(weight)
    if not consecutive:
        mask[:, [5, 40]] = 0
    packed = pack(weight, mask, structure="channel")
    tensors, ints = block_conv.layout(
        packed.values, packed.row_idx, packed.col_idx, packed.block_ptr, cout, 64, [3, 3], 1
    )
    tiles = row_tiles.RowTiles.of(tensors, bool(ints[-1]))
    assert tiles.consecutive == consecutive
    if block_conv.INTERPRETED:  # on a GPU, strict fp32 holds 32-row tiles only
        assert tiles.rows == rows
    x = conv_input((2, 64, 5, 4), torch.float32, "channels_last")
    bias = torch.randn(cout)
    y = ops.block_conv2d(
        x.to(DEVICE), on_device(packed), bias.to(DEVICE), 1, 1, relu=True, backend="triton"
    )
    assert_matches(y.cpu(), expected_conv(x, packed, bias, 1, 1, 1, True), torch.float32)


def test_offsets_past_2_to_the_31_elements():
    """Images of more than 2**31 elements each, fp16 (on CPU, pages never written stay
    unallocated; on a GPU it takes 8 GiB): a
    stride of the width minus one reads both ends of the rows, the second end and image past
    2**31 elements."""
    width = 2**27 + 1
    x = torch.empty(
        2, 16, 1, width, dtype=torch.float16, device=DEVICE, memory_format=torch.channels_last
    )
    assert x[0].numel() > 2**31
    ends = torch.randn(2, 16, 1, 2).half()
    x[..., 0], x[..., -1] = ends[..., 0].to(DEVICE), ends[..., 1].to(DEVICE)
    packed = packed_conv(8, 16, (1, 1), 1, torch.float16, structure="group")
    y = ops.block_conv2d(x, on_device(packed), stride=(1, width - 1), backend="triton")
    assert y.shape == (2, 8, 1, 2)
    assert_matches(y.cpu(), expected_conv(ends, packed, None, 1, 0, 1, False), torch.float16)


def test_huge_batches_keep_shapes_and_launch_bounds():
    from torch._subclasses.fake_tensor import FakeTensorMode

    packed = packed_conv(64, 32, (3, 3), 1, torch.float32)
    layout = backends.get("triton").prepack(packed)
    with FakeTensorMode() as mode:
        x = torch.empty(2**16, 32, 224, 224).to(memory_format=torch.channels_last)
        tensors = [mode.from_tensor(t) for t in layout.tensors]
        y = torch.ops.sparsekit.triton_block_conv2d(
            x, tensors, list(layout.ints), 64, [3, 3], [1, 1], [1, 1], [1, 1], 1, None, False
        )
        assert y.shape == (2**16, 64, 224, 224) and y.is_contiguous(
            memory_format=torch.channels_last
        )
    positions = 2**16 * 224 * 224  # past 2**31: the kernel's position index is int64
    assert block_conv.size_class(positions) == block_conv.size_class(2 * positions) == 12
    assert block_conv.size_class(64) == 0 < block_conv.size_class(65)


def test_all_zero_weight_outputs_bias():
    packed = on_device(pack(torch.randn(5, 3, 3, 3), torch.zeros(5, 3, 3, 3)))
    bias = torch.randn(5, device=DEVICE)
    y = ops.block_conv2d(
        torch.randn(2, 3, 6, 6, device=DEVICE), packed, bias, padding=1, relu=True, backend="triton"
    )
    assert torch.equal(y, bias.relu().view(1, 5, 1, 1).expand(2, 5, 6, 6))


def test_empty_batch():
    packed = on_device(packed_conv(4, 2, (3, 3), 1, torch.float32))
    assert ops.block_conv2d(
        torch.randn(0, 2, 5, 5, device=DEVICE), packed, backend="triton"
    ).shape == (0, 4, 3, 3)


@pytest.mark.parametrize("op", ["conv", "conv channels_last", "linear"])
def test_opcheck(op):
    if op.startswith("conv"):
        p = on_device(packed_conv(6, 4, (3, 3), 2, torch.float32))
        x = torch.randn(2, 4, 5, 5, device=DEVICE)
        if op.endswith("channels_last"):
            x = x.to(memory_format=torch.channels_last)
        layout = backends.get("triton").prepack(p)
        args = (
            x,
            list(layout.tensors),
            list(layout.ints),
            6,
            [3, 3],
            [1, 1],
            [1, 1],
            [1, 1],
            2,
            torch.randn(6, device=DEVICE),
            True,
        )
        torch.library.opcheck(torch.ops.sparsekit.triton_block_conv2d.default, args)
    else:
        p = on_device(pack(torch.randn(9, 12), torch.rand(9, 12) < 0.5, structure="group"))
        layout = backends.get("triton").prepack(p)
        args = (
            torch.randn(2, 3, 12, device=DEVICE),
            list(layout.tensors),
            list(layout.ints),
            9,
            None,
            False,
        )
        torch.library.opcheck(torch.ops.sparsekit.triton_block_linear.default, args)


def test_traces_under_torch_compile():
    weight = torch.randn(8, 4, 3, 3, device=DEVICE) * (torch.rand(8, 4, 3, 3, device=DEVICE) < 0.5)
    layer = sparsekit.SparseConv2d.from_weight(
        weight, stride=2, padding=1, relu=True, backend="triton"
    )
    x = torch.randn(2, 4, 6, 6, device=DEVICE)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), layer(x))


def test_a_chosen_config_is_launched_directly_on_later_calls(monkeypatch):
    tuner = block_conv.tile_conv_kernel
    monkeypatch.setattr(block_conv, "_CHOSEN", {})
    monkeypatch.setattr(block_conv, "DIRECT_LAUNCH", True)  # on a GPU too: this test clears it
    tuned, run = [], tuner.run
    monkeypatch.setattr(tuner, "run", lambda *a, **k: tuned.append(1) or run(*a, **k))
    weight = torch.randn(8, 4, 3, 3, device=DEVICE) * (torch.rand(8, 4, 3, 3, device=DEVICE) < 0.5)
    layer = sparsekit.SparseConv2d.from_weight(weight, padding=1, backend="triton")
    x = torch.randn(2, 4, 6, 6, device=DEVICE)
    first = layer(x)
    assert tuned == [1] and len(block_conv._CHOSEN) == 1
    assert torch.equal(layer(x), first) and tuned == [1]  # launched past the autotuner
    layer(x.contiguous(memory_format=torch.channels_last))
    assert tuned == [1, 1] and len(block_conv._CHOSEN) == 2  # another key: tuned for itself


@pytest.mark.skipif(not GPU, reason="a layer's device matters where the weight is not on the CPU")
def test_layers_and_their_twins_live_on_the_weights_device():
    weight = torch.randn(8, 8, 3, 3, device=DEVICE) * (torch.rand(8, 8, 3, 3, device=DEVICE) < 0.3)
    layer = sparsekit.SparseConv2d.from_weight(weight, padding=1, backend="triton")
    twin = layer.with_backend("reference")
    assert all(t.device == weight.device for t in [*layer.buffers(), *twin.buffers()])
    x = torch.randn(2, 8, 5, 5, device=DEVICE)
    assert torch.allclose(layer(x), twin(x), atol=1e-3, rtol=1e-3)


def test_compile_with_the_triton_backend_is_verified(monkeypatch):
    # triton has no cost model (its plans are chosen by measurement): one that always prefers
    # the pack makes compile keep it without timing the interpreter
    monkeypatch.setattr(backends.get("triton"), "cost", lambda packed: 0.5)
    model = (
        nn.Sequential(
            nn.Conv2d(3, 256, 3, padding=1),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Conv2d(256, 256, 3),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(256 * 2 * 2, 10),
        )
        .eval()
        .to(DEVICE)
    )
    x = torch.randn(2, 3, 4, 4, device=DEVICE)
    mask = torch.zeros(256, 256, 3, 3, device=DEVICE)
    mask[::2] = 1  # half the output channels
    zoo.calibrate_batchnorm(model, [torch.randn(8, 3, 4, 4, device=DEVICE)], {"3.weight": mask})
    compiled = sparsekit.compile(model, {"3.weight": mask}, x, backend="triton", measure=False)
    report = compiled.sparsekit_report
    assert report.ok and report.discriminating
    assert any(layer.backend == "triton" for layer in report.layers)


@pytest.mark.skipif(GPU, reason="the device check is for machines without a GPU")
def test_cpu_tensors_need_the_interpreter(monkeypatch):
    from sparsekit.triton_kernels import block_conv

    monkeypatch.setattr(block_conv, "INTERPRETED", False)
    with pytest.raises(SparsekitError, match="CUDA tensors"):
        ops.block_conv2d(
            torch.randn(1, 4, 5, 5), packed_conv(6, 4, (3, 3), 1, torch.float32), backend="triton"
        )


@pytest.mark.skipif(not GPU, reason="TF32 exists on GPUs only")
def test_fp32_is_strict_unless_tf32_is_allowed():
    packed = on_device(packed_conv(64, 64, (3, 3), 1, torch.float32, density=0.8, kind="random"))
    x = torch.randn(8, 64, 16, 16, device=DEVICE)
    exact = expected_conv(x.cpu(), packed.to("cpu"), None, 1, 1, 1, False)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        strict = (
            (ops.block_conv2d(x, packed, padding=1, backend="triton").cpu().double() - exact)
            .abs()
            .max()
        )
        torch.set_float32_matmul_precision("high")
        tf32 = (
            (ops.block_conv2d(x, packed, padding=1, backend="triton").cpu().double() - exact)
            .abs()
            .max()
        )
    finally:
        torch.set_float32_matmul_precision(previous)
    assert strict < 1e-3 < tf32

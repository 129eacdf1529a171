"""Channel dataflow compaction (compiler.compaction): exact against the dense masked model on
networks with channel masks, for every geometry and join the pass handles, and correct (full
width) where it stops."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import fx, nn

import sparsekit
from sparsekit import tolerance, zoo
from sparsekit.compiler.batchnorm import fold_batchnorms
from sparsekit.compiler.compaction import compact
from sparsekit.compiler.reference import dense_masked_copy
from sparsekit.masks import collect_masks
from sparsekit.transforms import refill_masks
from sparsekit.transforms.str_bn import bn_channel_mask, convert_to_str_bn

# (dtype, atol, rtol) of the compacted model against the dense masked one computed in fp64: the
# compaction sums fewer products and folds constants in fp64, so only rounding differs
CASES = [(torch.float64, 1e-10, 1e-10), (torch.float32, None, None)]


def channel_masks(model: nn.Module, keep: float, gen) -> dict:
    """Masks pruning whole output channels of every conv and linear but the first conv and the
    last layer (as the papers leave them), keeping a random ``keep`` share of each."""
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    masks = {}
    for name in layers[1:-1]:
        weight = model.get_submodule(name).weight
        rows = torch.rand(weight.shape[0], generator=gen) < keep
        rows[torch.randint(weight.shape[0], (1,), generator=gen)] = True
        masks[f"{name}.weight"] = rows.view(-1, *[1] * (weight.dim() - 1)).expand_as(weight) * 1.0
    return masks


def randomise_batchnorms(model: nn.Module, gen) -> nn.Module:
    """BatchNorm affines and statistics far from their defaults: a pruned channel then carries a
    non-zero constant (its folded bias through the activation) that the compaction must keep."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=gen) + 0.5
            m.bias.data = torch.rand(c, generator=gen) - 0.3
            m.running_mean = torch.randn(c, generator=gen) * 0.1
            m.running_var = torch.rand(c, generator=gen) + 0.5
    return model.eval()


def compacted(model, masks, x, dtype=torch.float32):
    """(the dense masked reference, the compacted model: both in ``dtype``)."""
    reference = dense_masked_copy(model, collect_masks(model, masks)).to(dtype)
    folded = fold_batchnorms(dense_masked_copy(reference, {}))
    return reference, compact(folded, (x.to(dtype),))


def assert_exact(reference, result, x, dtype, atol=None, rtol=None):
    with torch.inference_mode():
        expected, actual = reference(x.to(dtype)), result.module(x.to(dtype))
    assert actual.shape == expected.shape
    if atol is None:
        reductions = [row["reduction"] for row in result.layers.values()]
        bound = tolerance.bound(expected, reductions=reductions)
    else:
        bound = atol + rtol * expected.abs().max().item()
    error = tolerance.max_error(actual, expected)
    assert error <= bound, f"max error {error:.3e} > {bound:.3e}"
    return expected


def narrowing(result) -> float:
    """Dense MACs over those the compacted layers run."""
    rows = result.layers.values()
    return sum(r["dense_macs"] for r in rows) / sum(r["macs"] for r in rows)


# ---- the zoo's networks ----


@pytest.mark.parametrize(("dtype", "atol", "rtol"), CASES)
@pytest.mark.parametrize(
    ("name", "size"),
    [("resnet18", 32), ("vgg16_bn", 32), ("mobilenet_v1", 32), ("resnet50", 64)],
)
def test_zoo_networks_with_refill_masks_are_exact(name, size, dtype, atol, rtol):
    gen = torch.Generator().manual_seed(0)
    model = randomise_batchnorms(zoo.create(name), gen)
    channels = zoo.INPUT_SHAPES[name][0]
    x = torch.randn(4, channels, size, size, generator=gen)
    # refill at 80% from random unstructured masks: whole channels, as Structure-LTH keeps them
    # (MobileNet's depthwise convs keep their channels: their pointwise convs choose them)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1][1:]
    unstructured = {
        f"{n}.weight": (torch.rand(model.get_submodule(n).weight.shape, generator=gen) > 0.8) * 1.0
        for n in convs
    }
    masks = refill_masks(model, unstructured)
    zoo.calibrate_batchnorm(model, [torch.randn(16, channels, size, size, generator=gen)], masks)
    reference, result = compacted(model, masks, x, dtype)
    expected = assert_exact(reference, result, x, dtype, atol, rtol)
    assert narrowing(result) > 1.2 * _mask_limit(result)  # live inputs narrow layers too
    assert tolerance.batch_spread(expected) > 100 * tolerance.bound(expected)
    # another batch and, where the model allows, another size than the example's
    other = 48 if name not in ("vgg16_bn",) else 32
    fresh = torch.randn(3, channels, other, other, generator=gen)
    assert_exact(reference, result, fresh, dtype, atol, rtol)


def _mask_limit(result) -> float:
    rows = result.layers.values()
    return sum(r["dense_macs"] for r in rows) / sum(r["mask_macs"] for r in rows)


def test_the_constants_of_pruned_channels_matter():
    """The zoo test above can fail: with the constants pruned channels carry dropped (as
    compactions that remove channels do), the output differs far beyond the bound."""
    gen = torch.Generator().manual_seed(1)
    model = randomise_batchnorms(zoo.create("resnet18"), gen)
    x = torch.randn(4, 3, 32, 32, generator=gen)
    masks = channel_masks(model, 0.3, gen)
    reference, result = compacted(model, masks, x)
    expected = assert_exact(reference, result, x, torch.float32)
    dropped = dense_masked_copy(reference, {})
    for conv_name, bn_name in sparsekit.graph.conv_bn_pairs(dropped):
        kept = dropped.get_submodule(conv_name).weight.flatten(1).ne(0).any(1)
        bn = dropped.get_submodule(bn_name)
        with torch.no_grad():  # the pruned channels' BatchNorm output forced to 0
            bn.bias[~kept] = 0
            bn.running_mean[~kept] = 0
    with torch.inference_mode():
        wrong = dropped(x)
    assert tolerance.max_error(wrong, expected) > 100 * tolerance.bound(expected)


def test_str_bn_masks_are_exact():
    gen = torch.Generator().manual_seed(2)
    model = randomise_batchnorms(zoo.create("resnet18"), gen)
    convert_to_str_bn(model)
    for m in model.modules():
        if hasattr(m, "threshold"):  # about 60% of the gammas under the threshold
            m.weight.data = torch.rand(m.num_features, generator=gen) + 0.3
            m.threshold.data = torch.tensor(0.5)
    masks = bn_channel_mask(model)
    assert masks
    x = torch.randn(4, 3, 32, 32, generator=gen)
    reference, result = compacted(model, masks, x)
    assert_exact(reference, result, x, torch.float32)
    assert narrowing(result) > 1.2 * _mask_limit(result)


# ---- geometry: padding modes, strides, dilations, groups ----


class Chain(nn.Module):
    """conv-bn-relu, a conv of the geometry under test, bn-relu, a 1x1 conv, pooled."""

    def __init__(self, **conv):
        super().__init__()
        mid = conv.pop("mid", 12)
        groups = conv.get("groups", 1)
        self.conv1, self.bn1 = nn.Conv2d(3, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid)
        out = conv.pop("out", mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, out, bias=groups > 1, **conv), nn.BatchNorm2d(out)
        self.conv3 = nn.Conv2d(out, 7, 1)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.conv3(x).mean((2, 3))


GEOMETRIES = [
    {"kernel_size": 3, "padding": 1},
    {"kernel_size": 3, "padding": 2, "dilation": 2},
    {"kernel_size": 3, "padding": 1, "stride": 2},
    {"kernel_size": (3, 5), "padding": (0, 2), "stride": (2, 1)},
    {"kernel_size": 3, "padding": "same"},
    {"kernel_size": 3, "padding": "valid"},
    *[{"kernel_size": 3, "padding": 1, "padding_mode": m} for m in ("reflect", "replicate")],
    {"kernel_size": 3, "padding": 2, "padding_mode": "circular"},
    {"kernel_size": 3, "padding": 1, "groups": 12},  # depthwise
    {"kernel_size": 3, "padding": 1, "groups": 12, "out": 24, "stride": 2},  # multiplier 2
    {"kernel_size": 3, "padding": 1, "groups": 4},  # groups of 3 channels: not compacted
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: str(g))
@pytest.mark.parametrize(("dtype", "atol", "rtol"), CASES)
def test_every_geometry_is_exact(geometry, dtype, atol, rtol):
    gen = torch.Generator().manual_seed(3)
    model = randomise_batchnorms(Chain(**dict(geometry)), gen)
    masks = channel_masks(model, 0.4, gen)
    rows = torch.rand(model.conv1.out_channels, generator=gen) < 0.4
    rows[0] = True
    masks["conv1.weight"] = rows.view(-1, 1, 1, 1).expand_as(model.conv1.weight) * 1.0
    x = torch.randn(2, 3, 11, 13, generator=gen)
    reference, result = compacted(model, masks, x, dtype)
    assert_exact(reference, result, x, dtype, atol, rtol)
    assert_exact(reference, result, torch.randn(3, 3, 14, 9, generator=gen), dtype, atol, rtol)
    if geometry.get("groups", 1) not in (1, 12):
        assert "conv2" in result.stopped  # a grouped conv takes its input at full width


def test_a_depthwise_conv_of_a_pruned_channel_disappears():
    """MobileNet's pattern: a pruned expansion channel leaves the depthwise conv after it (its
    constant input contributes through the border only where zero padding makes it differ)."""
    gen = torch.Generator().manual_seed(4)
    model = randomise_batchnorms(Chain(kernel_size=3, padding=0, groups=12), gen)
    masks = channel_masks(model, 0.3, gen)
    masks["conv2.weight"] = torch.ones_like(model.conv2.weight)  # depthwise dense
    rows = torch.rand(12, generator=gen) < 0.3
    rows[0] = True
    masks["conv1.weight"] = rows.view(-1, 1, 1, 1).expand_as(model.conv1.weight) * 1.0
    x = torch.randn(2, 3, 10, 10, generator=gen)
    reference, result = compacted(model, masks, x)
    assert_exact(reference, result, x, torch.float32)
    kept = int(masks["conv1.weight"].flatten(1).any(1).sum())
    assert result.layers["conv2"]["out"] == [kept, 12]


# ---- joins and ops the pass reads, and ops where it stops ----


class Joins(nn.Module):
    """Residual adds of branches pruned differently, a concat, pools, flatten into a linear
    (4 features per channel), an SE gate and a count_include_pad average pooling (stops)."""

    def __init__(self, se: bool = True):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.a, self.bna = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.b, self.bnb = nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16)
        self.c = nn.Conv2d(32, 12, 3, padding=1, stride=2)
        self.gate = nn.Conv2d(12, 12, 1)
        self.pool = nn.AvgPool2d(3, 1, padding=1, count_include_pad=True)
        self.head = nn.Linear(12 * 4, 5)
        self.se = se

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bna(self.a(x)) + x)  # live sets of the two sides differ
        z = self.bnb(self.b(y))
        z = z + y * 0.5
        w = F.relu(self.c(torch.cat([y, z], 1)))
        if self.se:
            w = w * torch.sigmoid(self.gate(F.adaptive_avg_pool2d(w, 1)))
        w = self.pool(F.max_pool2d(w, 2, ceil_mode=True))
        w = F.adaptive_avg_pool2d(w, 2)
        return self.head(torch.flatten(w, 1))


@pytest.mark.parametrize("se", [True, False])
@pytest.mark.parametrize(("dtype", "atol", "rtol"), CASES)
def test_joins_pools_and_stops_are_exact(se, dtype, atol, rtol):
    gen = torch.Generator().manual_seed(5)
    model = randomise_batchnorms(Joins(se), gen)
    masks = channel_masks(model, 0.4, gen)
    x = torch.randn(3, 3, 16, 16, generator=gen)
    reference, result = compacted(model, masks, x, dtype)
    assert_exact(reference, result, x, dtype, atol, rtol)
    assert_exact(reference, result, torch.randn(2, 3, 20, 12, generator=gen), dtype, atol, rtol)
    stopped = set(result.stopped)
    if se:  # the SE gate is not constant across samples: it takes full-width inputs
        assert any(name.startswith("mul") for name in stopped)
    else:  # an average pooling that counts zero padding changes constants at the borders
        assert "pool" in stopped


def test_unused_channels_are_never_computed():
    """A channel no layer reads (its weight columns all masked downstream) is dropped from the
    layer that makes it, though that layer keeps it in its mask."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    masks = {"2.weight": torch.zeros(4, 8, 3, 3)}
    masks["2.weight"][:, :3] = 1  # reads channels 0-2 only
    x = torch.randn(2, 3, 9, 9)
    reference, result = compacted(model.eval(), masks, x)
    assert_exact(reference, result, x, torch.float32)
    assert result.layers["0"]["out"] == [3, 8]
    assert result.layers["2"]["in"] == [3, 8]


# ---- random graphs ----


class RandomNet(nn.Module):
    """A chain of blocks drawn from convs (any geometry), residual adds, concats and pools."""

    def __init__(self, blocks: list):
        super().__init__()
        self.kinds = [kind for kind, _ in blocks]
        channels = 6
        layers = []
        for kind, (kernel, stride, dilation) in blocks:
            padding = dilation * (kernel // 2)
            if kind == "cat":
                layers.append(nn.Conv2d(channels, 4, kernel, 1, padding, dilation))
                channels += 4
            else:
                out = channels if kind == "add" else channels + 2
                stride = 1 if kind == "add" else stride
                layers.append(nn.Conv2d(channels, out, kernel, stride, padding, dilation))
                channels = out
            layers.append(nn.BatchNorm2d(layers[-1].out_channels))
        self.layers = nn.ModuleList(layers)
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(channels, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for i, kind in enumerate(self.kinds):
            y = F.relu(self.layers[2 * i + 1](self.layers[2 * i](x)))
            if kind == "add":
                x = x + y
            elif kind == "cat":
                x = torch.cat([x, y], 1)
            elif kind == "pool":
                x = F.max_pool2d(y, 2, 1, 1)
            else:
                x = y
        return self.head(x.mean((2, 3)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    blocks=st.lists(
        st.tuples(
            st.sampled_from(["conv", "add", "cat", "pool"]),
            st.tuples(st.sampled_from([1, 3]), st.sampled_from([1, 2]), st.sampled_from([1, 2])),
        ),
        min_size=1,
        max_size=5,
    ),
    keep=st.floats(0.1, 0.9),
    seed=st.integers(0, 2**16),
)
def test_random_graphs_are_exact(blocks, keep, seed):
    gen = torch.Generator().manual_seed(seed)
    model = randomise_batchnorms(RandomNet(blocks), gen)
    masks = channel_masks(model, keep, gen)
    x = torch.randn(2, 3, 12, 12, generator=gen)
    reference, result = compacted(model, masks, x, torch.float64)
    assert_exact(reference, result, x, torch.float64, 1e-10, 1e-10)


# ---- through compile ----


def test_compile_compacts_by_default_and_reports_it():
    gen = torch.Generator().manual_seed(6)
    model = randomise_batchnorms(zoo.create("vgg16_bn"), gen)
    masks = channel_masks(model, 0.2, gen)
    x = torch.randn(4, 3, 32, 32, generator=gen)
    zoo.calibrate_batchnorm(model, [torch.randn(16, 3, 32, 32, generator=gen)], masks)
    compiled = sparsekit.compile(model, masks, x, measure=False)
    assert isinstance(compiled, fx.GraphModule)
    report = compiled.sparsekit_report
    assert report.ok and report.compaction["applied"]
    assert report.flop_limit > 3 * report.mask_flop_limit
    assert any(
        layer.channels_in.split("/")[0] != layer.channels_in.split("/")[1]
        for layer in report.layers
    )
    text = str(report)
    assert "channel compaction: FLOP limit of the mask" in text
    assert report.to_dict()["mask_flop_limit"] == pytest.approx(report.mask_flop_limit)
    plain = sparsekit.compile(model, masks, x, measure=False, compact_channels=False)
    assert not isinstance(plain, fx.GraphModule)
    assert plain.sparsekit_report.compaction is None
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), plain(x), rtol=1e-4, atol=1e-5)


def test_compiled_compacted_model_keeps_channels_last_and_traces():
    gen = torch.Generator().manual_seed(7)
    model = randomise_batchnorms(zoo.create("resnet18"), gen).to(memory_format=torch.channels_last)
    masks = channel_masks(model, 0.3, gen)
    x = torch.randn(2, 3, 32, 32, generator=gen).to(memory_format=torch.channels_last)
    zoo.calibrate_batchnorm(model, [torch.randn(16, 3, 32, 32, generator=gen)], masks)
    compiled = sparsekit.compile(model, masks, x, measure=False)
    assert compiled.sparsekit_report.memory_format == "channels_last"
    narrow = compiled.get_submodule("layer2.0.conv1")
    with torch.inference_mode():
        inner = compiled.get_submodule("conv1")(x)
        expected = compiled(x)
    assert inner.is_contiguous(memory_format=torch.channels_last)
    assert narrow is not None
    exported = torch.export.export(compiled, (x,))
    with torch.inference_mode():
        torch.testing.assert_close(exported.module()(x), expected)


def test_an_untraceable_model_compiles_uncompacted():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.out = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return self.out(F.relu(self.conv(x)))

    model = Branchy().eval()
    x = torch.randn(2, 3, 8, 8)
    masks = {"conv.weight": torch.ones(8, 3, 3, 3)}
    masks["conv.weight"][::2] = 0
    compiled = sparsekit.compile(model, masks, x, measure=False)
    report = compiled.sparsekit_report
    assert not report.compaction["applied"] and "trace" in report.compaction["why"]
    assert "channel compaction not applied" in str(report)


@pytest.mark.parametrize("covers", ["both", "a", "b", "neither"])
@pytest.mark.parametrize("select", [False, True])
def test_channel_joins_compute_the_same_in_either_memory_format(covers, select):
    """ChannelAdd and ChannelMap run their index ops on a channels_last tensor's pixel rows
    (torch's along dim 1 are up to 20x slower there): the same sums and channels as on NCHW
    tensors, built by hand, and channels_last out."""
    from sparsekit.channels import ChannelAdd, ChannelMap

    gen = torch.Generator().manual_seed(len(covers) + select)
    width = 12
    every = torch.arange(width)
    a_channels = every if covers in ("both", "a") else torch.tensor([0, 2, 3, 7, 11])
    b_channels = every if covers in ("both", "b") else torch.tensor([1, 2, 5, 7, 8])
    # with a select, each operand holds two more channels than it uses
    a_select = torch.arange(len(a_channels)) + 2 if select else None
    b_select = torch.arange(len(b_channels)) + 1 if select else None
    held_by_both = torch.isin(every, a_channels) & torch.isin(every, b_channels)
    # what the operand lacking a channel adds there (the compaction's constants): none where both
    # hold it
    constant = torch.randn(width, generator=gen) * ~held_by_both
    a = torch.randn(3, len(a_channels) + 2 * select, 5, 4, generator=gen)
    b = torch.randn(3, len(b_channels) + 2 * select, 5, 4, generator=gen)
    join = ChannelAdd(a_channels, b_channels, a_select, b_select, constant)

    expected = constant.view(1, -1, 1, 1).expand(3, width, 5, 4).clone()
    expected[:, a_channels] += a if a_select is None else a[:, a_select]
    expected[:, b_channels] += b if b_select is None else b[:, b_select]
    for fmt in (torch.contiguous_format, torch.channels_last):
        y = join(a.contiguous(memory_format=fmt), b.contiguous(memory_format=fmt))
        torch.testing.assert_close(y, expected)
        assert y.is_contiguous(memory_format=fmt)

    source = torch.tensor([3, -1, 0, 4, -1, 2])
    fill = torch.randn(6, generator=gen)
    widen = ChannelMap(source, fill)
    x = torch.randn(2, 5, 3, 3, generator=gen)
    mapped = torch.stack(
        [x[:, k] if k >= 0 else fill[i].expand(2, 3, 3) for i, k in enumerate(source)], 1
    )
    gathered = ChannelMap(torch.tensor([4, 0, 2]), torch.zeros(3))
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.testing.assert_close(widen(x.contiguous(memory_format=fmt)), mapped)
        torch.testing.assert_close(gathered(x.contiguous(memory_format=fmt)), x[:, [4, 0, 2]])
        empty = x[:0].contiguous(memory_format=fmt)  # an empty batch keeps its shape
        assert widen(empty).shape == (0, 6, 3, 3) and gathered(empty).shape == (0, 3, 3, 3)

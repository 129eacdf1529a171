import copy
import functools
import warnings

import pytest
import torch
import torch.nn.utils.prune as prune
from safetensors.torch import save_file
from torch import nn
from torch.ao.pruning.sparsifier.utils import FakeSparsity
from torch.nn.utils import parametrize

import sparsekit
from sparsekit import (
    SparseConv2d,
    SparsekitError,
    SparsekitWarning,
    SparseLinear,
    backends,
    timing,
    zoo,
)
from sparsekit.backends import Backend
from sparsekit.compiler import choice
from sparsekit.compiler.batchnorm import FoldedLayer

from .helpers import (
    assert_model_close,
    calibrated_zoo_model,
    dense_masked,
    structured_masks,
    timed_by,
)

SOURCES = [
    "param_dict",
    "module_dict",
    "nested_dict",
    "prune_hooks",
    "prune_state_dict",
    "ao_parametrizations",
    "zeros",
    "safetensors_file",
    "pt_file",
]
STRUCTURES = ["channel", "kernel", "group", "auto"]


@functools.cache
def calibrated(name: str):
    torch.manual_seed(0)
    return calibrated_zoo_model(name, batch=4 if name == "resnet50" else 8)


def model_and_mask(name: str, source: str, tmp_path):
    """(model to compile, mask argument, reference model) for one mask source."""
    model, masks = copy.deepcopy(calibrated(name))
    reference = dense_masked(model, masks)
    modules = {key.rpartition(".")[0]: m for key, m in masks.items()}
    if source == "param_dict":
        return model, masks, reference
    if source == "module_dict":
        return model, modules, reference
    if source == "nested_dict":
        return model, {k: {"weight": m} for k, m in modules.items()}, reference
    if source in ("prune_hooks", "prune_state_dict", "ao_parametrizations", "zeros"):
        pruned = copy.deepcopy(model)
        for key, mask in modules.items():
            module = pruned.get_submodule(key)
            if source == "ao_parametrizations":
                parametrize.register_parametrization(module, "weight", FakeSparsity(mask.float()))
            elif source == "zeros":
                with torch.no_grad():
                    module.weight.mul_(mask)
            else:
                prune.custom_from_mask(module, "weight", mask)
        if source == "prune_state_dict":
            return model, pruned.state_dict(), reference
        return pruned, None, reference
    path = tmp_path / ("masks.safetensors" if source == "safetensors_file" else "masks.pt")
    tensors = {k: m.float().contiguous() for k, m in masks.items()}
    save_file(tensors, str(path)) if source == "safetensors_file" else torch.save(tensors, path)
    return model, path, reference


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_models_compile_exactly(name, source, structure, tmp_path):
    model, mask, reference = model_and_mask(name, source, tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, *zoo.INPUT_SHAPES[name])
    compiled = sparsekit.compile(model, mask, x, structure=structure, measure=False)

    assert_model_close(compiled(x), reference(x))
    report = compiled.sparsekit_report
    assert report.ok and report.layers
    if (name, structure) != (
        "wrn32_2",
        "channel",
    ):  # 32-128 channels: the gather outweighs 50% rows
        packed = any(layer.backend == "cpu" for layer in report.layers)
        # channel masks become narrow dense layers: the dataflow compaction, not a pack, skips
        narrowed = structure == "channel" and report.flop_limit > 1.5
        assert packed or narrowed, "nothing was packed nor narrowed"
    assert all(
        layer.structure in (structure, "dense") for layer in report.layers if structure != "auto"
    )
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, (SparseConv2d, SparseLinear)) for m in model.modules())


def test_batchnorm_is_folded_and_identity_left():
    model, masks = copy.deepcopy(calibrated("resnet18"))
    for m in model.modules():  # affine parameters of their own, beside calibrated statistics
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 2), m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 32, 32)
    compiled = sparsekit.compile(model, masks, x, measure=False, compact_channels=False)
    assert isinstance(compiled.layer1[0].bn1, nn.Identity)
    assert compiled.layer1[0].conv1.config["source"] == {
        "layer": "layer1.0.conv1",
        "batchnorm": "layer1.0.bn1",
    }
    assert_model_close(compiled(x), dense_masked(model, masks)(x))
    unfolded = sparsekit.compile(
        model, masks, x, measure=False, fold_bn=False, compact_channels=False
    )
    assert isinstance(unfolded.layer1[0].bn1, nn.BatchNorm2d)


def test_freshly_pruned_model_is_left_working():
    """deepcopy must work although the prune hook's weight is a non-leaf tensor."""
    model = zoo.create("wrn32_2").eval()
    prune.global_unstructured(
        [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d)],
        pruning_method=prune.L1Unstructured,
        amount=0.7,
    )
    assert not model.layer1[0].conv1.weight.is_leaf
    zoo.calibrate_batchnorm(model, [torch.randn(8, 3, 32, 32) for _ in range(2)])  # under its hooks
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    compiled = sparsekit.compile(model, None, x, measure=False)
    assert_model_close(compiled(x), expected)
    assert prune.is_pruned(model) and torch.equal(model(x), expected)


def test_bias_masks_are_honoured():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=True), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)
    ).eval()
    bias_mask = torch.tensor([1, 0, 1, 0, 1, 1, 0, 1.0])
    masks = {"0.weight": (torch.rand(8, 3, 3, 3) < 0.5).float(), "0.bias": bias_mask}
    x = torch.randn(2, 3, 6, 6)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference[0].weight.mul_(masks["0.weight"]), reference[0].bias.mul_(bias_mask)
    compiled = sparsekit.compile(model, masks, x, measure=False, compact_channels=False)
    assert isinstance(compiled[0], SparseConv2d) and isinstance(compiled[3], nn.Linear)
    assert_model_close(compiled(x), reference(x))


def test_all_pruned_layer_is_valid_and_flagged():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3)).eval()
    x = torch.randn(1, 3, 5, 5)
    compiled = sparsekit.compile(model, {"1.weight": torch.zeros(4, 4, 3, 3)}, x, measure=False)
    (layer,) = compiled.sparsekit_report.layers
    assert "all weights pruned" in layer.note
    assert torch.allclose(compiled(x), model[1].bias.view(1, 4, 1, 1).expand(1, 4, 3, 3))


def choose(conv, weight, structure, competitors, x):
    """The plan compile's choice stage makes for ``conv`` with ``weight`` on input ``x``."""
    return choice.choose(FoldedLayer("conv", conv, weight, None, None), structure, competitors, x)


def test_plan_choice_follows_measured_time(monkeypatch):
    """A packed plan is kept only when measured faster than dense by the margin, with
    confidence."""
    conv = nn.Conv2d(16, 32, 3)
    mask = torch.zeros_like(conv.weight)
    mask[:4] = 1
    weight = conv.weight.detach() * mask
    x = torch.randn(1, 16, 8, 8)

    def with_times(dense_time, packed_time, interval=0.0):
        timed_by(monkeypatch, lambda layer: dense_time if layer.is_dense else packed_time, interval)
        return choose(conv, weight, "channel", [backends.get("cpu")], x)

    assert with_times(1.0, 0.5).backend == "cpu"
    assert with_times(1.0, 0.99).backend == "dense"  # within the margin: not kept
    assert with_times(1.0, 2.0).backend == "dense"
    assert with_times(1.0, 0.9, interval=0.05).backend == "cpu"
    assert with_times(1.0, 0.9, interval=0.2).backend == "dense"  # maybe slower: not kept


@pytest.mark.parametrize(
    ("first", "again", "unreliable"),
    [
        ((0.5, 0.4, 0.6), None, False),  # 2x within a 4x limit: measured once
        ((0.2, 0.15, 0.3), (0.2, 0.15, 0.22), True),  # 5x, then its whole interval beyond 4x
        ((0.2, 0.15, 0.3), (0.24, 0.2, 0.3), False),  # measured again: the limit in the interval
    ],
)
def test_a_speedup_beyond_the_flop_limit_is_measured_again(monkeypatch, first, again, unreliable):
    from sparsekit.compiler import verification

    calls = []

    def compare(candidate, baseline, *args, min_rounds, **kwargs):
        calls.append(min_rounds)
        ratio, low, high = first if len(calls) == 1 else again
        return timing.Comparison(ratio, low, high, min_rounds, ratio, 1.0)

    monkeypatch.setattr(timing, "compare", compare)
    comparison, flagged = verification._measured(None, None, (), flop_limit=4.0)
    assert flagged == unreliable and len(calls) == (1 if again is None else 2)
    assert calls[1:] == ([] if again is None else [3 * timing.MIN_ROUNDS])
    calls.clear()
    _, flagged = verification._measured(None, None, (), flop_limit=1.0)  # same work both sides
    assert not flagged and len(calls) == 1


def test_a_comparison_is_paired_and_its_interval_holds_the_median(monkeypatch):
    ratios = iter([1.0, 1.1, 0.5, 0.9, 0.8, 1.2, 0.7, 0.9])  # eight rounds: the interval is min-max
    order = []

    def sparse():
        pass

    def dense():
        pass

    def block(fn, args, calls, cuda):  # seconds per call: dense takes 1, sparse each ratio
        order.append(fn.__name__)
        return next(ratios) if fn is sparse else 1.0

    monkeypatch.setattr(timing, "_block", block)
    result = timing.compare(sparse, dense, min_rounds=8, max_rounds=8)
    assert order[1:5] == ["sparse", "dense", "dense", "sparse"]  # which goes first alternates
    assert result.rounds == 8 and result.ratio == 0.9 and (result.low, result.high) == (0.5, 1.2)
    assert not result.faster() and not result.resolved()
    ratios = iter([0.5] * 100)  # clearly faster: settled at the first look
    assert timing.compare(sparse, dense, max_rounds=31).rounds == timing.MIN_ROUNDS
    ratios = iter([0.5, 2.0] * 50)  # never settled: runs to the last round, not faster
    undecided = timing.compare(sparse, dense, max_rounds=31)
    assert undecided.rounds == 31 and not undecided.faster()
    with pytest.raises(ValueError, match="min_rounds"):
        timing.compare(sparse, dense, min_rounds=5)
    assert timing.Comparison(0.8, 0.7, 0.95, 9, 0.8, 1.0).faster(0.97)
    assert timing.Comparison(1.2, 1.1, 1.3, 9, 1.2, 1.0).resolved(0.97)


def test_plan_choice_compares_backends(monkeypatch):
    """Each plan runs on every backend that supports it; the fastest measured one is kept."""
    conv = nn.Conv2d(16, 32, 3)
    weight = conv.weight.detach() * (torch.arange(32) < 4).view(-1, 1, 1, 1)  # whole channels
    x = torch.randn(1, 16, 8, 8)
    times = {"dense": 1.0, "cpu": 0.6, "torch": 0.4}
    timed_by(monkeypatch, lambda layer: times[layer.backend])
    both = [backends.get("cpu"), backends.get("torch")]
    chosen = choose(conv, weight, "channel", both, x)
    assert chosen.backend == "torch"
    times["torch"] = 0.7
    chosen = choose(conv, weight, "channel", both, x)
    assert chosen.backend == "cpu"
    partial = conv.weight.detach() * (torch.rand_like(conv.weight) < 0.2)  # no whole kernels
    chosen = choose(conv, partial, "group", both[1:], x)
    assert (
        chosen.backend == "dense"
    )  # no packed candidate: backend torch cannot run partial kernels


def test_plan_choice_times_only_candidates_whose_first_call_is_close_to_the_best(monkeypatch):
    """One call screens: a candidate SCREEN times slower than dense's median or another
    candidate's call is not timed further, so a slow backend costs one call, not a timing."""
    conv = nn.Conv2d(16, 32, 3)
    weight = conv.weight.detach() * (torch.arange(32) < 4).view(-1, 1, 1, 1)
    x = torch.randn(1, 16, 8, 8)
    first = {"cpu": 1.0, "torch": 1.0}
    timed = []
    timed_by(monkeypatch, lambda layer: 10.0 if layer.is_dense else 1.0)
    monkeypatch.setattr(
        choice.timing, "one_call_seconds", lambda layer, *a, **k: first[layer.backend]
    )
    monkeypatch.setattr(
        choice.timing,
        "median_seconds",
        lambda layer, *a, **k: timed.append(layer.backend) or (10.0 if layer.is_dense else 1.0),
    )
    both = [backends.get("cpu"), backends.get("torch")]
    assert choose(conv, weight, "channel", both, x).backend == "cpu"
    assert timed == ["dense", "cpu", "torch"]  # both close to the best first call: both timed
    for slow, factor in (("torch", 1.6), ("cpu", 1.6), ("torch", 1.4)):
        timed.clear()
        first.update(cpu=1.0, torch=1.0)
        first[slow] = factor
        choose(conv, weight, "channel", both, x)
        assert (slow in timed) == (factor < choice.SCREEN), (slow, factor, timed)


def test_a_measured_compile_reports_paired_figures_for_its_packed_layers():
    model, masks = calibrated("vgg16_bn")
    x = torch.randn(4, 3, 32, 32)
    with warnings.catch_warnings():  # whether it wins end to end is the machine's, not a test's
        warnings.filterwarnings("ignore", "sparsekit.compile: the compiled model was not measured")
        compiled = sparsekit.compile(model, masks, x, compact_channels=False)
    report = compiled.sparsekit_report
    assert report.ok and report.discriminating and report.dense_ms > 0 and report.sparse_ms > 0
    low, high = report.speedup_interval
    assert low <= report.speedup <= high
    for layer in report.layers:  # packed layers timed against dense, dense ones not at all
        assert (layer.dense_ms is None) == (layer.structure == "dense") == (layer.speedup is None)
        assert layer.flops_ratio == 1 or layer.structure != "dense"
    text = str(report)
    assert "end to end" in text and "features.3" in text and "compile took" in text
    assert set(report.stage_seconds) >= {"reference", "choice", "building", "verification"}
    assert report.to_dict()["layers"][0]["name"] == report.layers[0].name


@pytest.mark.parametrize("later", ["faster", "never faster"])
def test_a_model_not_faster_end_to_end_returns_the_layers_that_saved_least_to_dense(
    monkeypatch, later
):
    model, masks = calibrated("vgg16_bn")
    x = torch.randn(4, 3, 32, 32)

    def seconds(layer):  # a packed layer saves time in proportion to its output channels
        return layer.weight_shape[0] / (100 if layer.is_dense else 200)

    verdicts = [(1.05, 1.0, 1.1)]  # the model: not faster at first
    verdicts += [(0.8, 0.7, 0.9)] if later == "faster" else []
    packed_at_first = []

    def compare(candidate, baseline, *args, **kwargs):
        if isinstance(candidate, (SparseConv2d, SparseLinear)):  # every packed layer wins alone
            return timing.Comparison(0.5, 0.45, 0.55, 7, 1.0, 2.0)
        if not packed_at_first:
            packed_at_first.extend(
                n
                for n, m in candidate.named_modules()
                if isinstance(m, (SparseConv2d, SparseLinear)) and not m.is_dense
            )
        ratio, low, high = verdicts.pop(0) if len(verdicts) > 1 else verdicts[0]
        return timing.Comparison(ratio, low, high, 7, ratio, 1.0)

    monkeypatch.setattr(timing, "median_seconds", lambda layer, *a, **k: seconds(layer))
    monkeypatch.setattr(timing, "one_call_seconds", lambda layer, *a, **k: seconds(layer))
    monkeypatch.setattr(timing, "compare", compare)
    outcome = "then measured faster" if later == "faster" else "still not .* with every layer dense"
    with pytest.warns(SparsekitWarning, match=f"returned to dense .*{outcome}"):
        compiled = sparsekit.compile(model, masks, x, backend="cpu")
    layers = dict(compiled.named_modules())
    by_saving = sorted(packed_at_first, key=lambda n: layers[n].weight_shape[0])
    if later == "never faster":  # every packed layer returned, and the report says so
        assert all(layers[n].is_dense for n in by_saving) and not compiled.sparsekit_report.faster
        return
    half = len(by_saving) // 2
    assert half >= 2 and all(layers[n].is_dense for n in by_saving[:half])
    assert not any(layers[n].is_dense for n in by_saving[half:])
    report = compiled.sparsekit_report
    assert report.faster and report.ok and "returning to dense" in report.stage_seconds


def test_inplace_replaces_layers_in_the_given_model():
    model, masks = copy.deepcopy(calibrated("wrn32_2"))
    reference = dense_masked(model, masks)
    x = torch.randn(2, 3, 32, 32)
    compiled = sparsekit.compile(
        model, masks, x, inplace=True, measure=False, compact_channels=False
    )
    assert compiled is model and isinstance(model.layer1[0].conv2, SparseConv2d)
    assert_model_close(model(x), reference(x))


def test_without_example_inputs_the_cost_model_decides_and_it_warns():
    model, masks = calibrated("resnet18")
    with pytest.warns(SparsekitWarning, match="not verified"):
        compiled = sparsekit.compile(model, masks)
    assert any(isinstance(m, SparseConv2d) and not m.is_dense for m in compiled.modules())
    x = torch.randn(2, 3, 32, 32)
    assert_model_close(compiled(x), dense_masked(model, masks)(x))


def test_torch_compile_and_export_trace_a_compiled_model():
    model, masks = calibrated("resnet18")
    x = torch.randn(2, 3, 32, 32)
    compiled = sparsekit.compile(model, masks, x, measure=False)
    traced = torch.compile(compiled, backend="aot_eager", fullgraph=True)
    assert torch.equal(traced(x), compiled(x))
    exported = torch.export.export(compiled, (x,))
    ops = {str(n.target) for n in exported.graph.nodes}
    assert "sparsekit.block_conv2d.default" in ops
    assert torch.equal(exported.module()(x), compiled(x))


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        ({"layer1.0.conv9.weight": torch.ones(1)}, "names no parameter"),
        ({"bn1.weight": torch.ones(64)}, "only Conv2d and Linear"),
        ({"layer1.0.conv1.weight": torch.ones(3, 3)}, "layer1.0.conv1.weight: shape"),
        ({"layer1.0.conv1.weight": torch.full((64, 64, 3, 3), 0.5)}, "0 or 1"),
        ({"layer1.0.conv1.weight": [1, 0]}, "expected a tensor"),
        ({3: torch.ones(1)}, "keys must be strings"),
        (42, "expected None, a dict"),
        ("no/such/masks.pt", "no file"),
    ],
)
def test_bad_masks_name_the_layer_and_leave_the_model(mask, message):
    model = zoo.create("resnet18").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SparsekitError, match=message):
        sparsekit.compile(model, mask, torch.randn(1, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_bare_layer_is_refused_as_a_model():
    for layer in (nn.Linear(4, 4), nn.Conv2d(3, 4, 3), nn.MultiheadAttention(8, 2)):
        with pytest.raises(SparsekitError, match="is the model itself: wrap it"):
            sparsekit.compile(layer.eval(), None, verify=False)


def test_training_mode_and_bad_inputs_are_errors():
    model = zoo.create("resnet18")
    with pytest.raises(SparsekitError, match="training mode"):
        sparsekit.compile(model)
    assert model.training
    model.eval()
    with pytest.raises(SparsekitError, match="layer 'conv1'"):
        sparsekit.compile(model, structured_masks(model), torch.randn(1, 4, 32, 32))
    with pytest.raises(SparsekitError, match="example_inputs"):
        sparsekit.compile(model, None, "image")
    with pytest.raises(SparsekitError, match="structure"):
        sparsekit.compile(model, None, structure="blocks")
    with pytest.raises(SparsekitError, match="'fpga' is not one of auto, dense, cpu"):
        sparsekit.compile(model, None, backend="fpga")
    with pytest.raises(SparsekitError, match="backend 'cpu' takes float32"):
        sparsekit.compile(copy.deepcopy(model).double(), None, backend="cpu")


def test_corrupt_mask_file_is_an_error(tmp_path):
    path = tmp_path / "masks.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(SparsekitError, match="cannot read"):
        sparsekit.compile(zoo.create("resnet18").eval(), path)


class PlantedBackend(Backend):
    """A backend for the tests: the C++ kernels' result, made wrong (+1e-2) on layers of
    ``wrong_rows`` output channels, or raising on them."""

    devices, dtypes, auto_on = ("cpu",), (torch.float32,), ("cpu",)

    def __init__(self, name: str, wrong_rows: int, fault: str):
        self.name, self.wrong_rows, self.fault = name, wrong_rows, fault

    def prepack(self, packed):
        return backends.get("cpu").prepack(packed)

    def cost(self, packed):  # it runs the C++ kernels
        return backends.get("cpu").cost(packed)

    @property
    def conv2d_op(self):
        def run(input, layout, ints, out_channels, *args):
            y = torch.ops.sparsekit.block_conv2d(input, layout, ints, out_channels, *args)
            if out_channels != self.wrong_rows:
                return y
            if self.fault == "raises":
                raise RuntimeError("planted failure")
            return y + 1e-2

        return run


@pytest.fixture
def planted(request):
    backend = PlantedBackend(f"planted_{request.param}", wrong_rows=128, fault=request.param)
    backends.register(backend)
    yield backend
    backends.unregister(backend.name)


def small_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 128, 3, padding=1),
        nn.BatchNorm2d(128),
        nn.ReLU(),
        nn.Conv2d(128, 160, 3, padding=1),
        nn.BatchNorm2d(160),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(160 * 6 * 6, 10),
    ).eval()
    masks = {  # a quarter of the output channels: a plan the cost model packs
        f"{i}.weight": (torch.rand(model[i].out_channels, 1, 1, 1) < 0.25)
        .expand_as(model[i].weight)
        .float()
        for i in (3, 6)
    }
    return zoo.calibrate_batchnorm(model, [torch.randn(8, 3, 6, 6)], masks), masks


@pytest.mark.parametrize(
    ("planted", "problem"),
    [("wrong", "differs"), ("raises", "raised RuntimeError")],
    indirect=["planted"],
)
@pytest.mark.parametrize("backend", ["named", "auto"])
def test_a_wrong_or_failing_backend_is_dropped_and_the_model_stays_exact(planted, problem, backend):
    model, masks = small_model()
    x = torch.randn(2, 3, 6, 6)
    name = planted.name if backend == "named" else "auto"
    pattern = rf"layer '3': the 'group' plan on backend '{planted.name}' {problem}.*dropped"
    with pytest.warns(SparsekitWarning, match=pattern):
        compiled = sparsekit.compile(
            model,
            masks,
            x,
            structure="group",
            backend=name,
            measure=False,
            compact_channels=False,
        )
    assert compiled[3].backend != planted.name  # never chosen where it is wrong
    if backend == "named":
        assert compiled[6].backend == planted.name  # and still used where it is right
    assert any(
        f"dropped 'group' plan on backend '{planted.name}'" in layer.note
        for layer in compiled.sparsekit_report.layers
    )
    assert_model_close(compiled(x), dense_masked(model, masks)(x))


def test_channels_last_stays_channels_last_through_a_compiled_zoo_model():
    model, masks = calibrated("resnet18")
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    compiled = sparsekit.compile(model, masks, x, measure=False)
    assert compiled.sparsekit_report.memory_format == "channels_last"
    assert "(channels_last)" in str(compiled.sparsekit_report)
    formats = {}  # sparse layer -> (its input, its output) in channels_last

    def record(layer, args, y):
        formats[layer] = tuple(
            t.is_contiguous(memory_format=torch.channels_last) for t in (args[0], y)
        )

    for layer in compiled.modules():
        if isinstance(layer, SparseConv2d) and not layer.is_dense:
            layer.register_forward_hook(record)
    assert_model_close(compiled(x), dense_masked(model, masks)(x))
    assert len(formats) > 5 and all(formats.values()), formats


def test_a_channels_last_model_computes_in_channels_last_from_a_one_channel_input():
    """A one-channel input cannot say its format; torch's conv answers in channels_last for a
    channels_last weight, and so must the compiled layers, or the compiled model runs NCHW."""
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
        )
        .eval()
        .to(memory_format=torch.channels_last)
    )
    masks = {
        name: (torch.rand(p.shape) > 0.7).float()
        for name, p in model.named_parameters()
        if p.dim() == 4
    }
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert (
            model(x).is_contiguous(memory_format=torch.channels_last)
            and not model(x).is_contiguous()
        )
    compiled = sparsekit.compile(model, masks, x, measure=False, compact_channels=False)
    assert all(compiled[i].config["channels_last"] for i in (0, 2, 4))
    with torch.no_grad():
        y = compiled(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert_model_close(y, dense_masked(model, masks)(x))
    plain = sparsekit.compile(
        model.to(memory_format=torch.contiguous_format),
        masks,
        x,
        measure=False,
        compact_channels=False,
    )
    assert not plain[2].config["channels_last"] and plain(x).is_contiguous()


def test_progress_bar_shows_by_default_on_a_terminal(monkeypatch, capsys):
    model, masks = small_model()
    for terminal in (False, True):
        monkeypatch.setattr("sys.stderr.isatty", lambda terminal=terminal: terminal)
        sparsekit.compile(model, masks, torch.randn(2, 3, 6, 6), measure=False)
        assert ("sparsekit.compile" in capsys.readouterr().err) == terminal


def test_a_layer_the_example_inputs_never_reach_stays_dense_with_a_warning():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Conv2d(32, 128, 3), nn.Conv2d(32, 128, 3)

        def forward(self, x):
            return self.used(x) if x.shape[0] > 1 else self.unused(x)

    model = Branchy().eval()
    rows = (torch.rand(128, 1, 1, 1) < 0.25).expand(128, 32, 3, 3).float()  # a plan worth packing
    masks = {"used.weight": rows, "unused.weight": rows}
    x = torch.randn(2, 32, 8, 8)
    with pytest.warns(SparsekitWarning, match="never reach layer 'unused', so it stays dense"):
        compiled = sparsekit.compile(model, masks, x, measure=False)
    assert compiled.unused.is_dense and not compiled.used.is_dense

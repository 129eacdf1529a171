import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsekit import SparseConv2d, SparsekitError, SparseLinear, backends, compile
from sparsekit.backends import Backend
from sparsekit.geometry import is_channels_last, output_memory_format
from sparsekit.nn import from_config

from .helpers import CPU_BACKENDS, assert_matches, conv_input, pack_for


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 6, 3, padding=1),
        nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, bias=False),
        nn.Conv2d(4, 6, (3, 2), padding="same"),
        nn.Conv2d(4, 6, 4, padding="same", dilation=1),  # asymmetric: left 1, right 2
        nn.Conv2d(4, 6, 3, padding="valid"),
        nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 6, 3, padding=(1, 2), padding_mode="circular"),
        nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="replicate"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("backend", ["dense", *CPU_BACKENDS])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_sparse_conv2d_equals_the_conv_it_replaces(conv, backend, layout):
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.5)
    structure = (
        "group"
        if backend == "dense"
        else pack_for(backend, conv.weight, None, "group", conv.groups).structure
    )
    layer = SparseConv2d.from_conv(conv, structure=structure, backend=backend)
    x = conv_input((2, 4, 9, 8), torch.float32, layout)
    y = layer(x)
    assert_matches(y, conv(x).double(), torch.float32)
    assert y.is_contiguous(memory_format=output_memory_format(x))  # padding modes included
    assert layer.backend == backend and repr(layer).startswith("SparseConv2d(")


@pytest.mark.parametrize("backend", ["dense", *CPU_BACKENDS])
def test_sparse_conv2d_computes_in_the_memory_format_torch_conv_would(backend):
    """A channels_last weight makes torch's conv answer channels_last for an NCHW input; the layer
    follows, and follows ``.to(memory_format=...)`` as the conv does."""
    conv = nn.Conv2d(4, 6, 3, padding=1).to(memory_format=torch.channels_last)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.5)
    layer = SparseConv2d.from_conv(
        conv, structure="group" if backend == "dense" else "auto", backend=backend
    )
    x = torch.randn(2, 4, 7, 7)
    for memory_format in (torch.channels_last, torch.contiguous_format, torch.channels_last):
        conv, layer = conv.to(memory_format=memory_format), layer.to(memory_format=memory_format)
        expected, y = conv(x), layer(x)
        assert (
            is_channels_last(y)
            == is_channels_last(expected)
            == (memory_format == torch.channels_last)
        )
        assert_matches(y, expected.double(), torch.float32)


@pytest.mark.parametrize("backend", ["dense", *CPU_BACKENDS])
def test_sparse_linear_equals_the_linear_it_replaces(backend):
    linear = nn.Linear(12, 7)
    with torch.no_grad():
        linear.weight.mul_(torch.rand_like(linear.weight) < 0.4)
    layer = SparseLinear.from_linear(linear, structure="kernel", backend=backend)
    x = torch.randn(3, 5, 12)
    assert_matches(layer(x), linear(x).double(), torch.float32)


def test_fused_relu():
    conv = nn.Conv2d(3, 5, 3)
    layer = SparseConv2d.from_conv(conv, backend="cpu", relu=True)
    x = torch.randn(1, 3, 6, 6)
    assert_matches(layer(x), torch.relu(conv(x)).double(), torch.float32)


def test_config_rebuilds_an_identical_layer():
    conv = nn.Conv2d(6, 8, 3, padding=1, groups=2)
    layer = SparseConv2d.from_conv(conv, structure="channel", backend="cpu")
    twin = from_config(layer.config)
    twin.load_state_dict(layer.state_dict())
    x = torch.randn(2, 6, 5, 5)
    assert torch.equal(twin(x), layer(x))
    assert twin.summary() == layer.summary()


def test_with_backend_makes_a_twin_on_another_backend():
    weight = torch.randn(8, 4, 3, 3) * (torch.rand(8, 1, 1, 1) < 0.5)  # whole output channels
    layer = SparseConv2d.from_weight(weight, padding=1, structure="channel", backend="cpu")
    twin = layer.with_backend("torch")
    x = torch.randn(2, 4, 6, 6)
    assert twin.backend == "torch" and layer.backend == "cpu"
    assert twin.summary() == layer.summary()
    assert_matches(twin(x), layer(x).double(), torch.float32)
    partial = SparseConv2d.from_weight(
        torch.randn(8, 4, 3, 3) * (torch.rand(8, 4, 3, 3) < 0.3), structure="group", backend="cpu"
    )
    assert not partial.supports("torch")
    with pytest.raises(SparsekitError, match="whole kernels"):
        partial.with_backend("torch")
    with pytest.raises(SparsekitError, match="cannot move"):
        SparseLinear.from_weight(torch.randn(3, 3), backend="dense").with_backend("cpu")


def test_summary_of_a_dense_layer():
    layer = SparseLinear.from_weight(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), backend="dense")
    s = layer.summary()
    assert (
        s["structure"] == "dense"
        and s["nnz"] == 1
        and s["density"] == 0.25
        and s["flops_ratio"] == 1
    )


def test_bad_layer_arguments():
    with pytest.raises(SparsekitError, match="backend"):
        SparseLinear.from_weight(torch.randn(2, 2), backend="gpu")
    with pytest.raises(SparsekitError, match="malformed"):
        from_config({"type": "SparseConv2d"})
    with pytest.raises(SparsekitError, match="layer3.conv: contains NaN"):
        SparseLinear.from_weight(torch.tensor([[float("nan")]]), name="layer3.conv")


class PrepackingBackend(Backend):
    """The C++ kernels, their layouts counted."""

    name, devices, dtypes = "prepacking", ("cpu",), (torch.float32,)

    def __init__(self):
        self.built = 0

    def prepack(self, packed):
        self.built += 1
        return backends.get("cpu").prepack(packed)


@pytest.fixture
def prepacking():
    backend = PrepackingBackend()
    backends.register(backend)
    yield backend
    backends.unregister(backend.name)


def test_a_prepacked_layout_is_built_once_rebuilt_after_load_and_move_and_never_saved(prepacking):
    weight = torch.randn(8, 4, 3, 3) * (torch.rand(8, 4, 3, 3) < 0.5)
    layer = SparseConv2d.from_weight(weight, padding=1, structure="group", backend="prepacking")
    x = torch.randn(2, 4, 5, 5)
    first = layer(x)
    assert_matches(layer(x), F.conv2d(x.double(), weight.double(), None, 1, 1), torch.float32)
    with torch.inference_mode():  # inference tensors have no version counter: nothing keyed on one
        assert torch.equal(layer(x), first) and torch.equal(layer(x), first)
    assert prepacking.built == 1  # once for all four calls
    assert [name for name, _ in layer.named_buffers()][-1] == "layout_0"  # held by the layer
    state = layer.state_dict()
    assert set(state) == {"values", "row_idx", "col_idx", "block_ptr"}  # the layout is not saved
    layer.load_state_dict(state | {"values": 2 * state["values"]})
    assert torch.allclose(layer(x), 2 * first) and prepacking.built == 2  # a stale copy would not
    layer.to(torch.float32)
    layer(x)
    assert prepacking.built == 3
    twin = from_config(layer.config)
    twin.load_state_dict(layer.state_dict())
    assert torch.equal(twin(x), layer(x)) and prepacking.built == 4


def test_a_packed_layer_pickles_and_deep_copies_with_its_layout():
    """torch.save of a whole layer (or model) and deepcopy keep a layer that runs: the op
    handle, which does not pickle, is found again."""
    weight = torch.randn(8, 4, 3, 3) * (torch.rand(8, 4, 3, 3) < 0.3)
    layer = SparseConv2d.from_weight(weight, padding=1, backend="cpu")
    x = torch.randn(2, 4, 5, 5)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    twin = copy.deepcopy(layer)
    assert torch.equal(loaded(x), layer(x)) and torch.equal(twin(x), layer(x))
    assert twin.layout_0.data_ptr() != layer.layout_0.data_ptr()  # a layout of its own
    for copied in (loaded, twin):  # and the arguments an eager call passes are its own tensors
        assert copied._fast[2][0][0] is copied.layout_0 and copied._fast[2][8] is copied.bias


def test_an_unpickled_layer_lays_out_its_pack_again():
    """A layout is derived data, and one pickled by another version may not be what this one
    reads (the CPU kernels' layout grew): unpickling builds it again from the pack."""
    weight = torch.randn(8, 4, 3, 3) * (torch.rand(8, 4, 3, 3) < 0.3)
    layer = SparseConv2d.from_weight(weight, padding=1, backend="cpu")
    x = torch.randn(2, 4, 5, 5)
    expected = layer(x)
    layer.layout_0[:8] = 0  # not a layout this version made: the op refuses it
    with pytest.raises(ValueError, match="not a CPU layout made by this version"):
        layer(x)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(x), expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_an_eager_call_passes_arguments_fixed_once_and_an_assigned_buffer_is_read(backend, kind):
    torch.manual_seed(0)
    if kind == "conv":
        weight = torch.randn(8, 4, 3, 3) * (torch.rand(8, 4, 1, 1) < 0.5)
        layer = SparseConv2d.from_weight(weight, torch.randn(8), padding=1, backend=backend)
        x = conv_input((2, 4, 5, 5), torch.float32, "channels_last")
        dense = lambda bias: F.conv2d(x.double(), weight.double(), bias.double(), 1, 1)  # noqa: E731
    else:
        weight = torch.randn(8, 12) * (torch.rand(1, 12) < 0.5)
        layer = SparseLinear.from_weight(weight, torch.randn(8), backend=backend)
        x = torch.randn(3, 12)
        dense = lambda bias: F.linear(x.double(), weight.double(), bias.double())  # noqa: E731
    assert layer._fast is not None
    fast = layer(x)
    layer._fast = None  # the full path: what torch.compile and torch.export trace
    assert torch.equal(layer(x), fast)
    assert_matches(fast, dense(layer.bias), torch.float32)
    layer.ready()
    zeros = torch.zeros(8)
    # a buffer swapped in for one call, as torch.func does: that call reads it, the next the old
    swapped = torch.func.functional_call(layer, {"bias": zeros}, (x,))
    assert_matches(swapped, dense(zeros), torch.float32)
    assert torch.equal(layer(x), fast)
    layer.bias = zeros  # an assigned buffer, not one changed in place: read from the next call
    assert_matches(layer(x), dense(zeros), torch.float32)
    layer.register_buffer("bias", torch.ones(8))  # registered again under its name
    assert_matches(layer(x), dense(torch.ones(8)), torch.float32)
    assert layer.ready()._fast_args(x) is not None
    assert_matches(layer(x), dense(torch.ones(8)), torch.float32)


@pytest.mark.parametrize("strict", [False, True])
def test_an_exported_layer_lifts_its_buffers_and_bakes_in_no_tensor(strict):
    weight = torch.randn(8, 4, 3, 3) * (torch.rand(8, 4, 3, 3) < 0.5)
    layer = SparseConv2d.from_weight(weight, torch.randn(8), padding=1, backend="cpu")
    x = torch.randn(2, 4, 5, 5)
    signature = (exported := torch.export.export(layer, (x,), strict=strict)).graph_signature
    assert not signature.lifted_tensor_constants  # no tensor of the eager arguments baked in
    assert {"bias", "layout_0"} <= set(signature.buffers)
    assert list(signature.non_persistent_buffers) == ["layout_0"]
    assert torch.equal(exported.module()(x), layer(x))


def compiled_model() -> nn.Module:
    """A small model compiled with every layer packed on the C++ backend (three quarters of
    each layer's output rows pruned)."""
    model = nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 4 * 4, 8)
    ).eval()
    with torch.no_grad():
        for layer in (model[0], model[3]):
            layer.weight[layer.weight.shape[0] // 4 :] = 0
    compiled = compile(model, None, backend="cpu", measure=False, verify=False)
    assert compiled[0].backend == compiled[3].backend == "cpu"
    return compiled


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_an_input_of_another_dtype_is_refused_with_how_to_convert_the_layer(backend):
    conv = SparseConv2d.from_conv(nn.Conv2d(4, 8, 3), structure="channel", backend=backend)
    linear = SparseLinear.from_weight(torch.randn(6, 4), structure="channel", backend=backend)
    for layer, x in ((conv, torch.randn(1, 4, 5, 5)), (linear, torch.randn(2, 4))):
        expected = layer(x)
        with pytest.raises(
            SparsekitError,
            match=r"input dtype torch.float16 differs from the weight's torch.float32; convert "
            r"the module with \.to\(torch.float16\)",
        ):
            layer(x.half())
        assert layer.half().config["dtype"] == "torch.float16"  # what save writes
        assert_matches(layer(x.half()), expected.double(), torch.float16)


def test_a_compiled_layer_names_the_layer_it_replaced_on_a_wrong_dtype():
    with pytest.raises(SparsekitError, match="SparseConv2d '0': input dtype torch.float64"):
        compiled_model()(torch.randn(2, 16, 4, 4, dtype=torch.float64))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_is_refused_with_what_to_use_instead():
    compiled = compiled_model()
    for module in (compiled, compiled[0], compiled[3]):
        with pytest.raises(SparsekitError, match="TorchScript .* use torch.compile or torch.expo"):
            torch.jit.script(module)

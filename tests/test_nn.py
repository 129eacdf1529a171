import pytest
import torch
from torch import nn

from sparsekit import SparseConv2d, SparseLinear, SparsekitError
from sparsekit.nn import from_config

from .helpers import assert_matches


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
@pytest.mark.parametrize("backend", ["dense", "cpu", "torch", "reference"])
def test_sparse_conv2d_equals_the_conv_it_replaces(conv, backend):
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.5)
    structure = "kernel" if backend == "torch" else "group"  # torch: whole kernels only
    layer = SparseConv2d.from_conv(conv, structure=structure, backend=backend)
    x = torch.randn(2, 4, 9, 8)
    assert_matches(layer(x), conv(x).double(), torch.float32)
    assert layer.backend == backend and repr(layer).startswith("SparseConv2d(")


@pytest.mark.parametrize("backend", ["dense", "cpu", "torch", "reference"])
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
    partial = SparseConv2d.from_weight(torch.randn(8, 4, 3, 3) * (torch.rand(8, 4, 3, 3) < 0.3),
                                       structure="group", backend="cpu")
    assert not partial.supports("torch")
    with pytest.raises(SparsekitError, match="whole kernels"):
        partial.with_backend("torch")
    with pytest.raises(SparsekitError, match="cannot move"):
        SparseLinear.from_weight(torch.randn(3, 3), backend="dense").with_backend("cpu")


def test_summary_of_a_dense_layer():
    layer = SparseLinear.from_weight(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), backend="dense")
    s = layer.summary()
    assert s["structure"] == "dense" and s["nnz"] == 1 and s["density"] == 0.25 and s["flops_ratio"] == 1


def test_bad_layer_arguments():
    with pytest.raises(SparsekitError, match="backend"):
        SparseLinear.from_weight(torch.randn(2, 2), backend="gpu")
    with pytest.raises(SparsekitError, match="malformed"):
        from_config({"type": "SparseConv2d"})
    with pytest.raises(SparsekitError, match="layer3.conv: contains NaN"):
        SparseLinear.from_weight(torch.tensor([[float("nan")]]), name="layer3.conv")

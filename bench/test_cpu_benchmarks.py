"""pytest-benchmark suite of the CPU ops and of ``bench.reproduce``'s models: ``pytest bench/``
(not part of the test run).

Each case is timed twice, torch dense and sparsekit on the same input, so the saved
benchmark JSON holds both sides of every ratio."""

import pytest
import torch
import torch.nn.functional as F

import sparsekit

from .masks import conv_mask
from .reproduce import masks_for

CASES = [(256, 8, 64, "group", 0.8), (512, 4, 64, "group", 0.8), (256, 16, 16, "channel", 0.8)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: "-".join(map(str, c)))
def layer(request):
    channels, size, batch, structure, sparsity = request.param
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(channels, channels, 3, 3, generator=gen)
    weight *= conv_mask(structure, channels, sparsity, gen)
    x = torch.randn(batch, channels, size, size, generator=gen)
    return x, weight, sparsekit.SparseConv2d.from_weight(weight, padding=1, structure=structure)


@pytest.mark.parametrize("side", ["dense", "sparsekit"])
def test_conv3x3(benchmark, layer, side):
    x, weight, sparse = layer
    run = (lambda: F.conv2d(x, weight, None, 1, 1)) if side == "dense" else (lambda: sparse(x))
    with torch.inference_mode():
        out = benchmark(run)
    assert out.shape == (x.shape[0], weight.shape[0], *x.shape[2:])


MODEL_CASES = [
    ("resnet18", "refill", 0.8),
    ("resnet18", "regroup", 0.8),
    ("vgg16_bn", "refill", 0.8),
]


@pytest.fixture(scope="module", params=MODEL_CASES, ids=lambda c: "-".join(map(str, c)))
def model(request):
    """(input, the masked model compiled dense, compiled with measured plans), as
    ``bench.reproduce`` builds them (batch 16, fp32, channels_last)."""
    name, transform, sparsity = request.param
    gen = torch.Generator().manual_seed(0)
    net = sparsekit.zoo.create(name).eval()
    masks = masks_for(net, transform, sparsity)
    shape = sparsekit.zoo.INPUT_SHAPES[name]
    sparsekit.zoo.calibrate_batchnorm(net, [torch.randn(8, *shape, generator=gen)], masks)
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(16, *shape, generator=gen).contiguous(memory_format=torch.channels_last)
    dense = sparsekit.compile(
        net, masks, x, backend="dense", measure=False, verify=False, compact_channels=False
    )
    return x, dense, sparsekit.compile(net, masks, x)


@pytest.mark.parametrize("side", ["dense", "sparsekit"])
def test_model(benchmark, model, side):
    x, dense, compiled = model
    with torch.inference_mode():
        out = benchmark(dense if side == "dense" else compiled, x)
    assert out.shape == (x.shape[0], 10)

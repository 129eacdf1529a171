"""pytest-benchmark suite of the CPU ops: ``pytest bench/`` (not part of the test run).

Each case is timed twice, torch dense and sparsekit on the same input, so the saved
benchmark JSON holds both sides of every ratio."""

import pytest
import torch
import torch.nn.functional as F

import sparsekit

from .masks import conv_mask

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

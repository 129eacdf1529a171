"""Non-finite inputs, as docs/compile.md describes them: a packed layer multiplies only the weights
it stores, so a NaN or inf in its input makes exactly the outputs non-finite whose stored weights
read it (the kept weights and the zeros a plan stores inside its blocks), not every output whose
receptive field holds it, as in the dense masked layer; every other output is what the dense
masked layer gives with that entry zeroed, and a finite input gives the dense result.

The predictions are made here from the weight and the pack's block index alone, with torch's dense
ops on 0/1 tensors, never from a backend."""

import math

import pytest
import torch
import torch.nn.functional as F

from sparsekit import SparseConv2d, SparseLinear, backends, pack

from .helpers import assert_matches, random_pattern

# (backend, kernel size, groups, mask kind): every backend runs all three plans of each. Channel
# and group plans store zeros inside their blocks in every case, kernel plans in the 3x3 "mixed"
# ones only, so both sides of the rule are tested.
CASES = [
    ("cpu", 3, 1, "mixed"),
    ("cpu", 3, 2, "mixed"),
    ("cpu", 3, 1, "kernel"),
    ("torch", 3, 1, "kernel"),  # the torch backend runs blocks of whole kernels only
    ("torch", 1, 1, "mixed"),
]
STRUCTURES = ["group", "kernel", "channel"]
NON_FINITE = [math.nan, math.inf, -math.inf]


def stored(packed) -> torch.Tensor:
    """Bool, of the weight's shape: where a block of the pack holds a value, kept or zero."""
    where = torch.zeros(packed.out_features, math.prod(packed.weight_shape[1:]), dtype=torch.bool)
    for rows, cols, _ in packed.blocks():
        where[rows.long()[:, None], cols.long()] = True
    return where.view(packed.weight_shape)


def conv_reach(bad: torch.Tensor, weights: torch.Tensor, padding: int, groups: int):
    """Bool: the outputs of a conv whose ``weights`` (bool) read an entry where ``bad`` is True."""
    return F.conv2d(bad.double(), weights.double(), None, 1, padding, 1, groups) > 0


def conv_layer(backend, kernel, groups, kind, structure):
    """(layer, masked weight, bias, pack) of a 24-row conv over 16 channels."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 16 // groups, kernel, kernel, generator=gen)
    pattern = random_pattern(
        24, weight[0].numel(), kernel_area=kernel * kernel, kind=kind, density=0.3, gen=gen
    )
    weight = weight * pattern.view(weight.shape)
    bias = torch.randn(24, generator=gen)
    packed = pack(weight, structure=structure, groups=groups)
    assert backends.get(backend).supports(packed), "the case list promises every plan runs"
    layer = SparseConv2d.from_weight(
        weight, bias, padding=kernel // 2, groups=groups, backend=backend, packed=packed
    )
    return layer, weight, bias, packed


@pytest.mark.parametrize("value", NON_FINITE, ids=str)
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("backend, kernel, groups, kind", CASES)
def test_a_non_finite_input_reaches_the_outputs_whose_stored_weights_read_it(
    backend, kernel, groups, kind, structure, value
):
    layer, weight, bias, packed = conv_layer(backend, kernel, groups, kind, structure)
    x = torch.randn(2, 16, 9, 9)
    x[0, 3, 4, 5] = value
    x[1, 7, 0, 0] = value  # at a corner: its reach crosses the padding
    bad, padding = ~x.isfinite(), kernel // 2

    y = layer(x)
    reached = ~y.isfinite()
    assert torch.equal(reached, conv_reach(bad, stored(packed), padding, groups))
    kept = conv_reach(bad, weight != 0, padding, groups)
    receptive = conv_reach(bad, torch.ones_like(weight, dtype=torch.bool), padding, groups)
    assert (kept <= reached).all() and (reached <= receptive).all()
    if packed.summary()["fill"] == 1:  # no zeros stored: exactly the kept weights' reach
        assert torch.equal(reached, kept)
    zeroed = F.conv2d(
        x.masked_fill(bad, 0).double(), weight.double(), bias.double(), 1, padding, 1, groups
    )
    assert_matches(y[~reached], zeroed[~reached], torch.float32)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("backend, kernel, groups, kind", CASES)
def test_a_finite_input_gives_the_dense_result(backend, kernel, groups, kind, structure):
    layer, weight, bias, _ = conv_layer(backend, kernel, groups, kind, structure)
    x = torch.randn(2, 16, 9, 9)
    expected = F.conv2d(x.double(), weight.double(), bias.double(), 1, kernel // 2, 1, groups)
    assert_matches(layer(x), expected, torch.float32)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_a_linear_layer_follows_the_same_rule(backend, structure):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 64, generator=gen)
    weight = weight * random_pattern(24, 64, kernel_area=1, kind="mixed", density=0.3, gen=gen)
    packed = pack(weight, structure=structure)
    layer = SparseLinear.from_weight(weight, backend=backend, packed=packed)
    x = torch.randn(5, 64)
    x[1, 7] = math.nan

    reached = ~layer(x).isfinite()
    assert torch.equal(reached, F.linear(x.isnan().double(), stored(packed).double()) > 0)

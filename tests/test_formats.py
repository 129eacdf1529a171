import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sparsekit
from sparsekit import SparsekitError, pack, unpack
from sparsekit.planners import PLANNERS

from .helpers import random_pattern

STRUCTURES = [*PLANNERS, "auto"]


@st.composite
def weights_and_masks(draw):
    """Linear or Conv2d weights (any kernel size, groups) with a 0/1 mask of a random dtype."""
    groups = draw(st.sampled_from([1, 2, 3]))
    out = groups * draw(st.integers(1, 12))
    kernel = draw(st.sampled_from([(), (1, 1), (3, 3), (1, 3), (5, 2)]))
    shape = (out, draw(st.integers(1, 6)), *kernel)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
    weight = torch.randn(shape, generator=gen).to(dtype)
    kernel_area = weight[0, 0].numel()
    pattern = random_pattern(
        out,
        weight[0].numel(),
        kernel_area=kernel_area,
        kind=draw(st.sampled_from(["random", "channel", "kernel", "blocks", "mixed"])),
        density=draw(st.sampled_from([0.0, 0.2, 0.6, 1.0])),
        gen=gen,
    ).view(shape)
    mask = pattern.to(draw(st.sampled_from([torch.bool, torch.int64, torch.float32])))
    return weight, mask, groups


@pytest.mark.parametrize("structure", STRUCTURES)
@given(case=weights_and_masks())
def test_round_trip_is_exact(structure, case):
    weight, mask, groups = case
    weight_before, mask_before = weight.clone(), mask.clone()
    packed = pack(weight, mask, structure=structure, groups=groups)
    restored = unpack(packed)
    expected = weight * mask.to(weight.dtype)
    assert restored.dtype == weight.dtype and restored.shape == weight.shape
    assert torch.equal(restored, expected)
    kept = mask.bool()
    # bit for bit on every kept weight; elsewhere both are zeros (possibly of opposite sign)
    assert torch.equal(
        restored[kept].view(-1).view(torch.uint8), weight[kept].view(-1).view(torch.uint8)
    )
    assert torch.equal(weight, weight_before) and torch.equal(mask, mask_before)
    assert packed.row_idx.dtype == packed.col_idx.dtype == torch.int32
    assert packed.block_ptr.shape == (3, packed.num_blocks + 1)
    if not (weight * mask).any():
        assert packed.num_blocks == 0 and packed.values.numel() == 0


def test_mask_none_uses_the_weights_zeros():
    weight = torch.randn(8, 4, 3, 3)
    weight[weight.abs() < 0.8] = 0
    packed = pack(weight, None, structure="group")
    assert torch.equal(unpack(packed), weight)
    assert packed.summary()["nnz"] == int((weight != 0).sum())


def test_packed_weight_describes_its_layer():
    weight = torch.randn(6, 2, 3, 5)
    packed = pack(weight, torch.rand_like(weight) < 0.5, structure="channel", groups=3)
    assert packed.out_features == 6 and packed.in_features == 6 and packed.kernel_size == (3, 5)
    summary = packed.summary()
    assert summary["weight_shape"] == [6, 2, 3, 5] and summary["groups"] == 3
    assert summary["structure"] == "channel" and summary["blocks"] == packed.num_blocks
    assert "structure='channel'" in repr(packed)
    blocks = list(packed.blocks())
    assert len(blocks) == packed.num_blocks
    for rows, cols, tile in blocks:
        assert tile.shape == (rows.numel(), cols.numel())


def test_all_zero_mask_gives_no_blocks():
    weight = torch.randn(4, 3, 3, 3)
    packed = pack(weight, torch.zeros_like(weight), structure="auto")
    assert packed.num_blocks == 0 and packed.summary()["flops_ratio"] == 0
    assert torch.equal(unpack(packed), torch.zeros_like(weight))


@pytest.mark.parametrize(
    ("weight", "mask", "message"),
    [
        (torch.randn(4, 3), torch.ones(4, 4), "shape"),
        (torch.randn(4, 3), torch.full((4, 3), 0.5), "0 or 1"),
        (torch.randn(4, 3), torch.full((4, 3), 2), "0 or 1"),
        (torch.randn(4, 3), torch.full((4, 3), float("nan")), "0 or 1"),
        (torch.tensor([[1.0, float("nan")]]), None, "NaN or inf"),
        (torch.tensor([[1.0, float("inf")]]), None, "NaN or inf"),
        (torch.randn(0, 3), None, "zero-size"),
        (torch.randn(4, 0, 3, 3), None, "zero-size"),
        (torch.randn(4, 3, 3), None, "Linear"),
        (torch.ones(4, 3, dtype=torch.int64), None, "floating-point"),
        ([[1.0]], None, "tensor"),
        (torch.randn(4, 3), [[1]], "tensor"),
    ],
)
def test_bad_input_is_a_sparsekit_error(weight, mask, message):
    with pytest.raises(SparsekitError, match=message):
        pack(weight, mask, name="layer1.conv")


def test_error_names_the_layer():
    with pytest.raises(SparsekitError, match="layer1.conv"):
        pack(torch.randn(2, 2), torch.ones(3, 3), name="layer1.conv")


def test_bad_groups_and_structure():
    weight = torch.randn(6, 2, 3, 3)
    with pytest.raises(SparsekitError, match="groups"):
        pack(weight, groups=4)
    with pytest.raises(SparsekitError, match="structure"):
        pack(weight, structure="blocky")


def test_int32_index_overflow_is_refused_before_any_work():
    huge = torch.empty(1, 2**31, device="meta")  # no memory behind it
    with pytest.raises(SparsekitError, match="int32"):
        pack(huge)


def test_sparsekit_error_is_a_value_error():
    assert issubclass(sparsekit.SparsekitError, ValueError)

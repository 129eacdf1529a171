import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsekit import SparsekitError
from sparsekit.planners import PLANNERS, plan

from .helpers import random_pattern

KINDS = ("random", "channel", "kernel", "blocks", "mixed")
TICKET = Path(__file__).parent / "data" / "structure_lth_resnet18_cifar10_blocks.json"


def assert_exact_cover(block_plan, pattern: torch.Tensor, groups: int) -> None:
    """Every kept weight in exactly one block; blocks sorted, unique, in range, inside a group."""
    out, cols = pattern.shape
    covered = torch.zeros(out, cols, dtype=torch.int64)
    for b in block_plan.blocks:
        assert b.rows.numel() > 0 and b.cols.numel() > 0
        assert torch.all(b.rows[1:] > b.rows[:-1]) and torch.all(b.cols[1:] > b.cols[:-1])
        assert (
            0 <= b.rows.min() and b.rows.max() < out and 0 <= b.cols.min() and b.cols.max() < cols
        )
        group_of_rows = b.rows // (out // groups)
        assert torch.all(group_of_rows == group_of_rows[0])
        covered[b.rows[:, None], b.cols] += 1
    assert torch.all(covered[pattern] == 1), "a kept weight is covered zero or several times"
    assert block_plan.nnz == int(pattern.sum())
    assert block_plan.stored == sum(b.rows.numel() * b.cols.numel() for b in block_plan.blocks)


@st.composite
def layer_patterns(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    rows = groups * draw(st.integers(1, 40))
    kernel_area = draw(st.sampled_from([1, 4, 9]))
    cols = kernel_area * draw(st.integers(1, 12))
    kind = draw(st.sampled_from(KINDS))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    pattern = random_pattern(
        rows, cols, kernel_area=kernel_area, kind=kind, density=density, gen=gen
    )
    return pattern, groups, kernel_area


@pytest.mark.parametrize("structure", [*PLANNERS, "auto"])
@given(case=layer_patterns())
def test_every_planner_is_an_exact_cover(structure, case):
    pattern, groups, kernel_area = case
    block_plan = plan(pattern, structure, groups=groups, kernel_area=kernel_area)
    assert_exact_cover(block_plan, pattern, groups)
    if not pattern.any():
        assert block_plan.num_blocks == 0
    if structure == "kernel":
        for b in block_plan.blocks:  # whole kernels only
            assert b.cols.numel() % kernel_area == 0
            assert torch.all(
                b.cols.view(-1, kernel_area) % kernel_area == torch.arange(kernel_area)
            )


@given(case=layer_patterns())
def test_auto_takes_the_cheapest_plan(case):
    pattern, groups, kernel_area = case
    chosen = plan(pattern, "auto", groups=groups, kernel_area=kernel_area)
    costs = [plan(pattern, s, groups=groups, kernel_area=kernel_area).cost for s in PLANNERS]
    assert chosen.cost == min(costs)


def test_planners_are_deterministic():
    gen = torch.Generator().manual_seed(3)
    pattern = random_pattern(96, 72, kernel_area=9, kind="mixed", density=0.3, gen=gen)
    for structure in PLANNERS:
        a, b = (plan(pattern, structure, kernel_area=9) for _ in range(2))
        assert [(x.rows.tolist(), x.cols.tolist()) for x in a.blocks] == [
            (x.rows.tolist(), x.cols.tolist()) for x in b.blocks
        ]


def test_channel_plan_drops_empty_rows_and_columns():
    pattern = torch.zeros(6, 8, dtype=torch.bool)
    pattern[1, 2] = pattern[4, 6] = True
    (block,) = plan(pattern, "channel").blocks
    assert block.rows.tolist() == [1, 4] and block.cols.tolist() == [2, 6]


def test_kernel_plan_groups_rows_by_kernel_set():
    pattern = torch.zeros(4, 3 * 4, dtype=torch.bool)  # 3 input channels of 2x2 kernels
    pattern[0, 0] = pattern[2, 3] = True  # rows 0 and 2 use kernel 0
    pattern[1, 8] = True  # row 1 uses kernel 2; row 3 nothing
    blocks = {
        tuple(b.rows.tolist()): b.cols.tolist()
        for b in plan(pattern, "kernel", kernel_area=4).blocks
    }
    assert blocks == {(0, 2): [0, 1, 2, 3], (1,): [8, 9, 10, 11]}


def test_group_plan_recovers_disjoint_dense_blocks():
    gen = torch.Generator().manual_seed(0)
    pattern = torch.zeros(128, 576, dtype=torch.bool)
    rows = torch.randperm(128, generator=gen).view(4, 32)
    for part in rows:
        pattern[part[:, None], torch.randperm(576, generator=gen)[:200]] = True
    block_plan = plan(pattern, "group", kernel_area=9)
    assert block_plan.num_blocks == 4 and block_plan.density == 1.0
    assert sorted(sorted(b.rows.tolist()) for b in block_plan.blocks) == sorted(
        sorted(p.tolist()) for p in rows
    )


def test_group_plan_on_the_structure_lth_ticket():
    """The paper's regrouped ResNet-18 ticket: the group planner finds blocks at least as dense
    and as few as the paper's own, and auto never prefers a plan the cost model ranks worse."""
    layers = json.loads(TICKET.read_text())["layers"]
    checked = 0
    for name, layer in layers.items():
        out, cin, kh, kw = layer["weight_shape"]
        pattern = torch.zeros(out, cin * kh * kw, dtype=torch.bool)
        paper_blocks = [(r, c) for r, c in layer["blocks"] if r and c]
        for r, c in paper_blocks:
            pattern[torch.tensor(r)[:, None], torch.tensor(c)] = True
        if pattern.all():
            continue
        block_plan = plan(pattern, "group", kernel_area=kh * kw)
        assert_exact_cover(block_plan, pattern, 1)
        paper_stored = sum(len(r) * len(c) for r, c in paper_blocks)
        assert block_plan.stored <= paper_stored, name
        assert plan(pattern, "auto", kernel_area=kh * kw).cost <= block_plan.cost
        checked += 1
    assert checked >= 8  # layer3 and layer4 convs are block sparse


def test_plan_statistics():
    pattern = torch.zeros(8, 8, dtype=torch.bool)
    pattern[:4, :2] = True
    pattern[0, 7] = True
    block_plan = plan(pattern, "channel")
    assert block_plan.nnz == 9 and block_plan.stored == 4 * 3
    assert block_plan.density == pytest.approx(9 / 12)
    assert block_plan.flops_ratio == pytest.approx(12 / 64)
    assert set(block_plan.summary()) >= {"structure", "blocks", "density", "flops_ratio", "cost"}


def test_unknown_structure_is_an_error():
    with pytest.raises(SparsekitError, match="structure"):
        plan(torch.ones(2, 2, dtype=torch.bool), "diagonal")

"""Exact block planners: every kept weight lands in exactly one block, none is dropped.

Each planner maps the bool pattern of one convolution group, ``[rows, cols]``, to a list of
``Block``; ``plan`` runs it on every group of a layer and picks among them for ``"auto"``.
"""

import torch

from ..errors import SparsekitError
from . import group
from .blocks import Block, BlockPlan


def _indices(flags: torch.Tensor) -> torch.Tensor:
    return flags.nonzero().flatten()


def plan_dense(pattern: torch.Tensor, kernel_area: int) -> list[Block]:
    """The whole group as one block (no blocks when nothing is kept)."""
    if not pattern.any():
        return []
    rows, cols = pattern.shape
    return [Block(torch.arange(rows), torch.arange(cols))]


def plan_channel(pattern: torch.Tensor, kernel_area: int) -> list[Block]:
    """One block of the non-empty output rows x the non-empty input columns."""
    rows, cols = _indices(pattern.any(1)), _indices(pattern.any(0))
    return [Block(rows, cols)] if rows.numel() else []


def plan_kernel(pattern: torch.Tensor, kernel_area: int) -> list[Block]:
    """Rows with the same set of non-zero kh x kw kernels share a block of those whole kernels."""
    out, cols = pattern.shape
    kernels = pattern.view(out, cols // kernel_area, kernel_area).any(2)
    sets, which = torch.unique(kernels, dim=0, return_inverse=True)
    offsets = torch.arange(kernel_area)
    blocks = []
    for i, kernel_set in enumerate(sets):
        if not kernel_set.any():
            continue
        kept = _indices(kernel_set)
        cols = (kept[:, None] * kernel_area + offsets).flatten()
        blocks.append(Block(_indices(which == i), cols))
    return blocks


def plan_group(pattern: torch.Tensor, kernel_area: int) -> list[Block]:
    """Rows partitioned by pymetis into groups that share columns; see ``group``."""
    return group.plan_row_groups(pattern)


PLANNERS = {
    "dense": plan_dense,
    "channel": plan_channel,
    "kernel": plan_kernel,
    "group": plan_group,
}
STRUCTURES = (*PLANNERS, "auto")


def plan(
    pattern: torch.Tensor, structure: str = "auto", *, groups: int = 1, kernel_area: int = 1
) -> BlockPlan:
    """Plan the blocks of a layer's kept-weight ``pattern`` (bool, ``[out, cols]``).

    ``cols`` is one group's ``in/groups * kernel_area`` columns in ``weight.reshape(out, -1)``
    order. ``structure="auto"`` returns the plan of lowest ``BlockPlan.cost``; ties go to the
    earlier of dense, channel, kernel, group.
    """
    if structure == "auto":
        plans = [plan(pattern, s, groups=groups, kernel_area=kernel_area) for s in PLANNERS]
        return min(plans, key=lambda p: p.cost)
    if structure not in PLANNERS:
        raise SparsekitError(f"structure: {structure!r} is not one of {', '.join(STRUCTURES)}")
    out, cols = pattern.shape
    if out % groups or cols % kernel_area:
        raise SparsekitError(
            f"pattern of shape {tuple(pattern.shape)} does not split into {groups} groups of "
            f"whole {kernel_area}-element kernels"
        )
    pattern = pattern.to(device="cpu", dtype=torch.bool)
    rows_per_group = out // groups
    blocks = []
    for g in range(groups):
        first = g * rows_per_group
        for b in PLANNERS[structure](pattern[first : first + rows_per_group], kernel_area):
            blocks.append(Block(b.rows + first, b.cols))
    return BlockPlan(structure, out, cols, groups, tuple(blocks), int(pattern.sum()))

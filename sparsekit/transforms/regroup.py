"""IMP-Regroup (Structure-LTH, Algorithm 3) with pymetis: make a mask out of dense blocks.

Training-time transform: inside a block every weight is kept (refilled where IMP had pruned
it) and every weight outside the blocks is pruned; compile() then packs the blocks exactly.

Rows are partitioned by their column patterns (pymetis on the row-similarity graph, as the
group planner does). Per part, columns are taken in decreasing order of their non-zero count
in the part until every row has more chosen columns than ``col_threshold`` times its non-zeros
left outside them (and at least every column all the part's rows keep); the block keeps the
part's rows that fill it best, cut to a multiple of ``row_multiple`` where that leaves at least
``min_rows``, and is dropped if it has fewer than ``min_rows`` rows or ``min_cols`` columns. Rows
without a block are partitioned again while a new block can be found (``max_rounds=1``: one pass,
one block per part at most). The number of parts shrinks on small layers so that a part can reach
``min_rows``; a mask in which no block can be found is returned unchanged, as the reference code
does.

Hyperparameters: the paper's b1 and b2 (the least rows and columns of a block) are
``min_rows`` and ``min_cols``; its t1 (1.5 in the public code) is ``col_threshold``. The public
code's regroup(t1=1.5, nn=32, B2=16, cn=8) has no separate t2; its ``nn`` is ``row_multiple``,
its ``cn`` (hMETIS parts) is ``parts`` and its ``B2`` (parts of 16 rows or fewer are dropped)
gives the default ``min_rows=17``.
"""

import pymetis
import torch

from ..errors import SparsekitError
from ..masks import check_mask
from ..planners import Block
from ..planners.group import similarity_graph


def _partition(pattern: torch.Tensor, parts: int, seed: int) -> list[torch.Tensor]:
    """Row indices of each part of ``pattern``'s rows (all non-empty)."""
    rows = pattern.shape[0]
    if parts <= 1 or rows <= parts:
        return [torch.arange(rows)] if parts <= 1 else [torch.tensor([r]) for r in range(rows)]
    graph, weights = similarity_graph(pattern)
    membership = torch.tensor(
        pymetis.part_graph(
            parts, graph, eweights=weights, options=pymetis.Options(seed=seed)
        ).vertex_part
    )
    return [(membership == p).nonzero().flatten() for p in membership.unique()]


def _block_of(part: torch.Tensor, col_threshold: float):
    """(chosen columns, rows ordered by how much of them the block covers) for a part."""
    counts = part.sum(0)
    order = torch.sort(counts, descending=True, stable=True).indices
    order = order[counts[order] > 0]
    inside = part[:, order].to(torch.int64).cumsum(1)  # [rows, width]: kept inside the first w
    outside = part.sum(1, keepdim=True) - inside
    width = torch.arange(1, order.numel() + 1)
    fits = (width > col_threshold * outside).all(0)
    chosen = int(fits.nonzero()[0]) + 1 if fits.any() else order.numel()
    full = int((counts[order] == part.shape[0]).sum())  # columns every row keeps: no refill
    chosen = max(chosen, full)
    coverage = inside[:, chosen - 1]
    return torch.sort(order[:chosen]).values, torch.sort(
        coverage, descending=True, stable=True
    ).indices


def regroup(
    mask: torch.Tensor,
    *,
    parts: int = 8,
    min_rows: int = 17,
    min_cols: int = 1,
    col_threshold: float = 1.5,
    row_multiple: int = 32,
    max_rounds: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, list[Block]]:
    """The block mask (same shape and dtype as ``mask``) and its blocks (rows x columns of
    ``mask.reshape(out, -1)``, disjoint rows); see the module doc for the algorithm."""
    check_mask(mask, mask, "mask")
    if parts < 1 or min_rows < 1 or min_cols < 1 or row_multiple < 1 or col_threshold <= 0:
        raise SparsekitError(
            "regroup: parts, min_rows, min_cols, row_multiple and col_threshold must be positive"
        )
    pattern = mask.reshape(mask.shape[0], -1).bool().cpu()
    free = pattern.any(1).nonzero().flatten()  # rows not yet in a block
    blocks: list[Block] = []
    rounds = 0
    while free.numel() >= min_rows and (max_rounds is None or rounds < max_rounds):
        rounds += 1
        found = []
        usable_parts = max(1, min(parts, free.numel() // min_rows))  # parts of >= min_rows rows
        for members in _partition(pattern[free], usable_parts, seed):
            rows = free[members]
            if rows.numel() < min_rows:
                continue
            cols, best_first = _block_of(pattern[rows], col_threshold)
            cut = rows.numel() // row_multiple * row_multiple
            if cut >= min_rows:
                best_first = best_first[:cut]
            if cols.numel() >= min_cols:
                found.append(Block(torch.sort(rows[best_first]).values, cols))
        if not found:
            break
        blocks += found
        taken = torch.cat([b.rows for b in found])
        free = free[~torch.isin(free, taken)]
    if not blocks:  # nothing dense to be found: the mask stays as it is (unstructured)
        return mask.clone(), blocks
    result = torch.zeros_like(pattern)
    for b in blocks:
        result[b.rows[:, None], b.cols] = True
    return result.view(mask.shape).to(mask.dtype), blocks

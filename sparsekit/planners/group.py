"""The group planner: partition rows with pymetis so that rows in a part share columns.

Rows with the same columns are merged into one vertex weighted by their count; vertices are
joined by edges weighted by shared non-zero columns (each keeps only its ``NEIGHBOURS`` most
similar vertices, so the graph stays small on wide layers). METIS minimises the weight cut
between parts of balanced row counts, i.e. keeps rows with overlapping columns together. A part
becomes one block (its rows x the union of their columns), or two when splitting off sparsely
used columns lowers the cost. Several part counts are tried (one per row size in ``PART_ROWS``,
and one part per distinct row pattern) and the cheapest plan under the cost model is kept; a
single block of all non-empty rows is always a candidate.
"""

import pymetis
import torch

from . import cost
from .blocks import Block

PART_ROWS = (8, 16, 32, 64, 128)
NEIGHBOURS = 16
SPLIT_FILL = 0.5  # columns used by fewer than this fraction of a part's rows may split off


def similarity_graph(pattern: torch.Tensor) -> tuple[pymetis.CSRAdjacency, list[int]]:
    """kNN graph of rows and its edge weights (shared columns), symmetric, no self loops."""
    rows = pattern.shape[0]
    p = pattern.to(torch.float32)
    shared = (p @ p.T).round_().to(torch.int64)  # exact: counts stay far below 2**24
    shared.fill_diagonal_(0)
    k = min(NEIGHBOURS, rows - 1)
    weight, nbr = shared.topk(k, dim=1)
    keep = torch.zeros_like(shared, dtype=torch.bool)
    keep.scatter_(1, nbr, weight > 0)
    keep |= keep.T.clone()
    src, dst = keep.nonzero(as_tuple=True)  # row-major, so already grouped by source
    xadj = torch.zeros(rows + 1, dtype=torch.int64)
    xadj[1:] = torch.bincount(src, minlength=rows).cumsum(0)
    graph = pymetis.CSRAdjacency(adj_starts=xadj.tolist(), adjacent=dst.tolist())
    return graph, shared[src, dst].tolist()


def _partition_blocks(pattern: torch.Tensor, rows: torch.Tensor, part_of_row) -> list[Block]:
    """The blocks of ``rows`` (of ``pattern``) split into parts by ``part_of_row``: per part one
    block (its rows x the union of their columns), or a core of the columns most of its rows use
    and a residual block of the rest if that is cheaper. Column use is counted for all parts at
    once."""
    sub = pattern[rows]
    parts = int(part_of_row.max()) + 1
    members = torch.nn.functional.one_hot(part_of_row, parts).T.to(torch.float32)
    used = members @ sub.to(torch.float32)  # [parts, cols] rows using each column; exact
    size = members.sum(1, keepdim=True)
    core = used >= SPLIT_FILL * size
    rest = (used > 0) & ~core
    reads_rest = (sub & rest[part_of_row]).any(1)
    order = torch.argsort(part_of_row, stable=True)
    members_of = order.split(size.flatten().long().tolist())
    blocks = []
    for part_rows, cols, core_cols, rest_cols, members in zip(
        (rows[m] for m in members_of),
        _columns(used > 0),
        _columns(core),
        _columns(rest),
        members_of,
    ):
        if not members.numel():  # METIS may leave a part empty
            continue
        whole = [Block(part_rows, cols)]
        if not core_cols.numel() or not rest_cols.numel():
            blocks += whole
            continue
        split = [Block(part_rows, core_cols), Block(part_rows[reads_rest[members]], rest_cols)]
        blocks += split if _cost(split) < _cost(whole) else whole
    return blocks


def _columns(selected: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each row's selected columns, found by one nonzero over all rows."""
    return selected.nonzero()[:, 1].split(selected.sum(1).tolist())


def _cost(blocks: list[Block]) -> float:
    return cost.plan_cost(blocks)


def plan_row_groups(pattern: torch.Tensor, part_rows=PART_ROWS, seed: int = 0) -> list[Block]:
    """Exact block cover of ``pattern`` ([rows, cols] bool) by pymetis row groups."""
    active = pattern.any(1).nonzero().flatten()
    if active.numel() == 0:
        return []
    best = _partition_blocks(pattern, active, torch.zeros_like(active))
    distinct, vertex_of_row, counts = pattern[active].unique(
        dim=0, return_inverse=True, return_counts=True
    )
    vertices = distinct.shape[0]
    if vertices < 2:
        return best
    graph, edge_weights = similarity_graph(distinct)
    options = pymetis.Options(seed=seed)
    part_counts = {min(vertices, -(-active.numel() // size)) for size in part_rows} | {vertices}
    for parts in sorted(part_counts - {1}):
        if parts == vertices:
            membership = torch.arange(vertices)
        else:
            membership = torch.tensor(
                pymetis.part_graph(
                    parts, graph, vweights=counts.tolist(), eweights=edge_weights, options=options
                ).vertex_part
            )
        blocks = _partition_blocks(pattern, active, membership[vertex_of_row])
        if _cost(blocks) < _cost(best):
            best = blocks
    return best

"""The cost model that ranks block plans when nothing has been measured.

Unit: multiply-adds of the dense layer per output position (pixel or batch row); the dense
layer, run by the vendor library, costs ``out * cols``. The CPU kernel reads its input from
padded planes without gathers (``csrc/cpu/kernels/block_conv.h``) and runs blocks that own the
same rows as one, in register tiles of 6, 4, 2 and 1 rows; a tile's cost per column is
``ROW_TILE_COST[rows]``: a 6-row tile does 24 vector FMAs per 4 input loads, a 1-row tile only
4, so thin blocks cost more per MAC than tall ones. A packed plan costs

    sum over row groups of |its columns| * sum over its register tiles of ROW_TILE_COST[rows]

The constants are per-MAC costs relative to oneDNN's dense conv, fits on 2 cores (fp32, 3x3 convs
with 256 channels on 16x16 maps: blocks of 1, 2, 4 and 6+ rows); compile() replaces the estimate
by measured latency whenever it has example inputs.
"""

ROW_TILES = (6, 4, 2, 1)  # the kernel's register tiles, tallest first
ROW_TILE_COST = {6: 6 * 1.35, 4: 4 * 1.45, 2: 2 * 1.8, 1: 1 * 3.0}


def _row_cost(rows: int) -> float:
    total = 0.0
    for tile in ROW_TILES:
        total += (rows // tile) * ROW_TILE_COST[tile]
        rows %= tile
    return total


def plan_cost(blocks) -> float:
    """Cost of ``blocks`` (objects with ``rows``/``cols`` index tensors) of one layer."""
    columns = {}  # blocks owning the same rows run as one
    for b in blocks:
        key = tuple(b.rows.tolist())
        columns[key] = columns.get(key, 0) + b.cols.numel()
    return sum(_row_cost(len(rows)) * cols for rows, cols in columns.items())


def dense_cost(out: int, cols: int) -> float:
    return float(out * cols)

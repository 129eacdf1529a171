"""The cost model that ranks block plans when nothing has been measured.

Unit: multiply-adds of the dense layer per output position (pixel or batch row); the dense
layer, run by the vendor library, costs ``out * cols``. The CPU kernel reads its input from
padded planes without gathers (``csrc/cpu/kernels/block_conv.h``) and runs blocks that own the
same rows as one, in register tiles of 6, 4, 2 and 1 rows. A packed plan costs

    sum over row groups of |its columns| * sum over its register tiles of ROW_TILE_COST[rows]

Measured per kept MAC against oneDNN's dense conv (2 cores, fp32, 3x3 conv, 256 channels, 16x16
maps, batch 16, 80% kernel-wise masks whose blocks have R rows): R = 1: 2.3; R = 2, 4, 6, 12, 32:
1.40-1.45. A lone row loads four input vectors for four FMAs and is load-bound; two rows or more
are not. compile() replaces the estimate by measured latency whenever it has example inputs.
"""

ROW_TILES = (6, 4, 2, 1)  # the kernel's register tiles, tallest first
ROW_TILE_COST = {6: 6 * 1.4, 4: 4 * 1.4, 2: 2 * 1.4, 1: 2.3}


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

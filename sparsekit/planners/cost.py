"""The cost model that ranks block plans when nothing has been measured.

Unit: multiply-adds of the dense layer per output position (pixel or batch row); the dense
layer, run by the vendor library, costs ``out * cols``. The CPU backend runs a pack on one of two
kernels (``csrc/cpu/block_ops.cpp``), and so does the model:

- packs whose blocks fill at least 65% of their 16-row panels (by multiply-adds) run on the
  exact-position kernel, which computes each row group's rows rounded up to whole panels:
  ``sum over row groups of ceil(rows / 16) * 16 * |its columns| * EXACT_MAC``;
- the others on the planes kernel, which computes the stored rows in register tiles of 3, 2 and
  1 rows: ``sum over row groups of |its columns| * sum over its tiles of rows * PLANES_MAC[rows]``.

Blocks that own the same rows run as one row group. The constants are per computed multiply-add,
in dense ones: the mean of two runs' medians of ``python -m bench.cost_fit`` (2 Zen 4 cores,
fp32, 3x3 convs with 256 channels at 16x16 b16 and 8x8 b64, 80% kernel-wise masks in blocks of R
rows), single figures ranging over: the exact-position kernel 1.15-1.5 (R = 12-64); the planes
kernel 1.6-2.15 in 3-row tiles, 2.1-2.75 in 2-row ones and 2.4-2.9 in lone rows, which load an
input vector per FMA. The kernels cross at blocks of 10-12 rows, hence the fill. compile()
replaces the estimate by measured latency whenever it has example inputs.
"""

PANEL_ROWS = 16
EXACT_FILL = 0.65  # the exact-position kernel takes packs filling this much of their panels
EXACT_MAC = 1.33
PLANES_TILES = (3, 2, 1)  # the planes kernel's register tiles, tallest first
PLANES_MAC = {3: 1.9, 2: 2.35, 1: 2.65}


def _panel_rows(rows: int) -> int:
    return -(-rows // PANEL_ROWS) * PANEL_ROWS


def _planes_rows(rows: int) -> float:
    total = 0.0
    for tile in PLANES_TILES:
        total += (rows // tile) * tile * PLANES_MAC[tile]
        rows %= tile
    return total


def runs_exact_position(blocks) -> bool:
    """Whether the CPU backend runs ``blocks`` on the exact-position kernel (its panels filled
    enough, by multiply-adds; kernels wider than 64 taps a side, which it never takes, aside)."""
    used = sum(b.rows.numel() * b.cols.numel() for b in blocks)
    computed = sum(_panel_rows(b.rows.numel()) * b.cols.numel() for b in blocks)
    return used >= EXACT_FILL * computed


def plan_cost(blocks) -> float:
    """Cost of ``blocks`` (objects with ``rows``/``cols`` index tensors) of one layer."""
    columns = {}  # blocks owning the same rows run as one
    for b in blocks:
        key = tuple(b.rows.tolist())
        columns[key] = columns.get(key, 0) + b.cols.numel()
    if runs_exact_position(blocks):
        return EXACT_MAC * sum(_panel_rows(len(rows)) * cols for rows, cols in columns.items())
    return sum(_planes_rows(len(rows)) * cols for rows, cols in columns.items())


def dense_cost(out: int, cols: int) -> float:
    return float(out * cols)

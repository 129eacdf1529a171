"""The cost model that ranks block plans when nothing has been measured.

Unit: multiply-adds of the dense layer per output position (pixel or batch row); the dense
layer, run by the vendor library, costs ``out * cols``. A packed plan costs

    MAC_COST * sum over blocks of round_up(rows, ROW_TILE) * cols    its GEMMs, rows padded to
                                                                     the register tile
  + GATHER_COST * sum over groups of |columns used by its blocks|    the implicit im2col: the
                                                                     kernels gather each used
                                                                     column once per tile

so a packed layer must skip enough work to pay for its gather, and many thin blocks lose to a few
tall ones of the same FLOPs. The constants are fits of the CPU kernel on 2 cores against oneDNN
(fp32, 3x3 convs with 64-512 channels on 4x4 to 32x32 maps: a gathered element costs 43-51 dense
MACs, a block MAC 1.1-1.4); compile() replaces the estimate by measured latency whenever it has
example inputs.
"""

import torch

ROW_TILE = 4
MAC_COST = 1.3
GATHER_COST = 50


def plan_cost(blocks, rows_per_group: int | None = None) -> float:
    """Cost of ``blocks`` (objects with ``rows``/``cols`` index tensors) of one layer whose
    groups have ``rows_per_group`` rows (``None``: the blocks are all in one group)."""
    macs = sum(-(-b.rows.numel() // ROW_TILE) * ROW_TILE * b.cols.numel() for b in blocks)
    used_cols = {}
    for b in blocks:
        group = int(b.rows[0]) // rows_per_group if rows_per_group else 0
        used_cols.setdefault(group, []).append(b.cols)
    gathered = sum(torch.cat(cols).unique().numel() for cols in used_cols.values())
    return MAC_COST * macs + GATHER_COST * gathered


def dense_cost(out: int, cols: int) -> float:
    return float(out * cols)

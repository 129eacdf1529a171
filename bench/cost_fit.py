"""Measurements behind the CPU cost model (``sparsekit.planners.cost``).

3x3 convs (256 channels, channels_last, fp32) whose 80% kernel-wise masks give blocks of R rows
each (every row kept, R rows sharing their kept kernels): each is timed against torch's dense
conv in its faster format, and the time per multiply-add the kernel computes is expressed in
dense multiply-adds. The exact-position kernel computes its blocks' rows rounded up to whole
16-row panels; the planes kernel computes the stored rows, in register tiles of 3, 2 and 1 rows.
The constants ``cost.py`` holds are this script's medians.

    python -m bench.cost_fit
"""

import statistics

import torch
import torch.nn.functional as F

import sparsekit
from sparsekit import timing
from sparsekit.backends import cpu
from sparsekit.planners import cost

SHAPES = [(256, 16, 16), (256, 8, 64)]  # (channels, size, batch)
BLOCK_ROWS = (1, 2, 3, 6, 8, 12, 16, 32, 48, 64)
KEEP = 0.2
PLANES_TILE = {1: 1, 2: 2, 3: 3, 6: 3}  # block rows -> the planes kernel's register tile


def kernel_mask(channels: int, rows: int, gen) -> torch.Tensor:
    """Rows in groups of ``rows``, each group keeping its own random ``KEEP`` of whole kernels."""
    mask = torch.zeros(channels, channels, 3, 3)
    for part in torch.arange(channels).split(rows):
        mask[part[:, None], torch.randperm(channels, generator=gen)[: round(KEEP * channels)]] = 1
    return mask


def measure(channels: int, size: int, batch: int, rows: int, gen) -> dict:
    x = torch.randn(batch, channels, size, size, generator=gen)
    weight = torch.randn(channels, channels, 3, 3, generator=gen) * kernel_mask(channels, rows, gen)
    layer = sparsekit.SparseConv2d.from_weight(weight, padding=1, structure="kernel", backend="cpu")
    dense, _, _ = timing.in_faster_format(lambda x, w: F.conv2d(x, w, None, 1, 1), x, weight)
    sparse, _, _ = timing.in_faster_format(lambda x: layer(x), x)
    with torch.no_grad(), cpu.phase_profile() as totals:
        sparse()
    exact = totals["tap_calls"] == 1
    ratio = min(timing.median_seconds(sparse, min_run_time=0.2) for _ in range(2)) / min(
        timing.median_seconds(dense, min_run_time=0.2) for _ in range(2)
    )
    shapes = [(rows.numel(), cols.numel()) for rows, cols, _ in layer.packed().blocks()]
    panel = cost.PANEL_ROWS
    computed = sum((-(-r // panel) * panel if exact else r) * c for r, c in shapes)
    dense_macs = channels * channels * 9
    return {
        "rows": rows,
        "kernel": "exact" if exact else "planes",
        "ratio": ratio,
        "per_mac": ratio * dense_macs / computed,
        "model": cpu.BACKEND.cost(layer.packed()),
    }


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    results = []
    for channels, size, batch in SHAPES:
        for rows in BLOCK_ROWS:
            r = measure(channels, size, batch, rows, gen)
            results.append(r)
            print(
                f"{channels}ch {size}x{size} b{batch} R={rows:2d} {r['kernel']:6s} sparse/dense "
                f"{r['ratio']:.3f} (model {r['model']:.3f}), per computed MAC {r['per_mac']:.2f}",
                flush=True,
            )
    exact = [r["per_mac"] for r in results if r["kernel"] == "exact"]
    print(f"exact-position kernel, per computed MAC: median {statistics.median(exact):.2f}")
    for tile in (1, 2, 3):
        per = [
            r["per_mac"]
            for r in results
            if r["kernel"] == "planes" and PLANES_TILE.get(r["rows"]) == tile
        ]
        if per:
            print(f"planes kernel, {tile}-row tiles, per MAC: median {statistics.median(per):.2f}")


if __name__ == "__main__":
    main()

"""Latency-aware layer-wise sparsity (SPDY, Frantar & Alistarh, ICML 2022).

``levels`` (the sparsity levels and the mask of each) -> ``timings`` (each layer at each level,
compiled and timed on its real input; cached) and ``database`` (each layer's pruned, optionally
reconstructed, weights; the stitched model) -> ``program`` (the dynamic program: one level per
layer, least summed cost within a time budget) -> ``search`` (sensitivity coefficients scored by
calibration loss) -> ``planning`` (``sparsekit.plan``: compile the best choice and measure it
until the measured speedup meets the target).
"""

from .database import ErrorDatabase
from .levels import DEFAULT_LEVELS, geometric_levels, level_mask, level_masks
from .planning import PlanReport, plan
from .program import DEFAULT_BUCKETS, solve
from .search import Candidate, Scorer, search
from .timings import TimingTable, timing_table

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_LEVELS",
    "Candidate",
    "ErrorDatabase",
    "PlanReport",
    "Scorer",
    "TimingTable",
    "geometric_levels",
    "level_mask",
    "level_masks",
    "plan",
    "search",
    "solve",
    "timing_table",
]

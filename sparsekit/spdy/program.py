"""SPDY's dynamic program.

``solve(times, costs, budget)`` picks one sparsity level per layer so that the summed cost is
least while the summed time stays within the budget. Time is discretised into ``buckets`` equal
steps of ``budget / buckets``, each layer's time rounded *up* to whole steps: any choice the
program accepts therefore keeps the real summed time within the budget, and it is optimal among
the choices whose rounded times fit (exactly optimal when every time is a whole number of steps,
up to float rounding: a time within a few ulps of a whole number of steps counts as that number).
"""

import math

import torch

from ..errors import SparsekitError

DEFAULT_BUCKETS = 10_000


def _table(values, name: str) -> torch.Tensor:
    try:
        table = torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise SparsekitError(
            f"spdy.solve: {name} must be a [layers][levels] array of numbers ({error})"
        ) from None
    if table.dim() != 2 or table.shape[0] == 0 or table.shape[1] == 0:
        raise SparsekitError(
            f"spdy.solve: {name} must be a non-empty [layers][levels] array, not of shape "
            f"{list(table.shape)}"
        )
    if not torch.isfinite(table).all():
        raise SparsekitError(f"spdy.solve: {name} holds a value that is not finite")
    return table


def solve(times, costs, budget: float, buckets: int = DEFAULT_BUCKETS) -> list[int]:
    """The level index per layer that minimises ``sum(costs[l][i_l])`` subject to
    ``sum(times[l][i_l]) <= budget``; ``times`` and ``costs`` are ``[layers][levels]``
    array-likes (times >= 0). Raises ``SparsekitError`` when no choice fits, saying the fastest
    reachable time."""
    times, costs = _table(times, "times"), _table(costs, "costs")
    if times.shape != costs.shape:
        raise SparsekitError(
            f"spdy.solve: times {list(times.shape)} and costs {list(costs.shape)} differ in shape"
        )
    if (times < 0).any():
        raise SparsekitError("spdy.solve: times must be >= 0")
    if not (isinstance(buckets, int) and not isinstance(buckets, bool) and buckets >= 1):
        raise SparsekitError(f"spdy.solve: buckets must be a positive int, not {buckets!r}")
    try:
        limit = float(budget)
    except (TypeError, ValueError):
        limit = math.nan
    if not (math.isfinite(limit) and limit > 0):
        raise SparsekitError(f"spdy.solve: budget must be a positive number, not {budget!r}")
    budget = limit
    fastest = times.min(dim=1).values.sum().item()
    # times in steps, rounded up; a quotient a few ulps off a whole number is that number (0.1 is
    # a third of 0.3 in 3 buckets). Times past the budget all become buckets + 1 steps: never
    # chosen, and no int64 overflow
    quotient = times / budget * buckets
    whole = quotient.round()
    quotient = torch.where((quotient - whole).abs() <= 1e-9 * whole.clamp(min=1), whole, quotient)
    steps = torch.ceil(quotient).clamp_(max=buckets + 1).to(torch.int64)
    if steps.min(dim=1).values.sum() > buckets:
        rounding = (
            ""
            if fastest > budget * (1 + 1e-9)
            else (
                f"; rounded up to steps of {budget / buckets:.3g}, the fastest levels take more "
                f"than {buckets} steps: pass more buckets"
            )
        )
        raise SparsekitError(
            f"spdy.solve: no choice of levels fits the budget {budget:.10g}: the fastest "
            f"reachable time is {fastest:.10g}{rounding}"
        )
    layers, levels = times.shape
    # best[b]: least cost of the layers so far whose rounded times sum to exactly b steps
    best = torch.full((buckets + 1,), math.inf, dtype=torch.float64)
    best[0] = 0.0
    choices = torch.empty(layers, buckets + 1, dtype=torch.int64)
    for layer in range(layers):
        candidates = torch.full((levels, buckets + 1), math.inf, dtype=torch.float64)
        for level in range(levels):
            shift = int(steps[layer, level])
            if shift <= buckets:
                candidates[level, shift:] = best[: buckets + 1 - shift] + costs[layer, level]
        best, choices[layer] = candidates.min(dim=0)
    used = int(torch.argmin(best))
    picked = []
    for layer in reversed(range(layers)):
        level = int(choices[layer, used])
        picked.append(level)
        used -= int(steps[layer, level])
    return picked[::-1]

"""Random weights, masks and patterns for the tests."""

import torch

# (atol, rtol) per dtype against an fp64 reference computed from the same (rounded) inputs:
# fp32 accumulation error plus one rounding of the output to the dtype.
TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.bfloat16: (2e-2, 1.6e-2),
    torch.float16: (2e-3, 2e-3),
}


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOLERANCES[dtype]
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


def random_pattern(rows: int, cols: int, *, kernel_area: int, kind: str, density: float, gen):
    """A bool [rows, cols] pattern of a given kind: random, channel, kernel, blocks or mixed."""
    if kind == "random":
        return torch.rand(rows, cols, generator=gen) < density
    if kind == "channel":
        keep_rows = torch.rand(rows, 1, generator=gen) < density
        keep_cols = torch.rand(1, cols, generator=gen) < max(density, 0.5)
        return keep_rows & keep_cols
    if kind == "kernel":
        kernels = torch.rand(rows, cols // kernel_area, 1, generator=gen) < density
        return kernels.expand(-1, -1, kernel_area).reshape(rows, cols).clone()
    pattern = torch.zeros(rows, cols, dtype=torch.bool)
    order = torch.randperm(rows, generator=gen)
    parts = order.chunk(max(1, min(rows, 4)))
    for part in parts:  # disjoint row groups, each with its own dense column set
        cols_kept = torch.rand(cols, generator=gen) < density
        pattern[part[:, None], cols_kept.nonzero().flatten()] = True
    if kind == "mixed":  # blocks plus scattered non-zeros outside them
        pattern |= torch.rand(rows, cols, generator=gen) < density / 10
    return pattern

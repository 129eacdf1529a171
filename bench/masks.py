"""Structured masks of known sparsity for the benchmark suites."""

import torch


def conv_mask(structure: str, channels: int, sparsity: float, gen) -> torch.Tensor:
    """A [C, C, 3, 3] mask: row groups of 32 with their own columns (group), whole output
    channels (channel) or row groups of 32 sharing whole kernels (kernel)."""
    keep = 1 - sparsity
    if structure == "channel":
        rows = torch.rand(channels, generator=gen).argsort()[: round(keep * channels)]
        mask = torch.zeros(channels, channels, 3, 3)
        mask[rows] = 1
        return mask
    mask = torch.zeros(channels, channels * 9)
    for part in torch.randperm(channels, generator=gen).split(32):
        if structure == "group":
            cols = torch.rand(channels * 9, generator=gen) < keep
        else:
            cols = (torch.rand(channels, 1, generator=gen) < keep).expand(channels, 9).flatten()
        mask[part[:, None], cols.nonzero().flatten()] = 1
    return mask.view(channels, channels, 3, 3)

"""Structured masks of known sparsity for the benchmark suites, and the FLOP limit of a mask."""

import torch
from torch import nn

from sparsekit.transforms.kernel import kernel_magnitude_mask


def conv_mask(structure: str, channels: int, sparsity: float, gen) -> torch.Tensor:
    """A [C, C, 3, 3] mask: row groups of 32 with their own columns (group), whole output
    channels (channel), row groups of 32 sharing whole kernels (kernel), whole kernels ranked by
    magnitude, each row its own (kernel-magnitude: what kernel pruning gives) or independent
    weights (unstructured, what magnitude pruning gives)."""
    keep = 1 - sparsity
    if structure == "kernel-magnitude":
        return kernel_magnitude_mask(torch.randn(channels, channels, 3, 3, generator=gen), sparsity)
    if structure == "unstructured":
        return (torch.rand(channels, channels, 3, 3, generator=gen) < keep).float()
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


def flop_limit(model: nn.Module, masks: dict, x: torch.Tensor) -> float:
    """Dense MACs / kept MACs of ``model``'s Conv2d and Linear layers on ``x``, the kept weights
    being those of ``masks`` ({param name: 0/1}; unmasked layers keep their non-zeros): the most
    any implementation that skips the pruned weights can gain."""
    layers = {m: n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    positions = {}  # layer -> output positions (pixels times batch, or rows)

    def count(layer, args, y):
        positions[layer] = y.numel() // (
            y.shape[1] if isinstance(layer, nn.Conv2d) else y.shape[-1]
        )

    hooks = [layer.register_forward_hook(count) for layer in layers]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    dense = kept = 0
    for layer, n in positions.items():
        mask = masks.get(f"{layers[layer]}.weight")
        dense += layer.weight.numel() * n
        kept += int((layer.weight if mask is None else layer.weight * mask).count_nonzero()) * n
    return dense / kept

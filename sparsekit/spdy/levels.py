"""The sparsity levels a layer can take, and the one rule that turns a level into a mask: the
weights of least magnitude pruned, then optionally made structural by a transform. The timing
table, the error database and the final masks all go through ``level_masks``, so what is timed
is what is scored and what is compiled."""

import torch

from ..errors import SparsekitError
from ..transforms import kernel_magnitude_mask, magnitude_mask, magnitude_order, refill, regroup

TRANSFORMS = (None, "refill", "regroup", "kernel")


def geometric_levels(count: int = 12, low: float = 0.40, high: float = 0.95) -> tuple[float, ...]:
    """0 (dense), then ``count - 1`` sparsities from ``low`` to ``high`` whose densities fall
    geometrically, as SPDY spaces its levels."""
    if count < 2 or not 0.0 < low < high < 1.0:
        raise SparsekitError(
            f"levels: need count >= 2 and 0 < low < high < 1, got {count}, {low}, {high}"
        )
    steps = count - 2
    return (
        0.0,
        *(
            1 - (1 - low) * ((1 - high) / (1 - low)) ** (i / max(steps, 1))
            for i in range(steps + 1)
        ),
    )


DEFAULT_LEVELS = geometric_levels()


def check_levels(levels) -> tuple[float, ...]:
    """``levels`` as a tuple: increasing sparsities in [0, 1), the first 0 (the dense layer)."""
    try:
        levels = tuple(float(s) for s in levels)
    except (TypeError, ValueError):
        raise SparsekitError(f"levels: expected a sequence of sparsities, got {levels!r}") from None
    if (
        len(levels) < 2
        or levels[0] != 0.0
        or any(b <= a for a, b in zip(levels, levels[1:]))
        or levels[-1] >= 1
    ):
        raise SparsekitError(
            f"levels: expected increasing sparsities in [0, 1) starting at 0, got {levels}"
        )
    return levels


def check_transform(transform):
    if transform not in TRANSFORMS:
        raise SparsekitError(f"transform: {transform!r} is not one of {TRANSFORMS}")
    return transform


def level_masks(weight: torch.Tensor, levels, transform=None) -> list[torch.Tensor]:
    """The 0/1 float mask of ``weight`` at each sparsity of ``levels``: a magnitude mask, then
    ``transform`` (``"refill"``: whole output channels; ``"regroup"``: dense blocks;
    ``"kernel"``: whole kernels ranked by L1); all ones at sparsity 0."""
    order = magnitude_order(weight)
    masks = []
    for sparsity in levels:
        if sparsity == 0.0:
            masks.append(torch.ones_like(weight, dtype=torch.float32))
        elif transform == "kernel" and weight.dim() == 4:
            masks.append(kernel_magnitude_mask(weight, sparsity))
        else:
            mask = magnitude_mask(weight, sparsity, order)
            masks.append(
                refill(weight, mask)
                if transform == "refill"
                else regroup(mask)[0]
                if transform == "regroup"
                else mask
            )
    return masks


def level_mask(weight: torch.Tensor, sparsity: float, transform=None) -> torch.Tensor:
    """``level_masks`` at one sparsity."""
    return level_masks(weight, (sparsity,), transform)[0]

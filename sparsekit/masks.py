"""Masks: validate a layer's mask against its weight and reduce it to the pattern to pack."""

import torch

from .errors import SparsekitError

WEIGHT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_weight(weight: torch.Tensor, name: str = "weight") -> None:
    """Shape and dtype checks that need no data, so they also run on meta tensors."""
    if not isinstance(weight, torch.Tensor):
        raise SparsekitError(f"{name}: expected a tensor, got {type(weight).__name__}")
    if weight.dim() not in (2, 4):
        raise SparsekitError(
            f"{name}: expected a Linear [out, in] or Conv2d [out, in/groups, kh, kw] weight, "
            f"got shape {tuple(weight.shape)}"
        )
    if weight.numel() == 0:
        raise SparsekitError(f"{name}: has a zero-size dimension, shape {tuple(weight.shape)}")
    if weight.dtype not in WEIGHT_DTYPES:
        raise SparsekitError(f"{name}: dtype {weight.dtype} is not a floating-point dtype")


def layer_pattern(weight: torch.Tensor, mask: torch.Tensor | None = None, name: str = "weight"):
    """The kept non-zeros of ``weight * mask`` as a bool tensor of the weight's shape.

    ``mask`` may be bool, integer or floating point but must hold only 0 and 1; ``None`` means
    the zeros already in the weight are the mask. Neither argument is modified.
    """
    check_weight(weight, name)
    if not torch.isfinite(weight).all():
        raise SparsekitError(f"{name}: contains NaN or inf")
    nonzero = weight != 0
    if mask is None:
        return nonzero
    if not isinstance(mask, torch.Tensor):
        raise SparsekitError(f"mask for {name}: expected a tensor, got {type(mask).__name__}")
    if mask.shape != weight.shape:
        raise SparsekitError(
            f"mask for {name}: shape {tuple(mask.shape)} does not match the weight's "
            f"{tuple(weight.shape)}"
        )
    if mask.dtype != torch.bool:
        if mask.is_complex() or not ((mask == 0) | (mask == 1)).all():
            raise SparsekitError(f"mask for {name}: values must be 0 or 1")
    return nonzero & mask.to(device=weight.device, dtype=torch.bool)

"""Kernel-level structure (MPT / efficient multi-prize tickets): whole kh x kw kernels."""

import torch

from ..errors import SparsekitError
from ..masks import check_mask


def kernel_mask(mask: torch.Tensor, *, min_kept: float = 0.5) -> torch.Tensor:
    """Keep each kh x kw kernel of a Conv2d ``mask`` whole if at least ``min_kept`` of its
    weights are kept, else drop it (same shape and dtype as ``mask``)."""
    check_mask(mask, mask, "mask")
    if mask.dim() != 4:
        raise SparsekitError(
            f"kernel_mask: expected a Conv2d mask [out, in, kh, kw], got {tuple(mask.shape)}"
        )
    if not 0.0 < min_kept <= 1.0:
        raise SparsekitError(f"kernel_mask: min_kept {min_kept!r} must lie in (0, 1]")
    kept = mask.bool().flatten(2).float().mean(2) >= min_kept
    return kept[:, :, None, None].expand_as(mask).to(mask.dtype).clone()


def kernel_magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The kernel-level magnitude mask of a Conv2d ``weight``: its kh x kw kernels ranked by L1
    norm, the top ``1 - sparsity`` kept whole (at least one). (``kernel_mask`` of an element-wise
    mask at 80-90% keeps almost no kernel, as few have half their weights left; this reaches
    the nominal sparsity.)"""
    if weight.dim() != 4:
        raise SparsekitError(
            f"kernel_magnitude_mask: expected a Conv2d weight, got {tuple(weight.shape)}"
        )
    if not 0.0 <= sparsity < 1.0:
        raise SparsekitError(f"kernel_magnitude_mask: sparsity {sparsity!r} must lie in [0, 1)")
    score = weight.detach().abs().sum((2, 3)).flatten()
    kept = torch.zeros_like(score, dtype=torch.bool)
    kept[score.topk(max(1, round((1 - sparsity) * score.numel()))).indices] = True
    return kernel_mask(kept.view(weight.shape[:2])[:, :, None, None].expand_as(weight).float())


def acceleration_rate(masks: dict, output_sizes: dict) -> float:
    """AR = sum(N*M*D*D*k*k) / sum(P*D*D*k*k) over layers (efficient-MPT's report): N*M kernels
    of k*k weights per layer, P of them non-zero, on a D x D (or H x W) output map.

    ``masks``: {layer: Conv2d mask}; ``output_sizes``: {layer: D or (H, W)}, same keys."""
    if set(masks) != set(output_sizes):
        raise SparsekitError("acceleration_rate: masks and output_sizes must name the same layers")
    dense = sparse = 0.0
    for name, mask in masks.items():
        size = output_sizes[name]
        h, w = (size, size) if isinstance(size, int) else size
        out, cin, kh, kw = mask.shape
        nonzero_kernels = int(mask.bool().flatten(2).any(2).sum())
        dense += out * cin * h * w * kh * kw
        sparse += nonzero_kernels * h * w * kh * kw
    if sparse == 0:
        raise SparsekitError("acceleration_rate: every kernel is pruned")
    return dense / sparse

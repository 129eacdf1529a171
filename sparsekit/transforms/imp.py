"""Iterative magnitude pruning with rewinding, as Structure-LTH runs it, with optional
post-processing of each round's mask (IMP-Refill, IMP-Refill+, IMP-Regroup)."""

from collections.abc import Callable

import torch
import torch.nn.utils.prune as prune
from torch import nn

from ..errors import SparsekitError
from .refill import refill_masks
from .regroup import regroup

POSTS = (None, "refill", "refill+", "regroup")


def prunable_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every Conv2d but the first, the layers Structure-LTH prunes."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][1:]


def global_magnitude_masks(model: nn.Module, rate: float, masks: dict | None = None) -> dict:
    """Global L1 pruning of ``rate`` of the still-kept weights over ``prunable_convs`` (the
    rule of ``prune.global_unstructured``); returns ``{param name: 0/1 float mask}``."""
    if not 0.0 <= rate < 1.0:
        raise SparsekitError(f"rate {rate!r} must lie in [0, 1)")
    convs = prunable_convs(model)
    current = {
        f"{n}.weight": (masks or {}).get(f"{n}.weight", torch.ones_like(m.weight)).float()
        for n, m in convs
    }
    scores = {key: m.weight.detach().abs() for key, (_, m) in zip(current, convs)}
    kept = torch.cat([scores[k][current[k].bool()] for k in current])
    count = int(round(rate * kept.numel()))
    if count == 0:
        return current
    threshold = kept.kthvalue(count).values
    return {k: current[k] * (scores[k] > threshold) for k in current}


def layerwise_magnitude_masks(model: nn.Module, sparsity: float) -> dict:
    """L1 pruning of ``sparsity`` of each of ``prunable_convs``' weights on its own (the first
    conv and the classifier stay dense): what pruning freshly initialised weights needs, where
    a global threshold would empty the layers with a small initial scale. Returns ``{param
    name: 0/1 float mask}``."""
    if not 0.0 <= sparsity < 1.0:
        raise SparsekitError(f"sparsity {sparsity!r} must lie in [0, 1)")
    return {
        f"{name}.weight": magnitude_mask(conv.weight, sparsity)
        for name, conv in prunable_convs(model)
    }


def magnitude_mask(
    weight: torch.Tensor, sparsity: float, order: torch.Tensor | None = None
) -> torch.Tensor:
    """The 0/1 float mask pruning the ``round(sparsity * numel)`` weights of least magnitude
    (exactly that many, ties by position); ``order``: ``magnitude_order(weight)`` when known."""
    if not 0.0 <= sparsity < 1.0:
        raise SparsekitError(f"sparsity {sparsity!r} must lie in [0, 1)")
    order = magnitude_order(weight) if order is None else order
    mask = torch.ones(weight.numel(), dtype=torch.float32, device=weight.device)
    mask[order[: int(round(sparsity * weight.numel()))]] = 0
    return mask.view_as(weight)


def magnitude_order(weight: torch.Tensor) -> torch.Tensor:
    """The flat indices of ``weight`` from least to greatest magnitude (ties by position)."""
    return weight.detach().abs().flatten().argsort(stable=True)


def _post_process(post, model, masks, **kwargs) -> dict:
    if post is None:
        return masks
    if post in ("refill", "refill+"):
        return refill_masks(
            model, masks, extra=kwargs.get("extra", 0.1) if post == "refill+" else 0.0
        )
    return {k: regroup(m, **kwargs.get("regroup", {}))[0] for k, m in masks.items()}


def imp(
    model: nn.Module,
    train_fn: Callable[[nn.Module], object],
    *,
    rounds: int,
    rate: float = 0.2,
    post: str | None = None,
    rewind_state: dict | None = None,
    **post_kwargs,
) -> list[dict]:
    """Run ``rounds`` IMP rounds on ``model`` (in place): train (``train_fn(model)``, masks held
    by ``torch.nn.utils.prune`` so training keeps pruned weights at zero), prune ``rate`` of the
    remaining conv weights globally by magnitude, post-process the mask (``post``), rewind the
    weights to ``rewind_state`` (default: the weights at the call) and apply the new mask.

    Returns each round's masks (``{param name: 0/1 float}``); the model ends rewound under the
    last ones, ready for its final training. ``post_kwargs``: ``extra`` for Refill+ (default
    0.1), ``regroup={...}`` arguments for IMP-Regroup.
    """
    if post not in POSTS:
        raise SparsekitError(f"post: {post!r} is not one of {POSTS}")
    if rounds < 1:
        raise SparsekitError("rounds must be at least 1")
    rewind = {k: v.detach().clone() for k, v in (rewind_state or model.state_dict()).items()}
    history, masks = [], None
    for _ in range(rounds):
        train_fn(model)
        masks = global_magnitude_masks(model, rate, masks)
        masks = _post_process(post, model, masks, **post_kwargs)
        _rewind(model, rewind, masks)
        history.append({k: m.clone() for k, m in masks.items()})
    return history


def _rewind(model: nn.Module, state: dict, masks: dict) -> None:
    """Weights back to ``state``, then ``masks`` applied through prune hooks."""
    for name, module in prunable_convs(model):
        if prune.is_pruned(module):
            prune.remove(module, "weight")
    own = {k: v for k, v in state.items() if not k.endswith(("_orig", "_mask"))}
    model.load_state_dict(own, strict=False)
    for name, module in prunable_convs(model):
        prune.custom_from_mask(module, "weight", masks[f"{name}.weight"].to(module.weight.device))

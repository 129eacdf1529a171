"""Stage 1 of compile: the dense masked model, what a compiled model must compute.

``dense_masked_copy`` is the reference: a copy in eval mode, prune hooks and parametrizations
made permanent, every mask applied.
"""

import copy

import torch
import torch.nn.utils.prune as prune
from torch import nn
from torch.nn.utils import parametrize

from .. import masks as masks_lib


def copy_model(model: nn.Module) -> nn.Module:
    """deepcopy that also works on a freshly pruned model, whose ``weight`` is a non-leaf tensor
    attribute (recomputed by the prune hook) that deepcopy refuses."""
    memo = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def make_dense_masked(model: nn.Module, layer_masks: dict) -> None:
    """In place: prune hooks and parametrizations made permanent, then every mask applied."""
    for module in list(model.modules()):
        for param in masks_lib.PARAMS:
            if prune.is_pruned(module) and hasattr(module, f"{param}_orig"):
                prune.remove(module, param)
            if parametrize.is_parametrized(module, param):
                parametrize.remove_parametrizations(module, param, leave_parametrized=True)
    for name, param_masks in layer_masks.items():
        module = model.get_submodule(name)
        for param, mask in param_masks.items():
            value = getattr(module, param)
            with torch.no_grad():
                value.mul_(mask.to(device=value.device, dtype=value.dtype))


def dense_masked_copy(model: nn.Module, layer_masks: dict) -> nn.Module:
    """The reference: a copy of ``model`` in eval mode with its masks applied, hooks removed."""
    reference = copy_model(model)
    make_dense_masked(reference, layer_masks)
    return reference.eval()

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
    """deepcopy that leaves ``model`` as it was whatever it carries: it also works on a freshly
    pruned model, whose ``weight`` is a non-leaf tensor attribute (recomputed by the prune hook)
    that deepcopy refuses, and a parametrized module of the copy gets a class of its own."""
    memo = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    copied = copy.deepcopy(model, memo)
    for module in copied.modules():
        if parametrize.is_parametrized(module):
            _own_class(module)
    return copied


def _own_class(module: nn.Module) -> None:
    """torch gives each parametrized module a class holding its parametrized tensors as
    properties, and deepcopy shares that class with the original: removing a parametrization
    from the copy would delete the property from the original too."""
    cls = type(module)
    namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, namespace)


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

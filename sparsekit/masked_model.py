"""The dense masked model: what a compiled model must compute, and the weights its layers pack.

``dense_masked_copy`` is the reference (a copy in eval mode, prune hooks and parametrizations
made permanent, every mask applied); ``folded_weight`` is a conv's weight and bias with the
BatchNorm that follows it folded in, the effective weight a sparse layer packs.
"""

import copy

import torch
import torch.nn.utils.prune as prune
from torch import nn
from torch.nn.utils import parametrize

from . import masks as masks_lib
from .graph import batchnorm_affine


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


def folded_weight(module: nn.Module, bn: nn.BatchNorm2d | None):
    """The layer's weight and bias, with the BatchNorm that follows it folded in (in fp64)."""
    weight = module.weight.detach()
    bias = None if module.bias is None else module.bias.detach()
    if bn is None:
        return weight, bias
    gamma, beta = batchnorm_affine(bn)
    scale = gamma * torch.rsqrt(bn.running_var.double() + bn.eps)
    shift = beta - bn.running_mean.double() * scale
    folded_bias = shift if bias is None else bias.double() * scale + shift
    folded = weight.double() * scale.view(-1, *([1] * (weight.dim() - 1)))
    return folded.to(weight.dtype), folded_bias.to(weight.dtype)

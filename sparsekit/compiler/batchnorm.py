"""Stage 2 of compile: each conv's BatchNorm folded into it, giving the layers to pack.

A BatchNorm2d that only ever normalises one conv's output (read off the torch.fx graph,
``graph.conv_bn_pairs``; an untraceable model keeps its BatchNorms) is folded into that conv's
weight and bias in fp64. ``folded_layers`` gives compile and SPDY the effective weight of every
layer they pack; ``fold_batchnorms`` the dense model with its BatchNorms folded, the baseline
they time against.
"""

from dataclasses import dataclass

import torch
from torch import nn

from ..graph import batchnorm_affine, conv_bn_pairs


@dataclass(frozen=True)
class FoldedLayer:
    """A Conv2d / Linear to pack: the module (its geometry), its effective weight and bias
    (masked, the BatchNorm folded in) and the BatchNorm folded into it, if any."""

    name: str
    module: nn.Module
    weight: torch.Tensor
    bias: torch.Tensor | None
    batchnorm: str | None


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


def folded_layers(model: nn.Module, names, fold: bool = True) -> list[FoldedLayer]:
    """The named Conv2d / Linear layers of ``model``, with the BatchNorm that follows each
    folded in (``fold=False``: as they are)."""
    pairs = dict(conv_bn_pairs(model)) if fold else {}
    layers = []
    for name in names:
        module, bn_name = model.get_submodule(name), pairs.get(name)
        weight, bias = folded_weight(module, model.get_submodule(bn_name) if bn_name else None)
        layers.append(FoldedLayer(name, module, weight, bias, bn_name))
    return layers


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """``model`` (in place) with every BatchNorm2d that follows a conv folded into it: the
    conv's weight and bias take the folded values, the BatchNorm becomes an Identity."""
    for conv_name, bn_name in conv_bn_pairs(model):
        conv = model.get_submodule(conv_name)
        weight, bias = folded_weight(conv, model.get_submodule(bn_name))
        with torch.no_grad():
            conv.weight.copy_(weight)  # in place: the weight keeps its memory format
            if conv.bias is None:
                conv.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)
            else:
                conv.bias.copy_(bias)
        model.set_submodule(bn_name, nn.Identity())
    return model

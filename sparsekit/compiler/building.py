"""Stage 6 of compile: the sparse modules built from the layers' choices and put in place.

``build_layer`` makes a ``SparseConv2d`` / ``SparseLinear`` of a Conv2d's or Linear's geometry
(also for the candidates ``choice`` times); ``build_model`` replaces each chosen layer of a
model by the module its ``LayerChoice`` describes, with the BatchNorm folded into it gone.
"""

from torch import nn

from ..formats import pack
from ..geometry import is_channels_last
from ..nn import SparseConv2d, SparseLinear


def build_layer(
    module: nn.Module, weight, bias, backend: str, *, packed=None, name: str = "weight"
):
    """The sparse layer computing ``module``'s op (its geometry; a Conv2d keeps its weight's
    memory format) with ``weight`` and ``bias`` on ``backend`` (``"dense"``: unpacked), from
    ``packed`` when given, else planned with ``structure="auto"``."""
    if isinstance(module, nn.Conv2d):
        return SparseConv2d.from_weight(
            weight,
            bias,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            padding_mode=module.padding_mode,
            backend=backend,
            name=name,
            packed=packed,
            channels_last=is_channels_last(module.weight),
        )
    return SparseLinear.from_weight(weight, bias, backend=backend, name=name, packed=packed)


def layer_of(layer, choice):
    """The module ``choice`` (a ``LayerChoice``) describes for ``layer`` (a ``FoldedLayer``): its
    pack reused, or planned again with its structure when it brings none (a choice made on
    other weights of the same mask, as SPDY's timing tables are)."""
    packed = choice.packed
    if packed is None and choice.backend != "dense":
        packed = pack(
            layer.weight,
            structure=choice.structure,
            groups=getattr(layer.module, "groups", 1),
            name=layer.name,
        )
    built = build_layer(
        layer.module, layer.weight, layer.bias, choice.backend, packed=packed, name=layer.name
    )
    built.config["source"] = {"layer": layer.name, "batchnorm": layer.batchnorm}
    if choice.dropped:
        built.config["dropped"] = list(choice.dropped)
    return built


def build_model(model: nn.Module, layers, choices: dict) -> nn.Module:
    """``model`` (in place) with each of ``layers`` (``FoldedLayer``) replaced by the module of
    its choice in ``choices`` (by name) and its folded BatchNorm by an Identity: an inference
    model (eval mode, no gradients: the sparse ops have none)."""
    for layer in layers:
        model.set_submodule(layer.name, layer_of(layer, choices[layer.name]))
        if layer.batchnorm:
            model.set_submodule(layer.batchnorm, nn.Identity())
    return model.eval().requires_grad_(False)

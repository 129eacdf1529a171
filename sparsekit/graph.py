"""Which BatchNorm2d follows which Conv2d, read off the model's torch.fx graph."""

from collections import Counter

import torch
from torch import nn


class _LayerTracer(torch.fx.Tracer):
    """Keeps convs and BatchNorms (subclasses too, e.g. STR-BN) as single graph nodes."""

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(
            module, qualname
        )


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where the BatchNorm2d is applied to that conv's output only.

    A model torch.fx cannot trace gives no pairs (callers then keep their BatchNorms)."""
    try:
        graph = _LayerTracer().trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure just means no known pairs
        return []
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or calls[node.target] != 1:
            continue
        source = node.args[0] if node.args else None
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(modules.get(source.target), nn.Conv2d)
            and len(source.users) == 1
            and calls[source.target] == 1
        ):
            pairs.append((source.target, node.target))
    return pairs


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The (gamma, beta) a BatchNorm2d applies in eval mode, in fp64: its own ``affine_params``
    when it has them (e.g. STR-BN's thresholded gamma), else weight and bias (1 and 0 when
    it is not affine)."""
    if hasattr(bn, "affine_params"):
        gamma, beta = bn.affine_params()
    elif bn.weight is not None:
        gamma, beta = bn.weight, bn.bias
    else:
        ones = torch.ones_like(bn.running_mean)
        gamma, beta = ones, torch.zeros_like(ones)
    return gamma.detach().double(), beta.detach().double()

"""Each layer's plan: dense, or a packed plan on a backend, chosen by measured latency.

Candidates are every planner's plan (or the one asked for) on every competing backend that
supports it. With the layer's real input they are timed against the dense layer and the fastest
is kept if it beats dense by ``KEEP_MARGIN``; without one the cost model ranks them.
"""

import torch
from torch import nn

from . import ops, timing
from .errors import SparsekitError
from .nn import SparseConv2d, SparseLinear
from .planners import PLANNERS

PACKED_STRUCTURES = tuple(s for s in PLANNERS if s != "dense")
CHOICES = ("auto", "cpu", "torch", "triton", "reference", "dense")
MIN_RUN_TIME = 0.1  # seconds of timing per candidate plan of a layer
KEEP_MARGIN = 0.97  # a packed layer must beat dense by 3%, so timing noise cannot make it slower


def competing_backends(backend: str, device: torch.device) -> list[str]:
    """The backends whose packed plans compete with dense."""
    if backend == "auto":
        if device.type == "cpu":
            return ["cpu", "torch"]
        return ["torch"] if ops.TRITON_ERROR is not None else ["triton", "torch"]
    if backend not in CHOICES:
        raise SparsekitError(f"backend: {backend!r} is not one of {', '.join(CHOICES)}")
    return [] if backend == "dense" else [backend]


def _build(module, weight, bias, structure, backend, name):
    if isinstance(module, nn.Conv2d):
        return SparseConv2d.from_weight(
            weight, bias, stride=module.stride, padding=module.padding, dilation=module.dilation,
            groups=module.groups, padding_mode=module.padding_mode, structure=structure,
            backend=backend, name=name,
        )
    return SparseLinear.from_weight(weight, bias, structure=structure, backend=backend, name=name)


def choose_layer(module, weight, bias, structure, backends, layer_input, name):
    """The fastest of dense and the packed plans on ``backends`` (each plan on the backends that
    support it): measured on ``layer_input`` when given (a packed plan must beat dense by
    ``KEEP_MARGIN``), else the packed plan of lowest estimated cost if it beats dense (cost < 1)."""
    dense = _build(module, weight, bias, "dense", "dense", name)
    if structure == "dense" or not backends:
        return dense
    structures = PACKED_STRUCTURES if structure == "auto" else (structure,)
    plans = [_build(module, weight, bias, s, "reference", name) for s in structures]
    candidates = [p.with_backend(b) for b in backends for p in plans if p.supports(b)]
    if not candidates:
        return dense
    if layer_input is None:
        cost, _, best = min((c.summary()["cost"], i, c) for i, c in enumerate(candidates))
        return best if cost < 1 else dense
    dense_time = timing.median_seconds(dense, layer_input, min_run_time=MIN_RUN_TIME)
    timed = [
        (timing.median_seconds(layer, layer_input, min_run_time=MIN_RUN_TIME), i, layer)
        for i, layer in enumerate(candidates)
    ]
    best_time, _, best = min(timed)  # ties go to the earlier candidate
    return best if best_time < KEEP_MARGIN * dense_time else dense

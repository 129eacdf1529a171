"""Each layer's plan: dense, or a packed plan on a backend, checked then chosen by latency.

Candidates are every planner's plan (or the one asked for) on every competing backend that
supports it. With the layer's real input each candidate first runs on it and is compared with
the dense layer: one that differs or raises is dropped with a warning naming layer, plan and
backend, so a wrong kernel costs speed, never correctness. The survivors are timed against the
dense layer (one call each first: one ``SCREEN`` times slower than the dense median or another
candidate's call is not timed further) and the fastest is kept if it beats dense by
``KEEP_MARGIN`` (``measure=False``, or no input: the cost model ranks them and a plan is kept if
its estimated cost is below dense).
"""

import warnings

import torch
from torch import nn

from . import backends, timing, tolerance
from .backends import Backend
from .errors import SparsekitWarning
from .formats import pack
from .geometry import is_channels_last
from .nn import SparseConv2d, SparseLinear
from .planners import PLANNERS

PACKED_STRUCTURES = tuple(s for s in PLANNERS if s != "dense")
MIN_RUN_TIME = 0.1  # seconds of timing per candidate plan of a layer
KEEP_MARGIN = 0.97  # a packed layer must beat dense by 3%, so timing noise cannot make it slower
SCREEN = 1.5  # a candidate whose one timed call takes this many of the best seen cannot win: not timed further


def competing_backends(backend: str, device: torch.device, dtype: torch.dtype) -> list[Backend]:
    """The backends whose packed plans compete with dense: every one ``auto`` may pick for the
    model's device and dtype, the one named (SparsekitError if it cannot run there), or none for
    ``"dense"``."""
    if backends.check_choice(backend) == "dense":
        return []
    if backend == "auto":
        return backends.auto(device, dtype)
    return [backends.resolve(backend, device, dtype)]


def _build(module, weight, bias, backend, name, packed=None):
    if isinstance(module, nn.Conv2d):
        return SparseConv2d.from_weight(
            weight, bias, stride=module.stride, padding=module.padding, dilation=module.dilation,
            groups=module.groups, padding_mode=module.padding_mode, backend=backend, name=name,
            packed=packed, channels_last=is_channels_last(module.weight),
        )
    return SparseLinear.from_weight(weight, bias, backend=backend, name=name, packed=packed)


def _problem(candidate, layer_input, expected) -> str | None:
    """What is wrong with ``candidate`` on the layer's real input, where the dense layer gives
    ``expected`` (None: nothing)."""
    try:
        with torch.inference_mode():
            actual = candidate(layer_input)
    except Exception as error:  # noqa: BLE001 - a failing backend costs speed, never correctness
        return f"raised {type(error).__name__}: {error}"
    error, limit = tolerance.max_error(actual, expected), tolerance.bound(expected)
    return None if error <= limit else f"differs from the dense layer (max error {error:.3e} > {limit:.3e})"


def _checked(candidates, layer_input, expected, name) -> tuple[list, list[str]]:
    """(the candidates that reproduce the dense layer, what was dropped and why); each dropped
    one is also a warning."""
    kept, dropped = [], []
    for candidate in candidates:
        problem = _problem(candidate, layer_input, expected)
        if problem is None:
            kept.append(candidate)
            continue
        what = f"{candidate.config['structure']!r} plan on backend {candidate.backend!r}"
        warnings.warn(f"sparsekit.compile: layer {name!r}: the {what} {problem}; dropped",
                      SparsekitWarning, stacklevel=4)
        dropped.append(f"{what}: {problem}")
    return kept, dropped


def choose_layer(module, weight, bias, structure, competitors, layer_input, name, *, measure=True):
    """The layer to use for ``module`` (see the module doc): ``weight`` and ``bias`` are its
    effective (masked, BatchNorm-folded) parameters, ``competitors`` the backends whose plans
    compete, ``layer_input`` the input it receives on the example inputs (or None)."""
    return timed_layer(module, weight, bias, structure, competitors, layer_input, name, measure=measure)[0]


def timed_layer(module, weight, bias, structure, competitors, layer_input, name, *, measure=True,
                dense_seconds=None, min_run_time=MIN_RUN_TIME):
    """``choose_layer``'s choice and its median time on ``layer_input`` in seconds (None when
    nothing was timed); ``dense_seconds``: the dense layer's time when already measured, which
    is then the time of a layer that stays dense."""
    dense = _build(module, weight, bias, "dense", name)
    if structure == "dense" or not competitors:
        return dense, dense_seconds
    groups = getattr(module, "groups", 1)
    structures = PACKED_STRUCTURES if structure == "auto" else (structure,)
    plans = [pack(weight, structure=s, groups=groups, name=name) for s in structures]
    candidates = [
        _build(module, weight, bias, b.name, name, plan)
        for b in competitors for plan in plans if b.supports(plan)
    ]
    dropped = []
    if layer_input is not None:
        with tolerance.matching_precision():  # cuDNN, for dense and the torch backend alike
            with torch.inference_mode():
                expected = dense(layer_input)
            candidates, dropped = _checked(candidates, layer_input, expected, name)
    chosen, seconds = _fastest(dense, candidates, layer_input if measure else None, dense_seconds, min_run_time)
    if dropped:
        chosen.config["dropped"] = dropped
    return chosen, seconds


def _fastest(dense, candidates, layer_input, dense_seconds, min_run_time):
    """The fastest of ``dense`` and the ``candidates`` on ``layer_input`` (None: by the cost
    model) and its time; a candidate must beat dense by ``KEEP_MARGIN``."""
    if not candidates:
        return dense, dense_seconds
    if layer_input is None:  # ranked by the cost models of the backends that have one
        costs = [(backends.get(c.backend).cost(c.packed()), i, c) for i, c in enumerate(candidates)]
        ranked = [entry for entry in costs if entry[0] is not None]
        if not ranked:
            return dense, None
        cost, _, best = min(ranked)
        return (best if cost < 1 else dense), None
    if dense_seconds is None:
        dense_seconds = timing.median_seconds(dense, layer_input, min_run_time=min_run_time)
    firsts = [(timing.one_call_seconds(layer, layer_input), layer) for layer in candidates]  # each ran in _checked
    bar = SCREEN * min([dense_seconds] + [seconds for seconds, _ in firsts])
    contenders = [layer for seconds, layer in firsts if seconds < bar]
    timed = [
        (timing.median_seconds(layer, layer_input, min_run_time=min_run_time), i, layer)
        for i, layer in enumerate(contenders)
    ]
    if not timed:
        return dense, dense_seconds
    best_time, _, best = min(timed)  # ties go to the earlier candidate
    return (best, best_time) if best_time < KEEP_MARGIN * dense_seconds else (dense, dense_seconds)

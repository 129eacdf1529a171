"""Stage 5 of compile: each layer's plan, dense or a packed plan on a backend, as a plain value.

Candidates are every planner's plan (or the one asked for) on every competing backend that
supports it (and whose ``max_competing_blocks`` it does not exceed). With the layer's real
input each candidate first runs on it and is compared with the dense layer: one that differs
or raises is dropped with a warning naming layer, plan and backend, so a wrong kernel costs
speed, never correctness. The survivors are timed against the dense layer (one call each
first: one ``SCREEN`` times slower than the dense median or another candidate's call is not
timed further); the fastest is then compared with the dense layer in alternated rounds
(``timing.compare``) and kept only if faster with confidence and its median ratio beats
``KEEP_MARGIN``. With ``measure=False``, or no input, the cost models of the candidates'
backends rank them (a backend without one is chosen by measurement only) and a plan is kept if
its estimated cost is below dense.

The result is a ``LayerChoice``; the modules are built from it by ``building``.
"""

import warnings
from dataclasses import dataclass, field

import torch

from .. import backends, timing, tolerance
from ..backends import Backend
from ..errors import SparsekitWarning
from ..formats import PackedWeight, pack
from ..planners import PLANNERS
from .batchnorm import FoldedLayer
from .building import build_layer

PACKED_STRUCTURES = tuple(s for s in PLANNERS if s != "dense")
MIN_RUN_TIME = 0.1  # seconds of timing per candidate plan of a layer
KEEP_MARGIN = 0.97  # a packed layer must beat dense by 3%, so timing noise cannot make it slower
# a candidate whose one timed call takes this many of the best seen cannot win: not timed further
SCREEN = 1.5


@dataclass(frozen=True)
class LayerChoice:
    """What runs a layer: ``structure`` (``"dense"`` or the planner that made the pack) on
    ``backend`` (``"dense"`` or a backend's name), with what was measured on its input (None:
    not timed) and the candidates dropped on it and why. ``packed``: the pack chosen, which
    building reuses for the same weight."""

    structure: str = "dense"
    backend: str = "dense"
    # the chosen layer's time: the dense median times the paired ratio that decided (compare)
    seconds: float | None = None
    dense_seconds: float | None = None
    dropped: tuple[str, ...] = ()
    packed: PackedWeight | None = field(default=None, compare=False, repr=False)

    @property
    def plan(self) -> str:
        """``"structure/backend"``, as timing tables and reports name it."""
        return f"{self.structure}/{self.backend}"


def competing_backends(backend: str, device: torch.device, dtype: torch.dtype) -> list[Backend]:
    """The backends whose packed plans compete with dense: every one ``auto`` may pick for the
    model's device and dtype, the one named (SparsekitError if it cannot run there), or none for
    ``"dense"``."""
    if backends.check_choice(backend) == "dense":
        return []
    if backend == "auto":
        return backends.auto(device, dtype)
    return [backends.resolve(backend, device, dtype)]


def choose(
    layer: FoldedLayer,
    structure: str,
    competitors,
    layer_input,
    *,
    measure: bool = True,
    dense_seconds: float | None = None,
    min_run_time: float = MIN_RUN_TIME,
) -> LayerChoice:
    """The plan of ``layer`` (see the module doc): ``structure`` the planner asked for
    (``"auto"``: every one), ``competitors`` the backends whose plans compete, ``layer_input``
    the input it receives on the example inputs (or None); ``dense_seconds``: the dense layer's
    time when already measured."""
    dense = build_layer(layer.module, layer.weight, layer.bias, "dense", name=layer.name)
    if structure == "dense" or not competitors:
        return LayerChoice(seconds=dense_seconds, dense_seconds=dense_seconds)
    groups = getattr(layer.module, "groups", 1)
    structures = PACKED_STRUCTURES if structure == "auto" else (structure,)
    plans = [pack(layer.weight, structure=s, groups=groups, name=layer.name) for s in structures]
    candidates = [
        build_layer(layer.module, layer.weight, layer.bias, b.name, packed=plan, name=layer.name)
        for b in competitors
        for plan in plans
        if b.competes(plan)
    ]
    dropped = []
    if layer_input is not None:
        with tolerance.matching_precision():  # cuDNN, for dense and the torch backend alike
            with torch.inference_mode():
                expected = dense(layer_input)
            candidates, dropped = _checked(candidates, layer_input, expected, layer.name)
    chosen, seconds, dense_seconds = _fastest(
        dense, candidates, layer_input if measure else None, dense_seconds, min_run_time
    )
    packed = None if chosen is dense else chosen.packed()
    return LayerChoice(
        chosen.config["structure"], chosen.backend, seconds, dense_seconds, tuple(dropped), packed
    )


def _problem(candidate, layer_input, expected) -> str | None:
    """What is wrong with ``candidate`` on the layer's real input, where the dense layer gives
    ``expected`` (None: nothing)."""
    try:
        with torch.inference_mode():
            actual = candidate(layer_input)
    except Exception as error:  # noqa: BLE001 - a failing backend costs speed, never correctness
        return f"raised {type(error).__name__}: {error}"
    error = tolerance.max_error(actual, expected)
    limit = tolerance.bound(expected, reductions=[tolerance.reduction(candidate.weight_shape)])
    return (
        None
        if error <= limit
        else f"differs from the dense layer (max error {error:.3e} > {limit:.3e})"
    )


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
        warnings.warn(
            f"sparsekit.compile: layer {name!r}: the {what} {problem}; dropped",
            SparsekitWarning,
            stacklevel=6,
        )  # compile's caller
        dropped.append(f"{what}: {problem}")
    return kept, dropped


def _fastest(dense, candidates, layer_input, dense_seconds, min_run_time):
    """(the fastest of ``dense`` and the ``candidates`` on ``layer_input``, its time, the dense
    time); None as input: by the cost models. A candidate must beat dense by ``KEEP_MARGIN``."""
    if not candidates:
        return dense, dense_seconds, dense_seconds
    if layer_input is None:  # ranked by the cost models of the backends that have one
        costs = [(backends.get(c.backend).cost(c.packed()), i, c) for i, c in enumerate(candidates)]
        ranked = [entry for entry in costs if entry[0] is not None]
        if not ranked:
            return dense, dense_seconds, dense_seconds
        cost, _, best = min(ranked)
        return (best if cost < 1 else dense), None, dense_seconds
    if dense_seconds is None:
        dense_seconds = timing.median_seconds(dense, layer_input, min_run_time=min_run_time)
    firsts = [
        (timing.one_call_seconds(layer, layer_input), layer) for layer in candidates
    ]  # each ran in _checked
    bar = SCREEN * min([dense_seconds] + [seconds for seconds, _ in firsts])
    contenders = [layer for seconds, layer in firsts if seconds < bar]
    if len(contenders) > 1:  # ranked by their medians; ties go to the earlier candidate
        timed = [
            (timing.median_seconds(layer, layer_input, min_run_time=min_run_time), i, layer)
            for i, layer in enumerate(contenders)
        ]
        contenders = [layer for _, _, layer in sorted(timed, key=lambda t: t[:2])]
    if not contenders:
        return dense, dense_seconds, dense_seconds
    # the fastest is kept only if it beats dense by the margin with confidence, in rounds
    # alternated with the dense layer: a burst of load cannot make it look faster
    best = contenders[0]
    comparison = timing.compare(best, dense, layer_input, margin=KEEP_MARGIN)
    if comparison.faster(KEEP_MARGIN):
        return best, dense_seconds * comparison.ratio, dense_seconds
    return dense, dense_seconds, dense_seconds

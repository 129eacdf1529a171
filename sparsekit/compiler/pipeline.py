"""sparsekit.compile(model, mask): the stages of ``sparsekit.compiler`` in order. ``compile``
chooses each layer's plan by measurement (``choice``); ``compile_choices`` runs the same
pipeline with choices made elsewhere (SPDY's timing tables)."""

import copy
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

from .. import masks as masks_lib
from ..errors import SparsekitError, SparsekitWarning
from ..graph import conv_bn_pairs
from ..planners import STRUCTURES
from .attention import compile_targets, rebuild_attention
from .batchnorm import FoldedLayer, fold_batchnorms, folded_layers
from .building import build_model
from .choice import LayerChoice, choose, competing_backends
from .compaction import CompactionUnavailable, compact
from .recording import as_input_tuple, record_inputs
from .reference import copy_model, dense_masked_copy, make_dense_masked
from .verification import verify as verify_model

# (a layer, the input it receives on the example inputs or None) -> its plan
Decide = Callable[[FoldedLayer, torch.Tensor | None], LayerChoice]


def compile(  # noqa: A001 - the package's verb, as in torch.compile
    model: nn.Module,
    mask=None,
    example_inputs=None,
    *,
    structure: str = "auto",
    backend: str = "auto",
    inplace: bool = False,
    verify: bool = True,
    fold_bn: bool = True,
    compact_channels: bool = True,
    measure: bool = True,
    progress: bool | None = None,
) -> nn.Module:
    """A new module computing the dense masked model's eval forward with sparse layers.

    ``mask``: see ``masks.collect_masks`` (``None``: the model's live prune masks, else the zeros
    in its weights). ``example_inputs``: a tensor or tuple of positional inputs; with them the
    plan of every layer (dense, or a packed ``structure`` on a ``backend``) is first checked
    against the dense layer on the input it receives (a candidate that differs or raises is
    dropped with a warning; a layer the inputs never reach stays dense), then chosen by measured
    latency (``measure=False``: by the backends' cost models); ``verify=True`` checks the result
    and attaches the report as ``compiled.sparsekit_report``, raising ``SparsekitError`` on a
    mismatch. Without them plans follow the cost models and nothing is checked (a warning says
    so). ``backend``: ``"auto"``, ``"dense"`` or a name of ``sparsekit.backends``.
    ``compact_channels`` (with example inputs): pruned channels leave the network's dataflow
    (``compiler.compaction``): every layer runs as a narrow layer of its live rows and inputs,
    constants folded exactly, and the result is a ``torch.fx.GraphModule``; ``False`` keeps the
    model's own structure, each layer at full width. ``inplace=True`` modifies ``model`` itself
    instead of a copy (with compaction the result is still a new GraphModule, built on the
    model's modules); ``progress`` shows a progress bar over the layers (default: when stderr
    is a terminal).
    """
    _check_model(model)
    if structure not in STRUCTURES:
        raise SparsekitError(f"structure: {structure!r} is not one of {', '.join(STRUCTURES)}")
    parameter = next(iter(model.parameters()), torch.empty(0))
    competitors = competing_backends(backend, parameter.device, parameter.dtype)
    reached = bool(as_input_tuple(example_inputs))

    def decide(layer: FoldedLayer, layer_input) -> LayerChoice:
        if reached and layer_input is None:  # no input to check a plan on
            warnings.warn(
                f"sparsekit.compile: the example inputs never reach layer {layer.name!r}, so "
                "it stays dense: nothing called it on them (a branch they do not take, or a "
                "parent that reads its weights instead of calling it)",
                SparsekitWarning,
                stacklevel=4,
            )  # compile's caller
            return LayerChoice()
        return choose(layer, structure, competitors, layer_input, measure=measure)

    return compile_choices(
        model,
        mask,
        example_inputs,
        decide,
        inplace=inplace,
        verify=verify,
        fold_bn=fold_bn,
        compact_channels=compact_channels,
        measure=measure,
        progress=progress,
    )


def compile_choices(
    model: nn.Module,
    mask,
    example_inputs,
    decide: Decide,
    *,
    inplace: bool = False,
    verify: bool = True,
    fold_bn: bool = True,
    compact_channels: bool = True,
    measure: bool = True,
    progress: bool | None = None,
) -> nn.Module:
    """``compile``'s pipeline with each layer's plan given by ``decide(layer, its input)``: the
    reference (stage 1), BatchNorm folded (2), the dataflow compacted (3, with example inputs),
    the layers' inputs recorded (4), their choices (5), the modules built (6), the result
    verified (7)."""
    _check_model(model)
    clock = _StageClock()
    inputs = as_input_tuple(example_inputs)
    checked = verify and bool(inputs)
    layer_masks = masks_lib.collect_masks(model, mask)
    # the masked layers (every one when no mask is given) that their parents call, and the
    # attention modules rebuilt so that their projections are such layers
    targets, attentions = compile_targets(model, layer_masks)

    reference = rebuild_attention(dense_masked_copy(model, layer_masks), attentions)
    if inplace:
        make_dense_masked(model, layer_masks)
        compiled = rebuild_attention(model, attentions)
    else:  # built on a copy of the reference, or on the reference itself when nothing checks it
        compiled = copy.deepcopy(reference) if checked else reference
    clock.stage("reference")
    compaction, layer_reference = None, reference
    if compact_channels and inputs:
        compiled, targets, compaction = _compacted(compiled, targets, inputs, fold_bn)
    if compaction is not None and compaction["applied"]:
        layers = folded_layers(compiled, targets, fold=False)
        if checked:  # each packed layer is checked against its narrow dense layer
            layer_reference = copy.deepcopy(compiled)
        clock.stage("compaction")
    else:
        layers = folded_layers(reference, targets, fold=fold_bn)
        clock.stage("batchnorm")
    layer_inputs = record_inputs(layer_reference, targets, inputs) if inputs else {}
    clock.stage("recording")
    if progress is None:
        progress = sys.stderr.isatty()
    choices = {}
    for layer in tqdm(layers, desc="sparsekit.compile", unit="layer", disable=not progress):
        choices[layer.name] = decide(layer, layer_inputs.get(layer.name))
    clock.stage("choice")
    build_model(compiled, layers, choices)
    clock.stage("building")

    def verified():  # the model as built now, with the figures its choices measured
        return verify_model(
            compiled,
            reference,
            inputs,
            measure=measure,
            layer_seconds=_choice_seconds(choices),
            layer_reference=layer_reference,
            compaction=compaction,
        )

    if checked:
        report = verified()
        report.raise_on_mismatch()
        clock.stage("verification")
        if measure and not report.faster and _packed(choices):
            returned = []
            for half in _least_saving_halves(layers, choices):
                for layer in half:
                    choices[layer.name] = LayerChoice(
                        dense_seconds=choices[layer.name].dense_seconds
                    )
                build_model(compiled, half, choices)
                returned += [layer.name for layer in half]
                # the report's own end-to-end comparison decides: what is reported is what decided
                report = verified()
                if report.faster:
                    break
            clock.stage("returning to dense")
            _warn_not_faster(report, returned)
        report.stage_seconds = clock.seconds
        compiled.sparsekit_report = report
    elif verify:
        warnings.warn(
            "sparsekit.compile: no example_inputs, so no candidate plan was checked, plans follow "
            "the cost models and the compiled model was not verified",
            SparsekitWarning,
            stacklevel=3,
        )
    return compiled


def _compacted(base: nn.Module, targets: list, inputs: tuple, fold_bn: bool):
    """(the compacted model, the layers it still calls, the compaction's summary for the
    report), built on a BN-folded copy of ``base``; ``base`` itself when it cannot be compacted
    (the summary says why)."""
    folded = copy_model(base)
    pairs = dict(conv_bn_pairs(folded)) if fold_bn else {}
    if fold_bn:
        fold_batchnorms(folded)
    try:
        compacted = compact(folded, inputs)
    except CompactionUnavailable as error:
        return base, targets, {"applied": False, "why": str(error)}
    if not compacted.narrowed:  # the model's own structure serves as well
        return base, targets, {"applied": False, "why": "no channel to remove"}
    module = compacted.module
    module.sparsekit_compaction = {
        "plan": compacted.plan,
        "folded_batchnorms": sorted(pairs.values()),
    }
    names = {name for name, _ in module.named_modules()}
    kept = [name for name in targets if name in names]
    return module, kept, {"applied": True, **compacted.summary()}


class _StageClock:
    """Seconds spent in each stage, for the report."""

    def __init__(self):
        self.seconds, self._last = {}, time.perf_counter()

    def stage(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now


def _least_saving_halves(layers, choices):
    """The packed layers, those whose choice saved the least time first, in halves of those
    left (a half, a quarter, ... then the last one): compile returns them to dense half by half
    until the model is measured faster than dense. A model's speed is not the sum of its layers'
    alone (a layer's input comes out of cache or not, formats change between layers), so a plan
    that wins alone can lose in the model."""
    packed = sorted(
        (layer for layer in layers if choices[layer.name].backend != "dense"),
        key=lambda layer: _saved_seconds(choices[layer.name]),
    )
    while packed:
        cut = max(1, len(packed) // 2)
        yield packed[:cut]
        packed = packed[cut:]


def _packed(choices: dict) -> list[str]:
    return [name for name, c in choices.items() if c.backend != "dense"]


def _choice_seconds(choices: dict) -> dict:
    """{layer: (dense seconds, its plan's seconds)} as the choices measured them (paired, on the
    example inputs): the report gives these rather than timing each layer again."""
    return {
        name: (c.dense_seconds, c.seconds)
        for name, c in choices.items()
        if c.backend != "dense" and c.seconds and c.dense_seconds
    }


def _saved_seconds(choice: LayerChoice) -> float:
    if choice.seconds is None or choice.dense_seconds is None:
        return 0.0
    return choice.dense_seconds - choice.seconds


def _warn_not_faster(report, returned: list[str]) -> None:
    interval = report.speedup_interval
    measured = "" if interval is None else f" (speedup {interval[0]:.2f}-{interval[1]:.2f}x)"
    if report.faster:
        outcome = f"then measured faster{measured}"
    else:  # every packed layer returned
        outcome = (
            f"still not measured faster{measured} with every layer dense: the rest of the model "
            "sets its speed, or the machine's timing is unsteady"
        )
    warnings.warn(
        "sparsekit.compile: the compiled model was not measured faster than the dense model end "
        "to end on the example inputs, although each packed layer was alone; "
        f"{len(returned)} packed layers returned to dense ({', '.join(returned)}), {outcome}",
        SparsekitWarning,
        stacklevel=4,
    )


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise SparsekitError(f"model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, (*masks_lib.SPARSE_MODULES, nn.MultiheadAttention)):
        raise SparsekitError(
            f"model: compile replaces the layers inside a model, and this {type(model).__name__} "
            "is the model itself: wrap it (nn.Sequential(layer)), or build its sparse twin "
            "directly (SparseConv2d.from_weight / SparseLinear.from_weight)"
        )
    if model.training:
        raise SparsekitError(
            "model is in training mode: compile builds an inference model with eval semantics "
            "(BatchNorm folded with its running statistics); call model.eval() first"
        )

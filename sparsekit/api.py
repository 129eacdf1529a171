"""sparsekit.compile(model, mask): a new model whose masked Conv2d / Linear layers run packed
blocks, built from the dense masked reference (``masked_model``), with each layer's plan chosen
on the inputs it really receives (``recording``, ``plan_choice``), then checked by ``verify``."""

import copy
import sys
import warnings

import torch
from torch import nn
from tqdm import tqdm

from . import masks as masks_lib
from .errors import SparsekitError, SparsekitWarning
from .graph import conv_bn_pairs
from .masked_model import dense_masked_copy, folded_weight, make_dense_masked
from .plan_choice import choose_layer, competing_backends
from .planners import STRUCTURES
from .recording import as_input_tuple, record_inputs
from .verify import verify as verify_model


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
    measure: bool = True,
    progress: bool | None = None,
) -> nn.Module:
    """A new module computing the dense masked model's eval forward with sparse layers.

    ``mask``: see ``masks.collect_masks`` (``None``: the model's live prune masks, else the zeros
    in its weights). ``example_inputs``: a tensor or tuple of positional inputs; with them the
    plan of every layer (dense, or a packed ``structure`` on a ``backend``) is first checked
    against the dense layer on the input it receives (a candidate that differs or raises is
    dropped with a warning; a layer the inputs never reach stays dense), then chosen by measured
    latency (``measure=False``: by the cost model); ``verify=True`` checks the result and attaches the report as
    ``compiled.sparsekit_report``, raising ``SparsekitError`` on a mismatch. Without them plans
    follow the cost model and nothing is checked (a warning says so). ``backend``: ``"auto"``,
    ``"dense"`` or a name of ``sparsekit.backends``. ``inplace=True`` modifies ``model`` itself
    instead of a copy; ``progress`` shows a progress bar over the layers (default: when stderr
    is a terminal).
    """
    if not isinstance(model, nn.Module):
        raise SparsekitError(f"model: expected an nn.Module, got {type(model).__name__}")
    if model.training:
        raise SparsekitError(
            "model is in training mode: compile builds an inference model with eval semantics "
            "(BatchNorm folded with its running statistics); call model.eval() first"
        )
    if structure not in STRUCTURES:
        raise SparsekitError(f"structure: {structure!r} is not one of {', '.join(STRUCTURES)}")
    inputs = as_input_tuple(example_inputs)
    checked = verify and bool(inputs)
    parameter = next(iter(model.parameters()), torch.empty(0))
    competitors = competing_backends(backend, parameter.device, parameter.dtype)
    layer_masks = masks_lib.collect_masks(model, mask)
    targets = [  # the masked layers, or every Conv2d / Linear when no mask is given
        name for name, module in model.named_modules()
        if isinstance(module, masks_lib.SPARSE_MODULES) and (not layer_masks or name in layer_masks)
    ]

    reference = dense_masked_copy(model, layer_masks)
    if inplace:
        make_dense_masked(model, layer_masks)
        compiled = model
    else:  # built on a copy of the reference, or on the reference itself when nothing checks it
        compiled = copy.deepcopy(reference) if checked else reference
    layer_inputs = record_inputs(reference, targets, inputs) if inputs else {}
    pairs = dict(conv_bn_pairs(reference)) if fold_bn else {}

    if progress is None:
        progress = sys.stderr.isatty()
    for name in tqdm(targets, desc="sparsekit.compile", unit="layer", disable=not progress):
        module = compiled.get_submodule(name)
        bn_name = pairs.get(name)
        weight, bias = folded_weight(module, compiled.get_submodule(bn_name) if bn_name else None)
        layer_input = layer_inputs.get(name)
        unreached = bool(inputs) and layer_input is None  # no input to check a plan on
        if unreached:
            warnings.warn(f"sparsekit.compile: the example inputs never reach layer {name!r}, so it "
                          "stays dense", SparsekitWarning, stacklevel=2)
        layer = choose_layer(module, weight, bias, "dense" if unreached else structure, competitors,
                             layer_input, name, measure=measure)
        layer.config["source"] = {"layer": name, "batchnorm": bn_name}
        compiled.set_submodule(name, layer)
        if bn_name:
            compiled.set_submodule(bn_name, nn.Identity())
    compiled.eval().requires_grad_(False)  # an inference model: the sparse ops have no gradient

    if checked:
        report = verify_model(compiled, reference, inputs, measure=measure)
        compiled.sparsekit_report = report
        report.raise_on_mismatch()
    elif verify:
        warnings.warn(
            "sparsekit.compile: no example_inputs, so no candidate plan was checked, plans follow "
            "the cost model and the compiled model was not verified",
            SparsekitWarning, stacklevel=2,
        )
    return compiled

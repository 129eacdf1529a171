"""Building the compiled model (``sparsekit.compile`` runs this, then ``verify``).

Steps: collect the masks (``masks``), build the dense masked model (hooks and parametrizations
made permanent, masks applied, eval mode), fold each BatchNorm into the conv that feeds it, then
replace every masked layer by ``SparseConv2d`` / ``SparseLinear`` with the fastest plan: measured
on the example inputs' shapes when given, else ranked by the planners' cost model.
"""

import copy
import torch
import torch.nn.utils.prune as prune
from torch import nn
from torch.nn.utils import parametrize
from tqdm import tqdm

from . import masks as masks_lib
from . import ops, timing
from .errors import SparsekitError
from .graph import batchnorm_affine, conv_bn_pairs
from .nn import SparseConv2d, SparseLinear
from .structure import PLANNERS

PACKED_STRUCTURES = tuple(s for s in PLANNERS if s != "dense")
MIN_RUN_TIME = 0.1  # seconds of timing per candidate plan of a layer
KEEP_MARGIN = 0.97  # a packed layer must beat dense by 3%, so timing noise cannot make it slower


def build(
    model: nn.Module,
    mask,
    inputs: tuple,
    *,
    structure: str = "auto",
    backend: str = "auto",
    inplace: bool = False,
    fold_bn: bool = True,
    measure: bool = True,
    progress: bool = False,
    keep_reference: bool = True,
) -> tuple[nn.Module, nn.Module]:
    """(compiled model, dense masked reference) for ``sparsekit.compile``, which documents the
    arguments; ``inputs`` is the tuple of example inputs (may be empty). Without
    ``keep_reference`` the compiled model is built on the reference itself, which is then
    returned as it is (compiled), saving a copy."""
    if not isinstance(model, nn.Module):
        raise SparsekitError(f"model: expected an nn.Module, got {type(model).__name__}")
    if model.training:
        raise SparsekitError(
            "model is in training mode: compile builds an inference model with eval semantics "
            "(BatchNorm folded with its running statistics); call model.eval() first"
        )
    if structure not in (*PLANNERS, "auto"):
        raise SparsekitError(f"structure: {structure!r} is not one of {', '.join((*PLANNERS, 'auto'))}")
    layer_masks = masks_lib.collect_masks(model, mask)
    targets = _targets(model, layer_masks, all_layers=not layer_masks)

    reference = dense_masked_copy(model, layer_masks)
    if inplace:
        make_dense_masked(model, layer_masks)
        compiled = model
    elif keep_reference:
        compiled = copy.deepcopy(reference)
    else:
        compiled = reference
    layer_inputs = record_inputs(reference, targets, inputs) if inputs and measure else {}
    pairs = dict(conv_bn_pairs(reference)) if fold_bn else {}

    device = next(iter(reference.parameters()), torch.empty(0)).device
    backends = _backends(backend, device)
    for name in tqdm(targets, desc="sparsekit.compile", unit="layer", disable=not progress):
        module = compiled.get_submodule(name)
        bn_name = pairs.get(name)
        weight, bias = _effective(module, compiled.get_submodule(bn_name) if bn_name else None)
        layer = choose_layer(module, weight, bias, structure, backends, layer_inputs.get(name), name)
        layer.config["source"] = {"layer": name, "batchnorm": bn_name}
        compiled.set_submodule(name, layer)
        if bn_name:
            compiled.set_submodule(bn_name, nn.Identity())
    compiled.eval().requires_grad_(False)  # an inference model: the sparse ops have no gradient
    return compiled, reference


def as_input_tuple(example_inputs) -> tuple:
    if example_inputs is None:
        return ()
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise SparsekitError(
        f"example_inputs: expected a tensor or a tuple of them, got {type(example_inputs).__name__}"
    )


def _targets(model: nn.Module, layer_masks: dict, all_layers: bool) -> list[str]:
    """Layers to make sparse: the masked ones, or every Conv2d / Linear when no mask is given."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, masks_lib.SPARSE_MODULES) and (all_layers or name in layer_masks)
    ]


# ---- the dense masked model ----


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


# ---- BatchNorm folding ----


def _effective(module: nn.Module, bn: nn.BatchNorm2d | None):
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


# ---- per-layer plan choice ----


CHOICES = ("auto", "cpu", "torch", "triton", "reference", "dense")


def _backends(backend: str, device: torch.device) -> list[str]:
    """The backends whose packed plans compete with dense."""
    if backend == "auto":
        if device.type == "cpu":
            return ["cpu", "torch"]
        return ["torch"] if ops.TRITON_ERROR is not None else ["triton", "torch"]
    if backend not in CHOICES:
        raise SparsekitError(f"backend: {backend!r} is not one of {', '.join(CHOICES)}")
    return [] if backend == "dense" else [backend]


def record_inputs(model: nn.Module, names: list[str], inputs: tuple) -> dict[str, torch.Tensor]:
    """The first input each named layer receives when ``model`` runs on ``inputs``."""
    return run_recording(model, inputs, names, outputs=False)[0]


def run_recording(model, inputs, names, outputs: bool):
    """Runs ``model(*inputs)``, recording the named layers' first inputs (and outputs); an error
    names the layer it happened in."""
    seen_in, seen_out, current = {}, {}, [None]
    handles = []
    for name, module in model.named_modules():
        if name and not any(module.children()):

            def enter(mod, args, name=name):
                current[0] = name

            handles.append(module.register_forward_pre_hook(enter))
    for name in names:
        module = model.get_submodule(name)

        def pre(mod, args, name=name):
            if args and isinstance(args[0], torch.Tensor):
                seen_in.setdefault(name, args[0].detach())

        def post(mod, args, result, name=name):
            if isinstance(result, torch.Tensor):
                seen_out.setdefault(name, result.detach().clone())

        handles.append(module.register_forward_pre_hook(pre))
        if outputs:
            handles.append(module.register_forward_hook(post))
    try:
        with torch.inference_mode():
            result = model(*inputs)
    except Exception as error:  # noqa: BLE001 - reported with the layer it happened in
        where = f" in layer {current[0]!r}" if current[0] else ""
        raise SparsekitError(f"example_inputs: the model failed{where}: {error}") from error
    finally:
        for handle in handles:
            handle.remove()
    return seen_in, seen_out, result


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

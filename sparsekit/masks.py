"""Masks: validate a layer's mask against its weight and reduce it to the pattern to pack."""

import torch

from .errors import SparsekitError

WEIGHT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_weight(weight: torch.Tensor, name: str = "weight") -> None:
    """Shape and dtype checks that need no data, so they also run on meta tensors."""
    if not isinstance(weight, torch.Tensor):
        raise SparsekitError(f"{name}: expected a tensor, got {type(weight).__name__}")
    if weight.dim() not in (2, 4):
        raise SparsekitError(
            f"{name}: expected a Linear [out, in] or Conv2d [out, in/groups, kh, kw] weight, "
            f"got shape {tuple(weight.shape)}"
        )
    if weight.numel() == 0:
        raise SparsekitError(f"{name}: has a zero-size dimension, shape {tuple(weight.shape)}")
    if weight.dtype not in WEIGHT_DTYPES:
        raise SparsekitError(f"{name}: dtype {weight.dtype} is not a floating-point dtype")


def layer_pattern(weight: torch.Tensor, mask: torch.Tensor | None = None, name: str = "weight"):
    """The kept non-zeros of ``weight * mask`` as a bool tensor of the weight's shape.

    ``mask`` may be bool, integer or floating point but must hold only 0 and 1; ``None`` means
    the zeros already in the weight are the mask. Neither argument is modified.
    """
    check_weight(weight, name)
    if not torch.isfinite(weight).all():
        raise SparsekitError(f"{name}: contains NaN or inf")
    nonzero = weight != 0
    if mask is None:
        return nonzero
    check_mask(weight, mask, name)
    return nonzero & mask.to(device=weight.device, dtype=torch.bool)


def check_mask(param: torch.Tensor, mask, name: str) -> None:
    """``mask`` is a tensor of ``param``'s shape holding only 0 and 1 (any dtype)."""
    if not isinstance(mask, torch.Tensor):
        raise SparsekitError(f"mask for {name}: expected a tensor, got {type(mask).__name__}")
    if mask.is_meta:  # checked first: every test of its values below would need data
        raise SparsekitError(
            f"mask for {name}: is on the meta device, which holds no values; a mask must hold "
            "real 0/1 values (make it on the CPU or the model's device)"
        )
    if mask.shape != param.shape:
        raise SparsekitError(
            f"mask for {name}: shape {tuple(mask.shape)} does not match the parameter's "
            f"{tuple(param.shape)}"
        )
    if mask.dtype != torch.bool:
        if mask.is_complex() or not ((mask == 0) | (mask == 1)).all():
            raise SparsekitError(f"mask for {name}: values must be 0 or 1")


# ---- collecting masks from every source users have ----

SPARSE_MODULES = (torch.nn.Conv2d, torch.nn.Linear)
LAYER_PARAMS = ("weight", "bias")
# nn.MultiheadAttention's input projections are parameters of its own, not Linear layers: compile
# packs them as layers of the module it puts in its place (compiler.attention)
ATTENTION_PARAMS = (
    "in_proj_weight",
    "in_proj_bias",
    "q_proj_weight",
    "k_proj_weight",
    "v_proj_weight",
)
PARAMS = LAYER_PARAMS + ATTENTION_PARAMS


def live_masks(model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Masks held by the model itself: ``torch.nn.utils.prune`` buffers (``weight_mask``) and
    ``torch.ao.pruning`` parametrizations (``parametrizations.weight[i].mask``)."""
    found = {}
    for name, module in model.named_modules():
        for param in PARAMS:
            mask = getattr(module, f"{param}_mask", None)
            plist = getattr(getattr(module, "parametrizations", None), param, None)
            if plist is not None:
                masks = [
                    p.mask for p in plist if isinstance(getattr(p, "mask", None), torch.Tensor)
                ]
                if masks:
                    mask = masks[0] if len(masks) == 1 else torch.stack(masks).bool().all(0)
            if isinstance(mask, torch.Tensor):
                found.setdefault(name, {})[param] = mask.detach()
    return found


def _load_file(path) -> dict:
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise SparsekitError(f"mask: no file at {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)  # never runs code
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's bad input
        raise SparsekitError(f"mask: cannot read {path}: {error}") from error


def collect_masks(model: torch.nn.Module, mask) -> dict[str, dict[str, torch.Tensor]]:
    """``{module name: {"weight"|"bias": 0/1 tensor}}`` from any supported form of ``mask``.

    Accepted: ``None`` (the model's live prune/parametrization masks, else nothing: the zeros in
    the weights are then the mask); a dict keyed by parameter name (``"layer1.0.conv1.weight"``),
    module name (its weight), ``*_mask`` keys of a state_dict (other keys are ignored), or module
    name -> ``{"weight": m, "bias": m}``; a path to a ``.pt`` or ``.safetensors`` file of such a
    dict. Only Conv2d and Linear layers and ``nn.MultiheadAttention``'s input projections
    (``"attn.in_proj_weight"``, ``ATTENTION_PARAMS``) can take masks; a key naming anything else
    is an error.
    """
    if mask is None:
        return live_masks(model)
    if isinstance(mask, (str, bytes)) or hasattr(mask, "__fspath__"):
        mask = _load_file(mask)
    if not isinstance(mask, dict):
        raise SparsekitError(
            f"mask: expected None, a dict, or a path to a .pt/.safetensors file, got "
            f"{type(mask).__name__}"
        )
    modules = dict(model.named_modules())
    entries = []  # (key as given, module name, param, tensor)
    state_dict_form = any(isinstance(k, str) and k.endswith("_mask") for k in mask)
    for key, value in mask.items():
        if not isinstance(key, str):
            raise SparsekitError(f"mask: keys must be strings, got {key!r}")
        if state_dict_form:
            if not key.endswith("_mask"):
                continue
            module_name, _, param = key[: -len("_mask")].rpartition(".")
            entries.append((key, module_name, param, value))
        elif isinstance(value, dict):
            entries += [(f"{key}[{p!r}]", key, p, v) for p, v in value.items()]
        elif key in modules:
            entries.append((key, key, "weight", value))
        else:
            module_name, _, param = key.rpartition(".")
            entries.append((key, module_name, param, value))

    found = {}
    for key, module_name, param, value in entries:
        module = modules.get(module_name)
        if module is None or param not in PARAMS or _param(module, param) is None:
            raise SparsekitError(f"mask: key {key!r} names no parameter of the model")
        if not _maskable(module, param):
            raise SparsekitError(
                f"mask: key {key!r} masks a {type(module).__name__}; only Conv2d and Linear "
                "layers and nn.MultiheadAttention's input projections can be made sparse"
            )
        check_mask(_param(module, param), value, f"{module_name}.{param}")
        found.setdefault(module_name, {})[param] = value.detach()
    return found


def _maskable(module: torch.nn.Module, param: str) -> bool:
    if isinstance(module, torch.nn.MultiheadAttention):
        return param in ATTENTION_PARAMS
    return isinstance(module, SPARSE_MODULES) and param in LAYER_PARAMS


def _param(module: torch.nn.Module, param: str):
    """The module's (effective) parameter, also under prune hooks (``weight_orig``)."""
    value = getattr(module, param, None)
    return value if isinstance(value, torch.Tensor) else getattr(module, f"{param}_orig", None)

"""save(compiled, path) / load(path, model): safetensors for tensors, JSON for structure.

A saved model is a directory holding ``model.safetensors`` (the compiled model's whole
state_dict) and ``sparsekit.json`` (each sparse layer's config and the BatchNorms folded away).
Loading never unpickles nor runs code from the files: it rebuilds the sparse layers into a copy
of a fresh instance of the same architecture, then loads the tensors strictly.
"""

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .compiler.reference import copy_model
from .errors import SparsekitError
from .nn import SparseConv2d, SparseLinear, from_config

FORMAT = "sparsekit.compiled"
VERSION = 1
TENSORS, META = "model.safetensors", "sparsekit.json"


def save(compiled: nn.Module, path) -> Path:
    """Write ``compiled`` (from ``sparsekit.compile``) into the directory ``path``."""
    path = Path(path)
    layers = {
        name: m.config
        for name, m in compiled.named_modules()
        if isinstance(m, (SparseConv2d, SparseLinear))
    }
    if not layers:
        raise SparsekitError("save: the model has no sparsekit layers; compile it first")
    folded = sorted(
        c["source"]["batchnorm"] for c in layers.values() if c.get("source", {}).get("batchnorm")
    )
    report = getattr(compiled, "sparsekit_report", None)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "layers": layers,
        "folded_batchnorms": folded,
        "report": report.to_dict() if report is not None else None,
    }
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in compiled.state_dict().items()}
    save_file(state, str(path / TENSORS))
    (path / META).write_text(json.dumps(meta, indent=1))
    return path


def read_meta(path) -> dict:
    """The JSON half of a saved model, checked for format and version."""
    file = Path(path) / META
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SparsekitError(f"load: cannot read {file}: {error}") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise SparsekitError(f"load: {file} is not a sparsekit v{VERSION} model description")
    if not isinstance(meta.get("layers"), dict) or not isinstance(
        meta.get("folded_batchnorms"), list
    ):
        raise SparsekitError(f"load: {file} lacks its layers or folded_batchnorms")
    return meta


def load(path, model: nn.Module) -> nn.Module:
    """The compiled model saved at ``path``, rebuilt on a copy of ``model`` (a fresh instance of
    the architecture it was compiled from; ``model`` itself is not modified)."""
    meta = read_meta(path)
    try:
        state = load_file(str(Path(path) / TENSORS))
    except (OSError, SafetensorError) as error:
        raise SparsekitError(f"load: cannot read {Path(path) / TENSORS}: {error}") from error
    rebuilt = copy_model(model)
    for name in meta["folded_batchnorms"]:
        _replace(rebuilt, name, nn.BatchNorm2d, nn.Identity())
    for name, config in meta["layers"].items():
        if not isinstance(config, dict):
            raise SparsekitError(f"load: the config of layer {name!r} is not an object")
        kind = nn.Conv2d if config.get("type") == "SparseConv2d" else nn.Linear
        _replace(rebuilt, name, kind, from_config(config))
    try:  # the sparse layers check their packs and build their layouts as they load
        rebuilt.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise SparsekitError(f"load: the saved tensors do not fit the model: {error}") from error
    return rebuilt.eval().requires_grad_(False)  # as compile() returns it: an inference model


def _replace(model: nn.Module, name: str, expected: type, replacement: nn.Module) -> None:
    try:
        current = model.get_submodule(name)
    except AttributeError as error:
        raise SparsekitError(
            f"load: the model has no layer {name!r}; is it the same architecture?"
        ) from error
    if not isinstance(current, expected):
        raise SparsekitError(
            f"load: layer {name!r} is a {type(current).__name__}, expected {expected.__name__}; "
            "is it the same architecture?"
        )
    shape = getattr(replacement, "weight_shape", None)
    if shape is not None and tuple(current.weight.shape) != tuple(shape):
        raise SparsekitError(
            f"load: the saved tensors do not fit the model: layer {name!r} has weight shape "
            f"{tuple(current.weight.shape)}, the saved one {tuple(shape)}"
        )
    model.set_submodule(name, replacement)

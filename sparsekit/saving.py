"""save(compiled, path) / load(path, model): safetensors for tensors, JSON for structure.

A saved model is a directory holding ``model.safetensors`` (the compiled model's whole
state_dict) and ``sparsekit.json`` (each sparse layer's config, the BatchNorms folded away and,
for a compacted model, its channel plan). Loading never unpickles nor runs code from the files:
it rebuilds the sparse layers into a copy of a fresh instance of the same architecture (its
dataflow compacted again from the saved plan: the same graph, narrow layers and channel maps),
then loads the tensors strictly.

``sparsekit.json`` holds the SHA-256 of its own description (every entry but ``sha256``, as
canonical JSON: sorted keys, no spaces, ASCII) and of the bytes of ``model.safetensors``, so
that an edited or corrupted file is refused, not loaded into a silently different model. Each
layer's config must also agree with the module of the model it replaces (sizes, stride,
padding, ...), and every size is checked before anything is allocated.
"""

import hashlib
import json
import math
import warnings
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .compiler.attention import attention_of_layers, rebuild_attention
from .compiler.batchnorm import fold_batchnorms
from .compiler.compaction import CompactionUnavailable, compact
from .compiler.reference import copy_model
from .errors import SparsekitError, SparsekitWarning
from .graph import conv_bn_pairs
from .nn import DTYPES, LAYERS, SparseConv2d, SparseLinear, from_config, geometry

FORMAT = "sparsekit.compiled"
VERSION = 2  # 2: sparsekit.json carries the SHA-256 of its description and of the tensors
UNHASHED_VERSION = 1  # still read, with a warning: nothing tells an edit of it
TENSORS, META, HASHES = "model.safetensors", "sparsekit.json", "sha256"
REPLACES = {"SparseConv2d": nn.Conv2d, "SparseLinear": nn.Linear}
SIZES = ("values", "row_idx", "col_idx", "blocks")


def save(compiled: nn.Module, path) -> Path:
    """Write ``compiled`` (from ``sparsekit.compile``) into the directory ``path``."""
    path = Path(path)
    layers = _sparse_layers(compiled)
    if not layers:
        raise SparsekitError("save: the model has no sparsekit layers; compile it first")
    configs = {name: m.config for name, m in layers.items()}
    folded = sorted(
        c["source"]["batchnorm"] for c in configs.values() if c.get("source", {}).get("batchnorm")
    )
    report = getattr(compiled, "sparsekit_report", None)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "layers": configs,
        "folded_batchnorms": folded,
        "compaction": getattr(compiled, "sparsekit_compaction", None),
        "report": report.to_dict() if report is not None else None,
    }
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in compiled.state_dict().items()}
    save_file(state, str(path / TENSORS))
    written = json.loads(json.dumps(meta))  # hashed as load will read it: tuples as lists, ...
    meta[HASHES] = {
        "description": _description_sha256(written),
        TENSORS: _file_sha256(path / TENSORS),
    }
    (path / META).write_text(json.dumps(meta, indent=1))
    return path


def read_meta(path) -> dict:
    """The JSON half of a saved model, checked for format, version and its own SHA-256."""
    file = Path(path) / META
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SparsekitError(f"load: cannot read {file}: {error}") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SparsekitError(f"load: {file} is not a sparsekit model description")
    _check_version(meta, file)
    if not isinstance(meta.get("layers"), dict) or not isinstance(
        meta.get("folded_batchnorms"), list
    ):
        raise SparsekitError(f"load: {file} lacks its layers or folded_batchnorms")
    return meta


def load(path, model: nn.Module) -> nn.Module:
    """The compiled model saved at ``path``, rebuilt on a copy of ``model`` (a fresh instance of
    the architecture it was compiled from; ``model`` itself is not modified)."""
    path = Path(path)
    meta = read_meta(path)
    state = _read_tensors(path / TENSORS, meta)
    rebuilt = copy_model(model)
    # the attention modules compile rebuilt, so that their projections are layers to replace
    rebuild_attention(rebuilt, attention_of_layers(rebuilt, meta["layers"]))
    if meta.get("compaction") is not None:
        rebuilt = _compacted(rebuilt, meta["compaction"], path / META)
    for name in meta["folded_batchnorms"]:
        _module(rebuilt, name, nn.BatchNorm2d, path / META)
        rebuilt.set_submodule(name, nn.Identity())
    for name, config in meta["layers"].items():
        layer = _rebuild(rebuilt, name, config, path / META, meta["folded_batchnorms"])
        rebuilt.set_submodule(name, layer)
    _load_state(rebuilt, state, path / TENSORS)
    return rebuilt.eval().requires_grad_(False)  # as compile() returns it: an inference model


def _compacted(model: nn.Module, compaction, file: Path) -> nn.Module:
    """``model`` with its BatchNorms folded (their values come with the tensors) and its
    dataflow compacted by the saved plan."""
    if not isinstance(compaction, dict) or not isinstance(compaction.get("plan"), dict):
        raise SparsekitError(f"load: {file}: the compaction entry lacks its plan")
    pairs = sorted(bn for _, bn in conv_bn_pairs(model))
    if pairs != compaction.get("folded_batchnorms"):
        raise SparsekitError(
            f"load: {file}: the model's BatchNorms that follow a conv are {pairs}, the saved "
            f"model folded {compaction.get('folded_batchnorms')}; is it the same architecture?"
        )
    fold_batchnorms(model)
    try:
        compacted = compact(model, plan=compaction["plan"])
    except (CompactionUnavailable, KeyError, ValueError, TypeError, IndexError) as error:
        raise SparsekitError(
            f"load: {file}: the saved channel plan does not fit the model ({error!r}); is it "
            "the same architecture?"
        ) from error
    compacted.module.sparsekit_compaction = compaction
    return compacted.module


def _sparse_layers(model: nn.Module) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, (SparseConv2d, SparseLinear))}


# ---- integrity: the version and the SHA-256 of both files ----


def _description_sha256(meta: dict) -> str:
    """SHA-256 of every entry of ``meta`` but the hashes, as canonical JSON: one text for one
    content, however the file was indented."""
    description = {k: v for k, v in meta.items() if k != HASHES}
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as stream:  # in chunks: a model's tensors need not fit twice in memory
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_version(meta: dict, file: Path) -> None:
    version = meta.get("version")
    if version == UNHASHED_VERSION:
        warnings.warn(
            f"load: {file} is format version {version}, saved without a SHA-256: an edit or a "
            "corruption of it cannot be detected; save the model again to add one",
            SparsekitWarning,
            stacklevel=4,
        )
        return
    if version != VERSION:
        raise SparsekitError(
            f"load: {file} is format version {version!r}; this sparsekit reads versions "
            f"{UNHASHED_VERSION} and {VERSION}"
        )
    hashes = meta.get(HASHES)
    if not isinstance(hashes, dict) or hashes.get("description") != _description_sha256(meta):
        raise SparsekitError(
            f"load: {file} was edited or corrupted: its content does not match the SHA-256 "
            "saved with it"
        )


def _read_tensors(file: Path, meta: dict) -> dict:
    """The saved state_dict, after checking the file's bytes against the SHA-256 saved in the
    description (a version 1 description has none)."""
    try:
        unhashed = meta["version"] == UNHASHED_VERSION
        if not unhashed and _file_sha256(file) != meta[HASHES].get(TENSORS):
            raise SparsekitError(
                f"load: {file} was edited or corrupted: its bytes do not match the SHA-256 "
                f"saved in {META}"
            )
        return load_file(str(file))
    except (OSError, SafetensorError) as error:
        raise SparsekitError(f"load: cannot read {file}: {error}") from error


# ---- rebuilding the sparse layers from their configs ----


def _module(model: nn.Module, name: str, expected: type, file: Path) -> nn.Module:
    try:
        current = model.get_submodule(name)
    except AttributeError as error:
        raise SparsekitError(
            f"load: {file} names a layer {name!r} the model lacks; is it the same architecture?"
        ) from error
    if not isinstance(current, expected):
        raise SparsekitError(
            f"load: {file}: layer {name!r} is a {type(current).__name__}, expected "
            f"{expected.__name__}; is it the same architecture?"
        )
    return current


def _rebuild(model: nn.Module, name: str, config, file: Path, folded: list) -> nn.Module:
    """The empty sparse layer of ``config``, after checking it against the module it replaces
    (which gains a bias when the BatchNorm after it was folded into it) and every size it
    allocates."""
    where = f"load: {file}: layer {name!r}"
    if not isinstance(config, dict) or config.get("type") not in LAYERS:
        raise SparsekitError(f"{where}: the config is not an object of a known type")
    module = _module(model, name, REPLACES[config["type"]], file)
    expected = geometry(module)
    expected["bias"] |= isinstance(config.get("source"), dict) and (
        config["source"].get("batchnorm") in folded
    )
    _check_geometry(config, expected, where)
    _check_entries(config, module, where)
    try:
        return from_config(config)
    except SparsekitError as error:
        raise SparsekitError(f"{where}: {error}") from error


def _check_geometry(config: dict, expected: dict, where: str) -> None:
    """Every size and argument of the saved layer's op equals the module's (``expected``): a
    layer that does not fit is refused, not run with another stride or padding than the model's."""
    for key, value in expected.items():
        saved = config.get(key)
        if json.dumps(saved) != json.dumps(value):  # exact: 3.0 or true is not 3
            raise SparsekitError(
                f"{where}: the saved layer does not fit the model: its {key} is {saved!r}, the "
                f"model's {value!r}; is it the same architecture?"
            )


def _check_entries(config: dict, module: nn.Module, where: str) -> None:
    """The entries the module does not fix have the types the layer builds from, and the pack's
    sizes are ints no larger than the dense weight: checked before the buffers are allocated."""
    flags = {"relu": config.get("relu"), "channels_last": config.get("channels_last", False)}
    for key, flag in flags.items():  # channels_last: absent from configs saved before it was
        if not isinstance(flag, bool):
            raise SparsekitError(f"{where}: {key} must be true or false, not {flag!r}")
    if not isinstance(config.get("source", {}), dict):
        raise SparsekitError(f"{where}: source must be an object, not {config['source']!r}")
    if config.get("dtype") not in DTYPES:
        raise SparsekitError(f"{where}: dtype {config.get('dtype')!r} is not one of {list(DTYPES)}")
    for key in ("backend", "structure"):
        if not isinstance(config.get(key), str):
            raise SparsekitError(f"{where}: {key} must be a string, not {config.get(key)!r}")
    if config["backend"] == "dense":
        return
    sizes, limit = config.get("sizes"), math.prod(module.weight.shape)
    if not isinstance(sizes, dict):
        raise SparsekitError(f"{where}: a packed layer's config needs its sizes")
    for key in SIZES:
        size = sizes.get(key)
        # a pack stores each weight of the dense layer at most once (its blocks cover disjoint
        # positions), so none of its tensors outgrows the dense weight
        if type(size) is not int or not 0 <= size <= limit:
            raise SparsekitError(
                f"{where}: sizes.{key} is {size!r}, not an int in [0, {limit}] (the dense "
                "weight's size)"
            )


# ---- loading the tensors ----


def _load_state(model: nn.Module, state: dict, file: Path) -> None:
    """``state`` into ``model``, strictly: each sparse layer alone first, so that what its pack
    check or its backend raises names it, then the rest of the model."""
    layers = _sparse_layers(model)
    for name, layer in layers.items():
        prefix = f"{name}."
        own = {k[len(prefix) :]: state.pop(k) for k in list(state) if k.startswith(prefix)}
        try:  # the layer checks its pack and builds its layout as it loads
            layer.load_state_dict(own, strict=True)
        except (SparsekitError, RuntimeError) as error:
            named = repr(name) in str(error)  # the pack check names a compiled layer itself
            detail = error if named else f"layer {name!r}: {error}"
            raise SparsekitError(f"load: {file}: {detail}") from error
    try:  # assigned, not copied: a model converted before saving (.half()) keeps that dtype
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as error:
        raise SparsekitError(
            f"load: {file}: the saved tensors do not fit the model: {error}"
        ) from error
    # the sparse layers' tensors, loaded above, are missing from this second pass only
    missing = [k for k in result.missing_keys if k.rpartition(".")[0] not in layers]
    if missing or result.unexpected_keys:
        raise SparsekitError(
            f"load: {file}: the saved tensors do not fit the model: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )

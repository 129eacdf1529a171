"""SPDY's timing table: each prunable layer at each sparsity level, packed the way compile packs
it and timed on the input it really receives.

A cell is the layer compile would build for that level's mask (``compiler.choice``: every plan
on every competing backend, checked against the dense layer, the fastest kept if it beats dense)
and its median time; level 0 is the dense layer, timed once per layer. The cells' plans are what
``sparsekit.plan`` builds its compiled models from, without timing again. Tables are cached
in a JSON file under a key of everything they depend on (device, dtype, threads, input shapes,
layers and their inputs' memory formats, levels, structure, transform, backend, package version).
"""

import dataclasses
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .. import __version__, timing
from ..compiler.batchnorm import folded_layers
from ..compiler.building import build_layer
from ..compiler.choice import choose, competing_backends
from ..compiler.recording import as_input_tuple, record_inputs
from ..errors import SparsekitError
from ..geometry import is_channels_last
from ..planners import STRUCTURES
from ..transforms import prunable_convs
from .levels import DEFAULT_LEVELS, check_levels, check_transform, level_masks

MIN_RUN_TIME = 0.05  # seconds of timing per plan of a cell


@dataclass
class TimingTable:
    layers: list[str]
    levels: list[float]
    seconds: list[list[float]]  # [layer][level]: the median time of the layer compile would build
    plans: list[list[str]]  # [layer][level]: "structure/backend" of that layer (LayerChoice.plan)
    key: dict  # what the times depend on (the cache key)
    build_seconds: float  # how long measuring the table took

    def to_dict(self) -> dict:
        return asdict(self)


def _key(model, inputs, layer_inputs, names, levels, structure, transform, backend) -> dict:
    first = next(iter(model.parameters()))
    return {
        "device": timing.device_name(first.device),
        "dtype": str(first.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "inputs": [list(x.shape) for x in inputs if isinstance(x, torch.Tensor)],
        "layers": {name: list(layer_inputs[name].shape) for name in names},
        "formats": {
            name: "channels_last" if is_channels_last(layer_inputs[name]) else "nchw"
            for name in names
        },
        "levels": list(levels),
        "structure": structure,
        "transform": transform,
        "backend": backend,
        "sparsekit": __version__,
    }


def _cached(cache: Path | None, key: dict) -> TimingTable | None:
    if cache is None or not cache.exists():
        return None
    try:
        tables = json.loads(cache.read_text())["tables"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise SparsekitError(
            f"timing_table: {cache} is not a timing-table cache ({error})"
        ) from None
    return next((TimingTable(**t) for t in tables if t["key"] == key), None)


def _store(cache: Path, table: TimingTable) -> None:
    tables = json.loads(cache.read_text())["tables"] if cache.exists() else []
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(
        json.dumps({"tables": [t for t in tables if t["key"] != table.key] + [table.to_dict()]})
    )


def timing_table(
    model,
    example_inputs,
    levels=DEFAULT_LEVELS,
    structure: str = "auto",
    backend: str = "auto",
    transform=None,
    *,
    layers=None,
    cache=None,
    progress: bool | None = None,
    min_run_time: float = MIN_RUN_TIME,
) -> TimingTable:
    """The timing table of ``model`` (eval mode) on ``example_inputs``: for each of ``layers``
    (default: every Conv2d but the first) and each sparsity of ``levels`` (increasing, the
    first 0), the median seconds of the layer compile builds from that level's magnitude mask
    (``transform``: None, ``"refill"``, ``"regroup"`` or ``"kernel"``) with ``structure`` on
    ``backend``, BatchNorm folded as compile folds it. ``cache``: a JSON file that keeps tables
    by their key; a table found there is returned without measuring. ``progress``: a progress
    bar over the cells (default: when stderr is a terminal)."""
    if model.training:
        raise SparsekitError(
            "timing_table: call model.eval() first (layers are timed with eval semantics)"
        )
    if structure not in STRUCTURES:
        raise SparsekitError(f"structure: {structure!r} is not one of {', '.join(STRUCTURES)}")
    levels, transform = check_levels(levels), check_transform(transform)
    inputs = as_input_tuple(example_inputs)
    if not inputs:
        raise SparsekitError("timing_table: example_inputs are needed to time the layers on")
    names = list(layers) if layers is not None else [name for name, _ in prunable_convs(model)]
    modules = dict(model.named_modules())
    unknown = [
        n for n in names if not isinstance(modules.get(n), (torch.nn.Conv2d, torch.nn.Linear))
    ]
    if unknown or not names:
        raise SparsekitError(
            f"timing_table: layers must name Conv2d / Linear layers of the model; not: {unknown}"
        )
    layer_inputs = record_inputs(model, names, inputs)
    unreached = [n for n in names if n not in layer_inputs]
    if unreached:
        raise SparsekitError(f"timing_table: the example inputs never reach {unreached}")
    key = _key(model, inputs, layer_inputs, names, levels, structure, transform, backend)
    cache = Path(cache) if cache is not None else None
    found = _cached(cache, key)
    if found is not None:
        return found

    parameter = next(iter(model.parameters()))
    competitors = competing_backends(backend, parameter.device, parameter.dtype)
    seconds, plans = [], []
    started = time.perf_counter()
    bar = tqdm(
        total=len(names) * len(levels),
        desc="sparsekit.spdy.timing_table",
        unit="cell",
        disable=not (sys.stderr.isatty() if progress is None else progress),
    )
    for layer in folded_layers(model, names):
        x = layer_inputs[layer.name]
        dense = build_layer(layer.module, layer.weight, layer.bias, "dense", name=layer.name)
        dense_seconds = timing.median_seconds(dense, x, min_run_time=min_run_time)
        row, row_plans = [dense_seconds], ["dense/dense"]
        bar.update()
        for mask in level_masks(layer.module.weight, levels[1:], transform):
            masked = dataclasses.replace(layer, weight=layer.weight * mask.to(layer.weight.dtype))
            choice = choose(
                masked,
                structure,
                competitors,
                x,
                dense_seconds=dense_seconds,
                min_run_time=min_run_time,
            )
            row.append(choice.seconds)
            row_plans.append(choice.plan)
            bar.update()
        seconds.append(row)
        plans.append(row_plans)
    bar.close()
    table = TimingTable(names, list(levels), seconds, plans, key, time.perf_counter() - started)
    if cache is not None:
        _store(cache, table)
    return table

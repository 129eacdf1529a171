"""Stage 7 of compile: verify(compiled, reference, example_inputs), the numerical and latency
check against the dense reference (also public: ``sparsekit.verify``).

Per sparse layer: the reference's input to that layer is fed to the compiled layer and its
output compared with the reference's (the BatchNorm's output where one was folded in). Latency
is measured for packed layers only (a dense one runs the reference's own op): the compiled layer
against the reference's conv (+ BatchNorm) on that input, in alternated rounds
(``timing.compare``; compile passes the figures its plan choice measured so, and those are not
measured again). End to end: both models on the example inputs, the same way, with the
speedup's confidence interval. A speedup beyond the FLOP limit (dense multiply-adds over those
run) is measured again with more rounds and, if it stays beyond, marked unreliable. Errors are
held to the bounds of ``tolerance`` (by precision, grown with the layers' reductions and, for
the model, their number). The report also gives the spread of the reference's output across
the batch: a spread that is not far above the bound means the output barely depends on the
input, so the comparison cannot tell a wrong kernel from a right one (a warning says so).
"""

import json
import math
import warnings
from dataclasses import asdict, dataclass, field

import torch

from .. import timing, tolerance
from ..errors import SparsekitError, SparsekitWarning
from ..geometry import output_memory_format
from ..nn import SparseConv2d, SparseLinear
from .recording import run_recording

MIN_ROUNDS = timing.MIN_ROUNDS  # of the paired comparison of a layer or the model with dense


@dataclass
class LayerReport:
    name: str
    kind: str
    structure: str
    backend: str
    blocks: int
    density: float  # kept weights over the dense weight's
    fill: float  # kept weights over stored values (zeros stored inside blocks lower it)
    flops_ratio: float  # multiply-adds run over the dense layer's: 1 for a dense layer
    macs: int  # of the dense layer on the example input
    max_error: float
    bound: float
    dense_ms: float | None = None
    sparse_ms: float | None = None
    note: str = ""
    # a speedup beyond the FLOP limit, measured twice: the machine's timing was not reliable
    unreliable: bool = False
    # with compaction: channels the narrow layer reads and computes ("held/of"), and the FLOP
    # limit of the mask alone (dense MACs over the mask's non-zeros); macs and flops_ratio are
    # then the dense layer's and those run over them, the narrowing included
    channels_in: str = ""
    channels_out: str = ""
    mask_flop_limit: float | None = None

    @property
    def ok(self) -> bool:
        return self.max_error <= self.bound

    @property
    def flop_limit(self) -> float:
        return 1 / self.flops_ratio if self.flops_ratio else math.inf

    @property
    def speedup(self) -> float | None:
        return self.dense_ms / self.sparse_ms if self.dense_ms and self.sparse_ms else None


@dataclass
class Report:
    layers: list[LayerReport]
    max_error: float
    bound: float
    dense_ms: float | None
    sparse_ms: float | None
    device: str
    dtype: str
    threads: int
    input_shapes: list = field(default_factory=list)
    memory_format: str = "contiguous"  # of the first input (channels_last stays so throughout)
    spread: float | None = (
        None  # of the reference's output across the batch (tolerance.batch_spread)
    )
    # the end-to-end speedup's confidence interval (timing.compare), and whether it lay beyond
    # the FLOP limit when measured twice
    speedup_interval: tuple[float, float] | None = None
    unreliable: bool = False
    stage_seconds: dict = field(default_factory=dict)  # compile's, by stage (set by compile)
    # compile's dataflow compaction: applied (or why not), the ops it stopped at, the layers it
    # removed, and over every conv and linear layer of the model the dense MACs, the mask's
    # and those run (``compaction_macs``)
    compaction: dict | None = None

    @property
    def faster(self) -> bool:
        """Whether the compiled model was measured faster than dense with confidence."""
        return self.speedup_interval is not None and self.speedup_interval[0] > 1

    @property
    def flop_limit(self) -> float:
        """Dense multiply-adds over those run: with compaction over every conv and linear
        layer, else over the layers compared (the others' are not counted: the model's true
        limit is lower)."""
        if self.compaction and "macs" in self.compaction:
            macs = self.compaction["macs"]
            return macs["dense"] / macs["run"] if macs["run"] else math.inf
        kept = sum(layer.macs * layer.flops_ratio for layer in self.layers)
        return sum(layer.macs for layer in self.layers) / kept if kept else math.inf

    @property
    def mask_flop_limit(self) -> float | None:
        """Dense multiply-adds over the mask's non-zeros (what packing alone could reach), with
        compaction."""
        if not (self.compaction and "macs" in self.compaction):
            return None
        macs = self.compaction["macs"]
        return macs["dense"] / macs["mask"] if macs["mask"] else math.inf

    @property
    def ok(self) -> bool:
        return self.max_error <= self.bound and all(layer.ok for layer in self.layers)

    @property
    def discriminating(self) -> bool:
        """Whether the reference's output spreads across the batch far above the bound, so that
        the end-to-end comparison can fail (False for a batch of one)."""
        return self.spread is not None and self.spread >= tolerance.MIN_SPREAD * self.bound

    @property
    def speedup(self) -> float | None:
        return self.dense_ms / self.sparse_ms if self.dense_ms and self.sparse_ms else None

    def raise_on_mismatch(self) -> None:
        for layer in self.layers:
            if not layer.ok:
                raise SparsekitError(
                    f"verify: layer {layer.name!r} differs from the dense masked model: max error "
                    f"{layer.max_error:.3e} > {layer.bound:.3e}"
                )
        if not self.ok:
            raise SparsekitError(
                f"verify: model output differs from the dense masked model: max error "
                f"{self.max_error:.3e} > {self.bound:.3e}"
            )

    def to_dict(self) -> dict:
        derived = {
            "ok": self.ok,
            "speedup": self.speedup,
            "discriminating": self.discriminating,
            "faster": self.faster,
            "flop_limit": _finite(self.flop_limit),
            "mask_flop_limit": None
            if self.mask_flop_limit is None
            else _finite(self.mask_flop_limit),
        }
        return (
            asdict(self)
            | derived
            | {
                "layers": [
                    asdict(layer)
                    | {
                        "ok": layer.ok,
                        "speedup": layer.speedup,
                        "flop_limit": _finite(layer.flop_limit),
                    }
                    for layer in self.layers
                ]
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        columns = (
            "layer",
            "kind",
            "structure",
            "backend",
            "blocks",
            "density",
            "fill",
            "in",
            "out",
            "flops",
            "MMACs",
            "dense ms",
            "sparse ms",
            "speedup",
            "max err",
            "note",
        )
        rows = [
            (
                layer.name,
                layer.kind,
                layer.structure,
                layer.backend,
                str(layer.blocks),
                f"{layer.density:.3f}",
                f"{layer.fill:.3f}",
                layer.channels_in,
                layer.channels_out,
                f"{layer.flops_ratio:.3f}",
                f"{layer.macs / 1e6:.1f}",
                _ms(layer.dense_ms),
                _ms(layer.sparse_ms),
                _x(layer.speedup) + (" ?" if layer.unreliable else ""),
                f"{layer.max_error:.1e}" + ("" if layer.ok else " !"),
                layer.note,
            )
            for layer in self.layers
        ]
        total_macs = sum(layer.macs for layer in self.layers)
        kept = sum(layer.macs * layer.flops_ratio for layer in self.layers)
        rows.append(
            (
                "end to end",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                f"{kept / total_macs:.3f}" if total_macs else "",
                f"{total_macs / 1e6:.1f}",
                _ms(self.dense_ms),
                _ms(self.sparse_ms),
                _x(self.speedup) + (" ?" if self.unreliable else ""),
                f"{self.max_error:.1e}" + ("" if self.ok else " !"),
                _interval(self.speedup_interval),
            )
        )
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        line = lambda cells: "  ".join(  # noqa: E731
            c.ljust(w) if i in (0, 1, 2, 3, 15) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()
        head = (
            f"sparsekit report: {self.device}, {self.dtype}, {self.threads} threads, inputs "
            f"{self.input_shapes} ({self.memory_format}); {'ok' if self.ok else 'MISMATCH'} "
            f"(bound {self.bound:.1e})"
        )
        lines = [head, line(columns), *map(line, rows[:-1]), line(rows[-1])]
        lines += self._compaction_lines()
        if self.stage_seconds:
            stages = ", ".join(f"{name} {s:.1f} s" for name, s in self.stage_seconds.items())
            lines.append(f"compile took {sum(self.stage_seconds.values()):.1f} s: {stages}")
        if self.unreliable or any(layer.unreliable for layer in self.layers):
            lines.append(
                "?: faster than its FLOP limit allows, measured twice: the machine's timing was "
                "not reliable (another load on it?)"
            )
        return "\n".join(lines)

    def _compaction_lines(self) -> list[str]:
        if not self.compaction:
            return []
        if not self.compaction["applied"]:
            return [f"channel compaction not applied: {self.compaction['why']}"]
        lines = [
            f"channel compaction: FLOP limit of the mask {self.mask_flop_limit:.2f}x, run "
            f"{self.flop_limit:.2f}x (dense MACs over those run, every conv and linear layer)"
        ]
        if self.compaction["stopped"]:
            stops = ", ".join(f"{n} ({why})" for n, why in self.compaction["stopped"].items())
            lines.append(f"compaction stopped at (full-width inputs): {stops}")
        if self.compaction["removed"]:
            lines.append(f"removed (nothing reads them): {', '.join(self.compaction['removed'])}")
        return lines


def _finite(value: float) -> float | None:
    """``value``, or None for infinity (a layer that runs nothing), which JSON cannot hold."""
    return value if math.isfinite(value) else None


def _ms(seconds_ms):
    return "" if seconds_ms is None else f"{seconds_ms:.3f}"


def _x(ratio):
    return "" if ratio is None else f"{ratio:.2f}x"


def _interval(speedups):
    return (
        ""
        if speedups is None
        else f"speedup {speedups[0]:.2f}-{speedups[1]:.2f}x ({timing.CONFIDENCE:.0%})"
    )


def verify(
    compiled,
    reference,
    example_inputs,
    *,
    measure: bool = True,
    layer_seconds=None,
    layer_reference=None,
    compaction: dict | None = None,
) -> Report:
    """Compare ``compiled`` with the dense ``reference`` on ``example_inputs`` (see module doc).
    ``layer_seconds``: ``{layer: (dense seconds, sparse seconds)}`` already measured on these
    inputs the same way (compile's plan choice): those layers are not timed again, unless their
    speedup lies beyond the FLOP limit. ``layer_reference``: the dense model whose layers the
    sparse ones are compared with, when not ``reference`` (compile's compacted model before
    packing: its layers are narrow); ``compaction``: the compaction's summary, for the report."""
    layer_seconds = layer_seconds or {}
    layer_reference = reference if layer_reference is None else layer_reference
    narrowed = (compaction or {}).get("layers", {})
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    sparse_layers = {
        name: m
        for name, m in compiled.named_modules()
        if isinstance(m, (SparseConv2d, SparseLinear))
    }
    sources = {name: m.config.get("source", {"layer": name}) for name, m in sparse_layers.items()}
    watched = sorted(
        {s["layer"] for s in sources.values()}
        | {s["batchnorm"] for s in sources.values() if s.get("batchnorm")}
    )
    for name in watched:
        try:
            layer_reference.get_submodule(name)
        except AttributeError as error:
            raise SparsekitError(f"verify: the reference model has no layer {name!r}") from error
    with tolerance.matching_precision():
        layer_in, layer_out, ref_out = run_recording(layer_reference, inputs, watched, outputs=True)
        with torch.inference_mode():
            if layer_reference is not reference:
                ref_out = reference(*inputs)
            out = compiled(*inputs)  # its dense layers too in the reference's precision
    if not isinstance(out, torch.Tensor) or not isinstance(ref_out, torch.Tensor):
        raise SparsekitError("verify: the models must return a tensor")

    layers = []
    for name, layer in sparse_layers.items():
        source = sources[name]
        x = layer_in.get(source["layer"])
        if x is None:
            continue  # not reached on these inputs
        expected = layer_out[source.get("batchnorm") or source["layer"]]
        with tolerance.matching_precision(), torch.inference_mode():
            actual = layer(x)
        s = layer.summary()
        positions = (
            expected[0, 0].numel() * expected.shape[0]
            if expected.dim() == 4
            else (expected.numel() // expected.shape[-1])
        )
        report = LayerReport(
            name=name,
            kind=type(layer).__name__.removeprefix("Sparse"),
            structure=s["structure"],
            backend=layer.backend,
            blocks=s["blocks"],
            density=s["density"],
            fill=s["fill"],
            flops_ratio=s["flops_ratio"],
            macs=math.prod(layer.weight_shape) * positions,
            max_error=tolerance.max_error(actual, expected),
            bound=tolerance.bound(expected, reductions=[tolerance.reduction(layer.weight_shape)]),
            note="; ".join(_notes(layer, s)),
        )
        if name in narrowed:
            _narrowing(report, narrowed[name])
        known = layer_seconds.get(name)
        if measure and not layer.is_dense:  # a dense layer runs the reference's own op
            if known is not None and min(known[0] / known[1], 1) <= report.flop_limit:
                report.dense_ms, report.sparse_ms = 1e3 * known[0], 1e3 * known[1]
            else:
                dense = [layer_reference.get_submodule(source["layer"])]
                if source.get("batchnorm"):
                    dense.append(layer_reference.get_submodule(source["batchnorm"]))
                comparison, report.unreliable = _measured(
                    layer, _chain(dense), (x,), report.flop_limit
                )
                report.dense_ms, report.sparse_ms = _ms_pair(comparison)
        layers.append(report)

    first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else out
    result = Report(
        layers=layers,
        max_error=tolerance.max_error(out, ref_out),
        bound=tolerance.bound(ref_out, reductions=_reductions(sparse_layers, layers, narrowed)),
        dense_ms=None,
        sparse_ms=None,
        device=_device_name(first.device),
        dtype=str(out.dtype).removeprefix("torch."),
        threads=torch.get_num_threads(),
        input_shapes=[list(x.shape) for x in inputs if isinstance(x, torch.Tensor)],
        memory_format="channels_last"
        if output_memory_format(first) == torch.channels_last
        else "contiguous",
        spread=tolerance.batch_spread(ref_out),
        compaction=_compaction_summary(compaction, layers),
    )
    if measure:
        comparison, result.unreliable = _measured(compiled, reference, inputs, result.flop_limit)
        result.dense_ms, result.sparse_ms = _ms_pair(comparison)
        result.speedup_interval = (1 / comparison.high, 1 / comparison.low)
    if result.spread is not None and not result.discriminating:
        warnings.warn(
            f"verify: the reference's output barely depends on the input (spread across the batch "
            f"{result.spread:.2e}, bound {result.bound:.2e}): the end-to-end check cannot tell a "
            "wrong kernel from a right one",
            SparsekitWarning,
            stacklevel=2,
        )
    return result


def _reductions(sparse_layers: dict, reports: list, narrowed: dict) -> list[int]:
    """The reductions of the layers the inputs reached: every one adds its error to the model's
    output (see tolerance.growth); a narrowed layer's are the dense layer's, which the
    reference sums."""
    return [
        narrowed[r.name]["reduction"]
        if r.name in narrowed
        else tolerance.reduction(sparse_layers[r.name].weight_shape)
        for r in reports
    ]


def _narrowing(report: LayerReport, row: dict) -> None:
    """``report`` (of a narrow layer) restated against the dense layer it narrows."""
    run = row["macs"] * report.flops_ratio
    report.flops_ratio = run / row["dense_macs"] if row["dense_macs"] else 0.0
    report.macs = row["dense_macs"]
    report.channels_in = "{}/{}".format(*row["in"])
    report.channels_out = "{}/{}".format(*row["out"])
    report.mask_flop_limit = _finite(
        row["dense_macs"] / row["mask_macs"] if row["mask_macs"] else math.inf
    )


def _compaction_summary(compaction: dict | None, reports: list) -> dict | None:
    """The compaction's summary with the MACs of the whole model: dense, the mask's, and run
    (each narrow layer's times the share its packed plan runs; a removed layer runs none)."""
    if not compaction or not compaction.get("applied"):
        return compaction
    ratios = {r.name: r.flops_ratio * r.macs for r in reports}
    rows = compaction["layers"]
    macs = {
        "dense": sum(row["dense_macs"] for row in rows.values()),
        "mask": sum(row["mask_macs"] for row in rows.values()),
        "run": sum(
            ratios.get(name, row["macs"])
            for name, row in rows.items()
            if name not in compaction["removed"]
        ),
    }
    return {**{k: v for k, v in compaction.items() if k != "layers"}, "macs": macs}


def _notes(layer, summary: dict) -> list[str]:
    notes = ["all weights pruned: outputs its bias"] if summary["nnz"] == 0 else []
    return notes + [f"dropped {d}" for d in layer.config.get("dropped", [])]


def _ms_pair(comparison: timing.Comparison) -> tuple[float, float]:
    """(dense ms, sparse ms): the dense median, and the sparse time its ratio gives (the median
    of the paired rounds' ratios), so that their ratio is the comparison's."""
    return 1e3 * comparison.baseline_seconds, 1e3 * comparison.baseline_seconds * comparison.ratio


def _measured(sparse, dense, inputs, flop_limit) -> tuple[timing.Comparison, bool]:
    """``sparse`` against ``dense`` on ``inputs`` in paired rounds, and whether it is unreliable:
    its median speedup beyond ``flop_limit``, measured again with more rounds, and then its whole
    interval beyond it. Where the limit is 1 (nothing skipped) the two run the same work, and a
    speedup on either side of 1 is noise, not an impossible figure."""
    comparison = timing.compare(sparse, dense, *inputs, min_rounds=MIN_ROUNDS)
    if flop_limit <= 1 or 1 / comparison.ratio <= flop_limit:
        return comparison, False
    comparison = timing.compare(sparse, dense, *inputs, min_rounds=3 * MIN_ROUNDS)
    return comparison, 1 / comparison.high > flop_limit


def _chain(modules):
    def run(x):
        for module in modules:
            x = module(x)
        return x

    return run


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.backends.cpu.get_cpu_capability()})"

"""``sparsekit.plan``: per-layer sparsities chosen by SPDY under a speedup target, compiled, and
the end-to-end speedup measured, not promised.

The budget follows SPDY: the dense model's measured time over the target, less the time outside
the prunable layers (the dense model's time less the table's dense layer times). The search's
best choice is compiled, each layer with the plan its timing-table cell measured (nothing is
timed again layer by layer), verified, and timed against the dense model (BatchNorm folded in
both, in alternation; the compiled model on the example inputs as given, the dense one in the faster
of NCHW and channels_last, so that the speedup is read against dense at its best: on CPU, pass
channels_last inputs, in which the compiled model runs too). Layer times do not add up exactly, so
while the measured speedup misses the target the budget shrinks by the shortfall and the next choice
is the least-loss one that fits it, of those searched and the program's with the best coefficients,
up to ``rounds`` compiles; then it says it cannot.
"""

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .. import timing
from ..compiler import LayerChoice, compile_choices
from ..compiler.batchnorm import fold_batchnorms
from ..compiler.recording import as_input_tuple
from ..compiler.reference import dense_masked_copy
from ..errors import SparsekitError
from ..masks import SPARSE_MODULES
from .database import ErrorDatabase
from .levels import DEFAULT_LEVELS
from .program import DEFAULT_BUCKETS, solve
from .search import Candidate, Scorer, costs_of, search
from .timings import timing_table

PAIRED_RUN_TIME = 0.5  # seconds per side and round when dense and compiled are timed end to end


@dataclass
class PlanReport:
    target: float
    speedup: float  # measured end to end against the dense model
    dense_ms: float
    compiled_ms: float
    dense_format: str  # the memory format dense was timed in, the faster: "nchw" or "channels_last"
    loss: float  # calibration loss of the chosen sparsities
    layers: list[str]
    sparsities: list[float]  # chosen per layer
    plans: list[str]  # "structure/backend" compile chose per layer
    rounds: list[dict] = field(
        default_factory=list
    )  # each compiled choice: budget, predicted, measured, loss
    candidates: list[dict] = field(default_factory=list)  # the search's: predicted speedup, loss
    table_seconds: float = 0.0  # how long measuring the timing table took (maybe for the cache)
    search_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"sparsekit.plan: measured speedup {self.speedup:.2f}x (target {self.target:.2f}x): "
            f"dense {self.dense_ms:.2f} ms ({self.dense_format}), "
            f"compiled {self.compiled_ms:.2f} ms; calibration loss {self.loss:.4g}; "
            f"{len(self.candidates)} candidates searched in {self.search_seconds:.0f} s, "
            f"{len(self.rounds)} compiled"
        ]
        lines += [
            f"  {name:<28} sparsity {s:6.1%}  {p}"
            for name, s, p in zip(self.layers, self.sparsities, self.plans)
        ]
        return "\n".join(lines)

    def plot(self, path) -> None:
        """PNG: the chosen sparsity per layer, and loss against speedup for the candidates
        (predicted from the timing table) and the compiled choices (measured)."""
        try:
            import matplotlib
        except ImportError as error:
            raise SparsekitError(
                "PlanReport.plot needs matplotlib: pip install matplotlib (or sparsekit[plots])"
            ) from error
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
        left.bar(range(len(self.layers)), self.sparsities)
        left.set_xticks(range(len(self.layers)), self.layers, rotation=90, fontsize=6)
        left.set(ylabel="sparsity", ylim=(0, 1), title="chosen sparsity per layer")
        right.scatter(
            [c["predicted_speedup"] for c in self.candidates],
            [c["loss"] for c in self.candidates],
            s=8,
            color="grey",
            label="searched (predicted speedup)",
        )
        right.scatter(
            [r["speedup"] for r in self.rounds],
            [r["loss"] for r in self.rounds],
            color="C3",
            label="compiled (measured speedup)",
        )
        right.axvline(self.target, color="C0", linestyle="--", label="target")
        right.set(xlabel="end-to-end speedup", ylabel="calibration loss", title="candidates")
        right.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)


def dense_folded(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its BatchNorms folded: the dense model compiled ones are timed
    against."""
    return fold_batchnorms(dense_masked_copy(model, {}))


def compile_from_table(
    model: nn.Module, masks: dict, table, levels, example_inputs, *, progress: bool | None = None
) -> nn.Module:
    """``model`` compiled with ``masks`` (those of ``table``'s layers at ``levels``, one index
    per layer): each of the table's layers with the plan its cell measured, every other Conv2d /
    Linear dense, BatchNorm folded; verified numerically (no layer is timed)."""
    plans = {
        name: table.plans[i][level] for i, (name, level) in enumerate(zip(table.layers, levels))
    }
    every_layer = {
        f"{name}.weight": torch.ones_like(m.weight)
        for name, m in model.named_modules()
        if isinstance(m, SPARSE_MODULES)
    }  # so that every BatchNorm is folded

    def decide(layer, layer_input) -> LayerChoice:
        structure, backend = plans.get(layer.name, "dense/dense").split("/")
        return LayerChoice(structure, backend)

    return compile_choices(
        model, {**every_layer, **masks}, example_inputs, decide, measure=False, progress=progress
    )


def _next_choice(tried: list, times, coefficients, budget, compiled: list, scorer, buckets):
    """(the least-loss choice not compiled yet whose table time fits ``budget``, that budget):
    among the candidates searched and the program's choice with the best coefficients (added to
    ``tried``), the budget shrinking 1% at a time until one fits; None once nothing fits."""
    costs = costs_of(coefficients, times.shape[1])
    while True:
        try:
            choice = solve(times, costs, budget, buckets=buckets)
        except SparsekitError:
            return None
        if choice not in compiled:
            seconds = float(sum(times[layer, level] for layer, level in enumerate(choice)))
            tried.append(Candidate(list(coefficients), choice, seconds, scorer(choice)))
        fits = [c for c in tried if c.seconds <= budget and c.choice not in compiled]
        if fits:
            return min(fits, key=lambda c: c.loss).choice, budget
        budget *= 0.99


def plan(
    model: nn.Module,
    example_inputs,
    target_speedup: float,
    calib,
    loss_fn=None,
    *,
    levels=DEFAULT_LEVELS,
    structure: str = "auto",
    backend: str = "auto",
    transform=None,
    reconstruct: bool = False,
    recalibrate_batchnorm: bool = False,
    draws: int = 100,
    steps: int = 100,
    rounds: int = 5,
    buckets: int = DEFAULT_BUCKETS,
    cache=None,
    progress: bool | None = None,
    seed: int = 0,
):
    """Masks for ``model``'s prunable layers (every Conv2d but the first) that meet
    ``target_speedup`` on ``example_inputs``, measured, with the least calibration loss SPDY
    finds; returns ``(masks, compiled, report)``: ``{param name: 0/1 mask}``, the compiled model
    (its weights reconstructed with ``reconstruct``, its BatchNorm statistics re-estimated with
    ``recalibrate_batchnorm``: then ``masks`` alone do not give it) and a ``PlanReport``.

    ``calib``: calibration batches (see ``search.Scorer``: input tensors, scored by KL divergence
    to the dense model's outputs, or ``(inputs, labels)`` pairs, by cross-entropy), ``loss_fn``:
    ``loss_fn(output, target)`` instead. ``levels``, ``structure``, ``backend``, ``transform``,
    ``cache``: as ``timing_table``; ``reconstruct``: refit the kept weights by least squares on
    the calibration inputs; ``recalibrate_batchnorm``: re-estimate BatchNorm statistics on the
    calibration inputs for every choice scored (see ``ErrorDatabase``); ``draws`` / ``steps``:
    the search's random draws and local steps; ``rounds``: compiles tried before it gives up
    (``SparsekitError``, with what it measured)."""
    if model.training:
        raise SparsekitError("plan: call model.eval() first")
    try:
        target = float(target_speedup)
    except (TypeError, ValueError):
        target = float("nan")
    if not target > 1.0:
        raise SparsekitError(f"plan: target_speedup must be a number > 1, not {target_speedup!r}")
    if not isinstance(rounds, int) or rounds < 1:
        raise SparsekitError(f"plan: rounds must be >= 1, not {rounds!r}")
    inputs = as_input_tuple(example_inputs)
    calib = list(calib)
    table = timing_table(
        model, inputs, levels, structure, backend, transform, cache=cache, progress=progress
    )
    times = torch.tensor(table.seconds, dtype=torch.float64)
    dense = dense_folded(model)
    run_dense, dense_format, dense_seconds = timing.in_faster_format(
        dense, *inputs, min_run_time=PAIRED_RUN_TIME
    )
    rest = max(0.0, dense_seconds - times[:, 0].sum().item())  # time outside the prunable layers
    budget, fastest = dense_seconds / target - rest, times.min(dim=1).values.sum().item()
    if budget <= fastest:
        raise SparsekitError(
            f"plan: a {target:.2f}x speedup is out of reach: the dense model takes "
            f"{1e3 * dense_seconds:.2f} ms, {1e3 * rest:.2f} ms of it outside the prunable layers, "
            f"and the sparsest levels of those take {1e3 * fastest:.2f} ms: at most "
            f"{dense_seconds / (rest + fastest):.2f}x by the timing table"
        )

    database = ErrorDatabase(
        model,
        table.layers,
        table.levels,
        transform,
        reconstruct=reconstruct,
        recalibrate_batchnorm=recalibrate_batchnorm,
        progress=bool(progress),
        calib_inputs=[b[0] if isinstance(b, (tuple, list)) else b for b in calib],
    )
    scorer = Scorer(database, model, calib, loss_fn)
    started = time.perf_counter()
    tried = search(
        times,
        scorer,
        budget,
        draws=draws,
        steps=steps,
        seed=seed,
        buckets=buckets,
        progress=bool(progress),
    )
    search_seconds = time.perf_counter() - started
    best = min(tried, key=lambda c: c.loss)

    def predicted(seconds):
        return dense_seconds / (rest + seconds)

    choice, attempts, compiled_choices = best.choice, [], []
    for _ in range(rounds):
        masks = database.masks_of(choice)
        compiled = compile_from_table(
            database.stitched(choice), masks, table, choice, inputs, progress=progress
        )
        measured = timing.paired_ms(
            {"dense": run_dense, "compiled": lambda: compiled(*inputs)},
            min_run_time=PAIRED_RUN_TIME,
            device=inputs[0].device.type,
        )
        speedup = measured["dense"] / measured["compiled"]
        seconds = float(sum(times[layer, level] for layer, level in enumerate(choice)))
        attempts.append(
            {
                "budget_ms": 1e3 * budget,
                "predicted_speedup": predicted(seconds),
                "speedup": speedup,
                "loss": scorer(choice),
                "dense_ms": measured["dense"],
                "compiled_ms": measured["compiled"],
            }
        )
        if speedup >= target:
            report = PlanReport(
                target=target,
                speedup=speedup,
                dense_ms=measured["dense"],
                compiled_ms=measured["compiled"],
                dense_format=dense_format,
                loss=scorer(choice),
                layers=table.layers,
                sparsities=[table.levels[i] for i in choice],
                plans=[table.plans[layer][level] for layer, level in enumerate(choice)],
                rounds=attempts,
                candidates=[
                    {"predicted_speedup": predicted(c.seconds), "loss": c.loss, "choice": c.choice}
                    for c in tried
                ],
                table_seconds=table.build_seconds,
                search_seconds=search_seconds,
            )
            return masks, compiled, report
        compiled_choices.append(choice)
        following = _next_choice(
            tried,
            times,
            best.coefficients,
            budget * speedup / target,  # the shortfall
            compiled_choices,
            scorer,
            buckets,
        )
        if following is None:
            break
        choice, budget = following
    tries = ", ".join(f"{a['speedup']:.2f}x" for a in attempts)
    raise SparsekitError(
        f"plan: the target {target:.2f}x was not met: measured {tries} over {len(attempts)} "
        "compiled choices"
        + ("" if len(attempts) == rounds else "; no sparser choice fits the timing table")
    )

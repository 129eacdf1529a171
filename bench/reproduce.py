"""The papers' time savings, measured end to end: Structure-LTH's channel- and group-wise tickets
(IMP-Refill, Refill+, IMP-Regroup) and efficient-MPT's kernel skipping, on zoo models, each model
compiled with measured plans and verified, dense and compiled timed in the same run, beside the
papers' numbers and the FLOP limit (dense MACs / kept MACs of the mask).

Masks as the papers make them, on freshly initialised weights: layer-wise L1 unstructured masks
over every conv but the first (a global threshold would empty whole small-init layers) at each
sparsity, then each transform (IMP-Refill, Refill+, IMP-Regroup; kernel masks rank whole kernels
by L1 at the same sparsity), and the plain unstructured mask, both also at 70% and 95%; for
ResNet-18 also the paper's own regrouped ticket (``tests/data``). BatchNorm statistics are
calibrated under each mask, so that compile's check against the masked model can fail. Times:
dense (the masked model with its BatchNorm folded, in its faster memory format) and compiled
(channels_last), called in alternation after a warm-up, ``RUNS`` calls each
(torch.utils.benchmark's timer), medians and quartiles.

On a GPU (``--device cuda``), the papers' GPU rows: zoo ResNet-18 and VGG-16-BN at 32x32 and
ResNet-50 at 224, batch 64, IMP-Refill, IMP-Regroup and kernel masks at 80%, in float32 and
bfloat16 (``--model``, ``--transform``, ``--sparsity``, ``--dtype`` and ``--batch`` replace these
as on CPU). float32 is strict: TF32 off for cuDNN, cuBLAS and the Triton kernels alike, so that
both sides compute in fp32 (the previous settings are restored after the run). Each case is built
and calibrated as on CPU, then compiled, checked and timed with model, masks and input on the
GPU. Both sides are timed eagerly (``triton.testing.do_bench`` medians, CUDA events, the best of
three rounds in alternation) and replayed from a CUDA graph of back-to-back calls
(``do_bench_cudagraph``'s median), which leaves out the host's launch cost; speedup and time
saving are given both ways. Every model's float32 cases run first. Without a GPU it stops before
any work.

Results are written after every case, so a run stopped at a time limit keeps what it measured.

    python -m bench.reproduce                # CPU: bench/results/reproduce-cpu-<date>.{json,md,png}
    python -m bench.reproduce --quick        # seconds: one small model and mask (CI)
    python -m bench.reproduce --model resnet18 --sparsity 0.8 --dtype bfloat16 --batch 1
    python -m bench.reproduce --device cuda  # GPU: bench/results/reproduce-cuda-<GPU name, spaces
                                             # as dashes>-<date>.{json,md}
    python -m bench.reproduce --device cuda --quick  # one case: wrn32_2, refill, 80%, fp32, batch 2
"""

import contextlib
import datetime
import json
import sys
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

import sparsekit
from sparsekit import timing, zoo
from sparsekit.transforms import (
    acceleration_rate,
    kernel_magnitude_mask,
    layerwise_magnitude_masks,
    refill_masks,
    regroup,
)

from .cpu_suite import layer_breakdown
from .masks import flop_limit
from .report import resumed, suite_arguments, write_results
from .ticket_layers import DEFAULT_TICKET

MODELS = ("vgg16_bn", "resnet18", "wrn32_2", "mobilenet_v1", "resnet50")
SPARSITIES = (0.36, 0.45, 0.58, 0.74, 0.80, 0.90)
TRANSFORMS = ("unstructured", "refill", "refill+", "regroup", "kernel")
# the masks most pruned models carry, also at the sparsities magnitude and kernel pruning reach
MORE_SPARSITIES = {"unstructured": (0.70, 0.95), "kernel": (0.70, 0.95)}
REFILL_PLUS = 0.1  # Refill+'s fillback rate: the fraction of the pruned channels added back
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BATCHES = (1, 16)
RUNS, WARMUP = 50, 5
# what each device runs unless told: on CPU every model, mask, sparsity and batch; on a GPU the
# papers' GPU rows (their CIFAR models and ResNet-50, batch 64, the structured masks at 80%)
DEFAULTS = {
    "cpu": {
        "model": MODELS,
        "transform": (*TRANSFORMS, "ticket"),
        "sparsity": SPARSITIES,
        "dtype": tuple(DTYPES),
        "batch": BATCHES,
    },
    "cuda": {
        "model": ("resnet18", "vgg16_bn", "resnet50"),
        "transform": ("refill", "regroup", "kernel"),
        "sparsity": (0.80,),
        "dtype": tuple(DTYPES),
        "batch": (64,),
    },
}
QUICK_TRANSFORMS = {"cpu": ("refill", "kernel"), "cuda": ("refill",)}  # wrn32_2, 80%, fp32, batch 2

# What the papers report, and what kind of figure each is (FACTS.md): Structure-LTH's savings come
# from one un-warmed fp32 timing per layer-set; MPT's rates are FLOP ratios, never timed.
PAPERS = [
    {
        "paper": "Structure-LTH",
        "what": "CIFAR, channel/group-wise, 45-80% sparsity",
        "transforms": ("refill", "refill+", "regroup", "ticket"),
        "sparsity": (0.45, 0.80),
        "saving": (0.5375, 0.6493),
        "kind": "GPU running-time saving (one un-warmed fp32 timing)",
    },
    {
        "paper": "Structure-LTH",
        "what": "Tiny-ImageNet, 74% sparsity",
        "transforms": ("refill", "regroup"),
        "sparsity": (0.74, 0.74),
        "saving": (0.6484, 0.6484),
        "kind": "GPU running-time saving",
    },
    {
        "paper": "Structure-LTH",
        "what": "ImageNet ResNet-50, 58% sparsity",
        "transforms": ("refill", "regroup"),
        "sparsity": (0.58, 0.58),
        "saving": (0.6023, 0.6023),
        "kind": "GPU running-time saving",
    },
    {
        "paper": "efficient MPT",
        "what": "ResNet-18 CIFAR-10 kernel skipping, AR 1.4x / 2.3x / 3.0x at 70/90/95%",
        "transforms": ("kernel",),
        "sparsity": (0.70, 0.95),
        "saving": (1 - 1 / 1.4, 1 - 1 / 3.0),
        "kind": "FLOP ratio (acceleration rate), never timed",
    },
]


def masks_for(model, transform: str, sparsity: float) -> dict:
    """{param name: mask} of ``transform`` applied to layer-wise L1 masks at ``sparsity``."""
    if transform == "ticket":
        return ticket_masks(model)
    masks = layerwise_magnitude_masks(model, sparsity)
    if transform in ("refill", "refill+"):
        return refill_masks(model, masks, extra=REFILL_PLUS if transform == "refill+" else 0.0)
    if transform == "regroup":
        return {key: regroup(mask)[0] for key, mask in masks.items()}
    if transform == "kernel":
        return {
            key: kernel_magnitude_mask(
                model.get_submodule(key.removesuffix(".weight")).weight, sparsity
            )
            if mask.dim() == 4
            else mask
            for key, mask in masks.items()
        }
    return masks


def ticket_masks(model) -> dict:
    """Structure-LTH's regrouped ResNet-18 CIFAR-10 ticket: each conv's blocks as its mask."""
    masks = {}
    for layer, entry in json.loads(DEFAULT_TICKET.read_text())["layers"].items():
        out, cin, kh, kw = entry["weight_shape"]
        mask = torch.zeros(out, cin * kh * kw)
        for rows, cols in entry["blocks"]:
            if rows and cols:
                mask[torch.tensor(rows)[:, None], torch.tensor(cols)] = 1
        masks[f"{layer}.weight"] = mask.view(out, cin, kh, kw)
    assert set(masks) <= {f"{n}.weight" for n, _ in model.named_modules()}, (
        "ticket names no layer of resnet18"
    )
    return masks


def paired_runs(sides: dict, runs: int, warmup: int) -> dict:
    """{side: (median, first quartile, third quartile) in ms} of ``runs`` calls of each side
    (a function of no argument), called in alternation after ``warmup`` calls each."""
    times = {name: [] for name in sides}
    timers = {
        name: Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        for name, fn in sides.items()
    }
    with torch.no_grad():
        for _ in range(warmup):
            for fn in sides.values():
                fn()
        for _ in range(runs):
            for name, timer in timers.items():
                times[name].append(1e3 * timer.timeit(1).median)
    quartiles = torch.tensor([0.5, 0.25, 0.75], dtype=torch.float64)
    return {
        name: torch.tensor(t, dtype=torch.float64).quantile(quartiles).tolist()
        for name, t in times.items()
    }


def cpu_times(sides: dict, quick: bool) -> dict:
    """Each side's median and quartiles in ms (``paired_runs``) and the runs they come from."""
    runs = 5 if quick else RUNS
    times = {}
    for name, (median, *quartiles) in paired_runs(sides, runs, 1 if quick else WARMUP).items():
        times[f"{name}_ms"], times[f"{name}_quartiles_ms"] = median, quartiles
    return times | {"runs": runs}


def gpu_times(sides: dict, quick: bool) -> dict:
    """Each side's ms on the GPU: eager (``do_bench`` medians, the best of three rounds in
    alternation, so that a change of clock favours neither side), and replayed from a CUDA graph
    (``do_bench_cudagraph``'s median), where the host's launch cost no longer counts."""
    # imported here, on a GPU: without one, importing it switches Triton's interpreter on
    from . import gpu_suite

    eager = timing.paired_ms(sides, min_run_time=0.02 if quick else 0.2, device="cuda")
    graph = {name: gpu_suite.graph_ms(fn) for name, fn in sides.items()}
    return {f"{name}_ms": ms for name, ms in eager.items()} | {
        f"{name}_graph_ms": ms for name, ms in graph.items()
    }


TIMERS = {"cpu": cpu_times, "cuda": gpu_times}


@contextlib.contextmanager
def strict_fp32():
    """TF32 off for cuDNN, cuBLAS and the Triton kernels together (both sides in fp32), the
    previous settings restored on leaving."""
    from . import gpu_suite

    previous = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    gpu_suite.use_tf32(False)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous[0]
        torch.set_float32_matmul_precision(previous[1])


def masked_model(name, transform, sparsity, gen):
    """(zoo model ``name`` with BatchNorm calibrated under its masks, the masks), fp32 on CPU."""
    model = zoo.create(name).eval()
    masks = masks_for(model, transform, sparsity)
    batches = [torch.randn(8, *zoo.INPUT_SHAPES[name], generator=gen) for _ in range(2)]
    zoo.calibrate_batchnorm(model, batches, masks)
    return model, masks


def run_case(name, transform, sparsity, dtype_name, batch, quick, gen, device="cpu") -> dict:
    """One case on ``device``: its record (times as ``TIMERS[device]`` gives them), or why it
    was skipped."""
    model, masks = masked_model(name, transform, sparsity, gen)
    x = torch.randn(batch, *zoo.INPUT_SHAPES[name], generator=gen).to(device)
    model, masks = model.to(device), {key: mask.to(device) for key, mask in masks.items()}
    limit = flop_limit(model, masks, x)
    rate = mpt_rate(model, masks, x) if transform in ("kernel", "unstructured") else None
    model = model.to(DTYPES[dtype_name]).to(memory_format=torch.channels_last)
    x = x.to(DTYPES[dtype_name]).contiguous(memory_format=torch.channels_last)
    compiled = sparsekit.compile(model, masks, x, measure=not quick)
    report = compiled.sparsekit_report
    if not report.discriminating:  # its check could not fail: nothing to time
        return {
            "model": name,
            "dtype": dtype_name,
            "batch": batch,
            "transform": transform,
            "sparsity": sparsity,
            "skipped": (
                f"the masked model's output hardly depends on its input (spread {report.spread})"
            ),
        }
    dense_model = sparsekit.compile(
        model, masks, x, backend="dense", measure=False, verify=False, compact_channels=False
    )
    dense, dense_format, _ = timing.in_faster_format(dense_model, x)
    times = TIMERS[device]({"dense": dense, "compiled": lambda: compiled(x)}, quick)
    kept = sum(m.sum().item() for m in masks.values()) / sum(m.numel() for m in masks.values())
    record = {
        "model": name,
        "device": timing.device_name(device),
        "input": list(x.shape),
        "dtype": dtype_name,
        "batch": batch,
        "transform": transform,
        "nominal_sparsity": None if transform == "ticket" else sparsity,
        "sparsity": round(1 - kept, 4),
        "flop_limit": limit,
        "max_error": report.max_error,
        "bound": report.bound,
        "dense_format": dense_format,
        **times,
        "layers_dense": [info.name for info in report.layers if info.structure == "dense"],
        # with the dataflow compaction: dense MACs over those the compiled model runs (the mask's
        # FLOP limit is flop_limit), or None where compaction did not apply
        "compacted_flop_limit": report.flop_limit if report.mask_flop_limit else None,
    }
    with_savings(record)
    if rate is not None:
        record["acceleration_rate"] = rate
    record["layers"] = layer_breakdown(compiled, report, masks, x)  # where the time goes
    return record


def with_savings(record: dict) -> dict:
    """``record`` with the speedup and time saving of each way it was timed (eager, and
    ``graph_``: replayed from a CUDA graph, where it was), the FLOP limit's saving and the share
    of it the eager saving reaches."""
    for way in ("", "graph_"):
        if f"dense_{way}ms" in record:
            record[f"{way}speedup"] = record[f"dense_{way}ms"] / record[f"compiled_{way}ms"]
            record[f"{way}saving"] = 1 - 1 / record[f"{way}speedup"]
    record["limit_saving"] = 1 - 1 / record["flop_limit"]
    record["of_limit_saving"] = (
        record["saving"] / record["limit_saving"] if record["limit_saving"] > 0 else None
    )
    return record


def mpt_rate(model, masks: dict, x) -> float:
    """efficient-MPT's acceleration rate of the conv masks on this input (what skipping the
    all-zero kernels alone would gain in FLOPs)."""
    sizes = {}

    def record(key, y):
        sizes[key] = tuple(y.shape[2:])

    hooks = [
        model.get_submodule(key.removesuffix(".weight")).register_forward_hook(
            lambda m, args, y, key=key: record(key, y)
        )
        for key, mask in masks.items()
        if mask.dim() == 4
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return acceleration_rate({k: masks[k] for k in sizes}, sizes)


def paper_row(record: dict) -> dict | None:
    """The papers' figure a record can be put beside: same transform, sparsity in its range."""
    for row in PAPERS:
        low, high = row["sparsity"]
        if (
            record["transform"] in row["transforms"]
            and low - 0.01 <= record["sparsity"] <= high + 0.01
        ):
            return row
    return None


def _percent(low: float, high: float) -> str:
    return f"{low:.1%}" if low == high else f"{low:.1%}-{high:.1%}"


def _row(r: dict) -> str:
    """A record's row of its device's table (``HEADERS``)."""
    paper = paper_row(r)
    rate = f" (AR {r['acceleration_rate']:.2f}x)" if "acceleration_rate" in r else ""
    of_limit = f"{r['of_limit_saving']:.0%}" if r["of_limit_saving"] is not None else ""
    beside = f"{_percent(*paper['saving'])} ({paper['paper']}: {paper['kind']})" if paper else ""
    cells = [
        r["model"],
        r["dtype"],
        str(r["batch"]),
        r["transform"],
        f"{r['sparsity']:.2f}",
        *_time_cells(r),
        f"{r['flop_limit']:.2f}x{rate}",
        f"{r['limit_saving']:.1%}",
        of_limit,
        f"{r['max_error']:.1e} / {r['bound']:.1e}",
        beside,
    ]
    return "| " + " | ".join(cells) + " |"


def _time_cells(r: dict) -> list[str]:
    """On CPU the medians, the compiled side's quartiles beside its own; on a GPU (a record with
    CUDA graph times) the eager medians, then the graph's, to the microsecond."""
    ratios = [f"{r['speedup']:.2f}x", f"{r['saving']:.1%}"]
    if "dense_graph_ms" not in r:
        quartiles = "/".join(f"{q:.2f}" for q in r["compiled_quartiles_ms"])
        return [
            f"{r['dense_ms']:.2f} ({r['dense_format']})",
            f"{r['compiled_ms']:.2f} ({quartiles})",
            *ratios,
        ]
    return [
        f"{r['dense_ms']:.3f} ({r['dense_format']})",
        f"{r['compiled_ms']:.3f}",
        *ratios,
        f"{r['dense_graph_ms']:.3f}",
        f"{r['compiled_graph_ms']:.3f}",
        f"{r['graph_speedup']:.2f}x",
        f"{r['graph_saving']:.1%}",
    ]


def _header(times: str) -> str:
    columns = (
        f"model | dtype | batch | mask | sparsity | {times} | FLOP limit | limit's saving | "
        "of limit's saving | max error / bound | paper's figure"
    )
    return f"| {columns} |\n" + "| --- " * (columns.count("|") + 1) + "|"


HEADERS = {
    "cpu": _header("dense ms (format) | compiled ms (quartiles) | speedup | time saving"),
    "cuda": _header(
        "dense ms (format) | compiled ms | speedup | time saving | dense graph ms | "
        "compiled graph ms | graph speedup | graph saving"
    ),
}


def _layer_row(r: dict, layer: dict) -> str:
    timed = layer["dense_ms"] and layer["sparse_ms"]
    times = (
        f"{layer['dense_ms']:.3f} | {layer['sparse_ms']:.3f} | "
        f"{layer['dense_ms'] / layer['sparse_ms']:.2f}x"
        if timed
        else "| |"
    )
    return (
        f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['transform']} | {layer['layer']} | "
        f"{layer['structure']} | {layer['backend']} | {times} | {layer['flop_limit']:.2f}x |"
    )


LAYER_HEADER = (
    "| model | dtype | batch | mask | layer | plan | backend | dense ms | compiled ms | speedup | "
    "FLOP limit |\n" + "| --- " * 11 + "|"
)


def plot(records: list[dict], path: Path) -> None:
    """Time saving against sparsity per model and transform (fp32, the largest batch), each
    beside its FLOP limit's saving (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = max(r["batch"] for r in records)
    chosen = [r for r in records if r["dtype"] == "float32" and r["batch"] == batch]
    models = sorted({r["model"] for r in chosen}, key=MODELS.index)
    figure, axes = plt.subplots(
        1, max(len(models), 1), figsize=(4.5 * max(len(models), 1), 4), squeeze=False
    )
    for axis, model in zip(axes[0], models):
        for color, transform in enumerate((*TRANSFORMS, "ticket")):
            points = sorted(
                (r["sparsity"], r["saving"], r["limit_saving"])
                for r in chosen
                if r["model"] == model and r["transform"] == transform
            )
            if not points:
                continue
            s, saving, limit = zip(*points)
            axis.plot(s, saving, "o-", color=f"C{color}", label=transform)
            axis.plot(s, limit, "x--", color=f"C{color}", linewidth=0.8)
        axis.axhline(0, color="grey", linewidth=0.8)
        axis.set(
            title=f"{model}, fp32, batch {batch}",
            xlabel="sparsity",
            ylabel="time saving (x, dashed: FLOP limit's)",
        )
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def table_order(record: dict) -> tuple:
    transforms = (*TRANSFORMS, "ticket")
    return (
        MODELS.index(record["model"]),
        record["dtype"],
        record["batch"],
        transforms.index(record["transform"]),
        record["sparsity"],
    )


def case_key(record: dict) -> tuple:
    """What identifies a case: model, mask, nominal sparsity (None for the ticket), dtype, batch."""
    sparsity = (
        record.get("nominal_sparsity", record["sparsity"])
        if record["transform"] != "ticket"
        else None
    )
    return record["model"], record["transform"], sparsity, record["dtype"], record["batch"]


def environment(command: str, device: str) -> dict:
    env = {
        "device": timing.device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sparsekit": sparsekit.__version__,
        "date": datetime.date.today().isoformat(),
        "command": command,
    }
    if device == "cuda":
        import triton

        env |= {
            "triton": triton.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "float32": "strict: TF32 off for cuDNN, cuBLAS and the Triton kernels",
            "timing": "eager: triton.testing.do_bench medians in ms, the best of three rounds in "
            "alternation; graph: replayed from a CUDA graph, do_bench_cudagraph's median in ms",
        }
    return env


def title_of(env: dict) -> str:
    if "triton" in env:
        return (
            f"{env['device']}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
            "fp32 without TF32"
        )
    return f"{env['device']}, {env['threads']} threads, torch {env['torch']}"


def after_table(env: dict, records: list[dict], skipped: list[dict]) -> str:
    """The markdown below the table: how a GPU run timed, the cases skipped, the papers' figures
    and the per-layer table."""
    papers = "\n".join(
        f"| {p['paper']} | {p['what']} | {_percent(*p['saving'])} | {p['kind']} |" for p in PAPERS
    )
    layers = [_layer_row(r, layer) for r in records for layer in r.get("layers", ())]
    return (
        (f"\nTimes: {env['timing']}.\n" if "timing" in env else "")
        + "".join(
            f"\nSkipped: {r['model']} {r['transform']} {r['sparsity']}: {r['skipped']}\n"
            for r in skipped
        )
        + (
            "\n## The papers' figures\n\n| paper | what | saving | kind of figure |\n"
            "| --- | --- | --- | --- |\n"
        )
        + papers
        + f"\n\n## Per layer (80% masks and the ticket)\n\n{LAYER_HEADER}\n"
        + "\n".join(layers)
        + "\n"
    )


def arguments(argv) -> tuple:
    """(the parsed options, the command that reruns them)."""

    def add_options(parser):
        parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
        parser.add_argument(
            "--model",
            action="append",
            choices=MODELS,
            help=f"default: all on cpu, {DEFAULTS['cuda']['model']} on cuda",
        )
        parser.add_argument(
            "--sparsity",
            action="append",
            type=float,
            help=f"default: {SPARSITIES} on cpu, {DEFAULTS['cuda']['sparsity']} on cuda",
        )
        parser.add_argument(
            "--transform",
            action="append",
            choices=(*TRANSFORMS, "ticket"),
            help=f"default: all on cpu, {DEFAULTS['cuda']['transform']} on cuda",
        )
        parser.add_argument("--dtype", action="append", choices=tuple(DTYPES), help="default: both")
        parser.add_argument(
            "--batch",
            action="append",
            type=int,
            help=f"default: {BATCHES} on cpu, {DEFAULTS['cuda']['batch']} on cuda",
        )
        parser.add_argument(
            "--resume",
            action="store_true",
            help="add to the results file of the day (same machine and versions), "
            "measuring only the cases it does not hold",
        )

    return suite_arguments(
        argv,
        __doc__.splitlines()[0],
        "bench.reproduce",
        "one small model and two masks on cpu, one on cuda, seconds (CI)",
        add_options,
    )


def sparsities(args, chosen: dict, transform: str) -> tuple:
    """The sparsities ``transform`` is measured at: those asked for, else the device's defaults
    (on CPU, for unstructured and kernel masks, also ``MORE_SPARSITIES``)."""
    if args.sparsity or args.device != "cpu":
        return chosen["sparsity"]
    return tuple(sorted(chosen["sparsity"] + MORE_SPARSITIES.get(transform, ())))


def grid(args) -> list[tuple]:
    """(model, transform, sparsity, dtype, batch) of every case ``args`` ask for: the options
    given, the device's defaults for the others (the ticket on resnet18 only, at its own
    sparsity)."""
    if args.quick:
        return [("wrn32_2", t, 0.8, "float32", 2) for t in QUICK_TRANSFORMS[args.device]]
    chosen = {key: getattr(args, key) or default for key, default in DEFAULTS[args.device].items()}
    cases = [
        (m, t, s, d, b)
        for m in chosen["model"]
        for d in chosen["dtype"]
        for b in chosen["batch"]
        for t in chosen["transform"]
        for s in ((None,) if t == "ticket" else sparsities(args, chosen, t))
        if t != "ticket" or m == "resnet18"
    ]
    if args.device == "cuda":  # every model's float32 first, should a time limit stop the run:
        # the papers timed fp32, and in bf16 these models' outputs hardly spread past bf16's
        # bound (gpu_suite.MODEL_DTYPES), so those cases are likely skipped
        cases.sort(key=lambda case: chosen["dtype"].index(case[3]))
    return cases


def main(argv=None) -> list[dict]:
    args, command = arguments(argv)
    if args.device == "cuda" and not torch.cuda.is_available():  # before any work
        raise SystemExit(
            "bench.reproduce --device cuda needs a CUDA GPU, and none was found "
            "(torch.cuda.is_available() is False)"
        )
    env = environment(command, args.device)
    title, header = title_of(env), HEADERS[args.device]
    print(f"{title}\n{header}", flush=True)
    machine = "cpu" if args.device == "cpu" else f"cuda-{env['device'].replace(' ', '-')}"
    stem = args.out / f"reproduce-{machine}-{env['date']}{'-quick' if args.quick else ''}"
    saved = resumed(stem, env) if args.resume else {"results": []}
    records, skipped = saved["results"], saved.get("skipped", [])
    done = {case_key(r) for r in records + skipped}
    cases = [
        case
        for case in grid(args)
        if case_key(dict(zip(("model", "transform", "sparsity", "dtype", "batch"), case)))
        not in done
    ]
    with strict_fp32() if args.device == "cuda" else contextlib.nullcontext():
        for case in cases:
            record = run_case(
                *case, quick=args.quick, gen=torch.Generator().manual_seed(0), device=args.device
            )  # one case reruns alone
            (skipped if "skipped" in record else records).append(record)
            records.sort(key=table_order)
            print(
                _row(record) if "skipped" not in record else f"skipped {case}: {record['skipped']}",
                flush=True,
            )
            write_results(  # after every case: a long run keeps what it measured
                stem,
                env,
                title,
                header,
                list(map(_row, records)),
                records,
                more={"skipped": skipped},
                extra=after_table(env, records, skipped),
            )
    if args.device == "cpu":  # a GPU run leaves its .json and .md only: the GPU session brings
        # back two files a benchmark (bench/gpu_session.py)
        plot(records, stem.with_suffix(".png"))
    return records


if __name__ == "__main__":
    main(sys.argv[1:])

"""Per-call host overhead: a sparse layer's call against the same dense layer's, at shapes so small
that the arithmetic is negligible and what is timed is the call itself (module code, argument
handling, dispatch, output allocation, launch).

Cases: a 3x3 conv 16 -> 16 on 1x16x8x8 and a linear 64 -> 64 on 1x64, each under a channel mask
(half the input channels: one block) and a group mask (the diagonal halves: two blocks for the
linear; the conv gets whatever plan the planner picks, recorded), on every benchmarked backend
that runs them. Sides: the dense ``nn.Conv2d`` / ``nn.Linear`` (the baseline of every
ratio), the same weight in a ``backend="dense"`` sparsekit layer, the packed layer, and the
layer's op called directly on its layout (the floor a layer call can reach). Every side runs under
``torch.no_grad`` and under ``torch.inference_mode``, on one thread, timed in alternated rounds
of many calls; the median round counts. On a GPU (bf16) each side is also timed replayed from a
CUDA graph holding ``GRAPH_CALLS`` calls: what is left of the host there is the replay itself.

    python -m bench.host_overhead [--quick] [--out bench/results]

writes ``host-overhead-<device>-<date>.json`` and ``.md``; ``--quick``: few rounds (a plumbing
check).
"""

import datetime
import statistics
import sys

import torch
from torch import nn
from torch.utils.benchmark import Timer

from sparsekit import backends, timing
from sparsekit.nn import SparseConv2d, SparseLinear

from .report import suite_arguments, write_results
from .reproduce import environment

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
DTYPE = torch.bfloat16 if GPU else torch.float32
CHANNELS, SIZE, FEATURES = 16, 8, 64
# the targets: a sparse call at most this many times the dense module's call
TARGETS = {"conv": 1.5, "linear": 2.0}
MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
# (rounds, seconds each side runs per round)
ROUNDS, QUICK_ROUNDS = (15, 0.02), (3, 0.002)
GRAPH_CALLS = 20


def mask(kind: str, rows: int, cols: int) -> torch.Tensor:
    """A ``[rows, cols]`` 0/1 mask: ``channel`` keeps the first half of the columns for every
    row (one block), ``group`` the diagonal halves (two blocks, where the planner keeps them)."""
    kept = torch.zeros(rows, cols)
    if kind == "channel":
        kept[:, : cols // 2] = 1
    else:
        kept[: rows // 2, : cols // 2] = 1
        kept[rows // 2 :, cols // 2 :] = 1
    return kept


def layers(kind: str, gen: torch.Generator):
    """(dense module, masked weight, bias, input, sparse layer factory) of one case."""
    if kind == "conv":
        dense = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
        x = torch.randn(1, CHANNELS, SIZE, SIZE, generator=gen)
        build = lambda w, b, backend: SparseConv2d.from_weight(  # noqa: E731
            w, b, padding=1, backend=backend
        )
    else:
        dense = nn.Linear(FEATURES, FEATURES)
        x = torch.randn(1, FEATURES, generator=gen)
        build = lambda w, b, backend: SparseLinear.from_weight(w, b, backend=backend)  # noqa: E731
    return dense, x, build


def op_call(layer):
    """A function of the input calling the layer's op on its layout directly."""
    op, layout, ints = layer._run(torch.empty(0, dtype=layer.dtype))
    bias, c = layer.bias, layer.config
    if isinstance(layer, SparseLinear):
        return lambda x: op(x, layout, ints, c["out_features"], bias, c["relu"])
    args = (c["out_channels"], c["kernel_size"], c["stride"], layer._padding, c["dilation"])
    return lambda x: op(x, layout, ints, *args, c["groups"], bias, c["relu"])


def eager_us(sides: dict, x, mode, rounds: int, seconds: float) -> dict:
    """Each side's median over ``rounds`` alternated rounds of us per call under ``mode``, each
    side running about ``seconds`` a round."""
    sync = torch.cuda.synchronize if GPU else (lambda: None)
    with mode():
        timers, per_round = {}, {}
        for name, fn in sides.items():
            fn(x)
            timer = Timer("fn(x); sync()", globals={"fn": fn, "x": x, "sync": sync}, num_threads=1)
            timers[name] = timer
            per_round[name] = max(1, int(seconds / max(1e-7, timer.timeit(50).median)))
        # many calls queued then one wait: on a GPU the host, not the kernel, sets the pace
        timers = {
            name: Timer(
                "for _ in range(n): fn(x)\nsync()",
                globals={"fn": fn, "x": x, "n": per_round[name], "sync": sync},
                num_threads=1,
            )
            for name, fn in sides.items()
        }
        times = {name: [] for name in sides}
        for _ in range(rounds):
            for name, timer in timers.items():
                times[name].append(1e6 * timer.timeit(1).median / per_round[name])
    return {name: statistics.median(t) for name, t in times.items()}


def graph_us(fn, x, rounds: int) -> float:
    """us per call of ``fn(x)`` replayed from a CUDA graph of ``GRAPH_CALLS`` calls."""
    with torch.inference_mode():
        graph, _ = timing.captured(fn, x, calls=GRAPH_CALLS)
        timer = Timer("g.replay(); sync()", globals={"g": graph, "sync": torch.cuda.synchronize})
        return statistics.median(1e6 * timer.timeit(20).median / GRAPH_CALLS for _ in range(rounds))


def run_case(kind: str, mask_kind: str, backend: str, rounds: tuple, gen) -> list[dict]:
    dense, x, build = layers(kind, gen)
    dense = dense.to(DEVICE, DTYPE).eval()
    x = x.to(DEVICE, DTYPE)
    shape = dense.weight.shape
    kept = mask(mask_kind, shape[0], shape[1]).to(DEVICE, DTYPE)
    weight = dense.weight.detach() * kept.view(*kept.shape, *([1] * (len(shape) - 2)))
    bias = dense.bias.detach()
    sparse = build(weight, bias, backend)
    sides = {
        "dense": dense,
        "dense_layer": build(weight, bias, "dense"),
        "layer": sparse,
        "op": op_call(sparse),
    }
    with torch.no_grad():
        if kind == "conv":
            expected = torch.nn.functional.conv2d(x, weight, bias, padding=1)
        else:
            expected = torch.nn.functional.linear(x, weight, bias)
        for name in ("layer", "op"):
            torch.testing.assert_close(sides[name](x), expected, rtol=2e-2, atol=2e-2)
    records = []
    for mode_name, mode in MODES.items():
        us = eager_us(sides, x, mode, *rounds)
        record = {
            "case": kind,
            "input": list(x.shape),
            "weight": list(shape),
            "mask": mask_kind,
            "backend": backend,
            "structure": sparse.config["structure"],
            "blocks": sparse.summary()["blocks"],
            "dtype": str(DTYPE).removeprefix("torch."),
            "mode": mode_name,
            **{f"{name}_us": t for name, t in us.items()},
            "ratio": us["layer"] / us["dense"],
            "target": TARGETS[kind],
        }
        if GPU and mode_name == "inference_mode":
            graphed = {name: graph_us(fn, x, rounds[0]) for name, fn in sides.items()}
            record |= {f"{name}_graph_us": t for name, t in graphed.items()}
            record["graph_ratio"] = graphed["layer"] / graphed["dense"]
        records.append(record)
    return records


def case_backends(device: str) -> list[str]:
    """The benchmarked backends made for ``device`` that run there (not the Triton interpreter on
    CPU tensors, whose calls say nothing of the kernels')."""
    return [
        b.name
        for b in backends.REGISTRY.values()
        if b.benchmarked and device in b.devices and b.problem(torch.device(device), DTYPE) is None
    ]


def main(argv=None) -> list[dict]:
    args, command = suite_arguments(
        argv, __doc__.split("\n\n")[0], "bench.host_overhead", "few rounds (a plumbing check)"
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env = environment(command, DEVICE)
        rounds = QUICK_ROUNDS if args.quick else ROUNDS
        gen = torch.Generator().manual_seed(0)
        records = []
        for kind in ("conv", "linear"):
            for mask_kind in ("channel", "group"):
                for backend in case_backends(DEVICE):
                    records += run_case(kind, mask_kind, backend, rounds, gen)
    finally:
        torch.set_num_threads(threads)
    stem = f"host-overhead-{'gpu-' + env['device'].replace(' ', '-') if GPU else 'cpu'}"
    stem += f"-{datetime.date.today().isoformat()}" + ("-quick" if args.quick else "")
    graph = " | graph layer / dense us (x)" if GPU else ""
    rows = [
        f"| {r['case']} {r['input']} | {r['mask']} ({r['structure']}, {r['blocks']}) | "
        f"{r['backend']} | {r['mode']} | {r['dense_us']:.2f} | {r['dense_layer_us']:.2f} | "
        f"{r['layer_us']:.2f} | {r['op_us']:.2f} | {r['ratio']:.2f}x (<= {r['target']}x)"
        + (
            f" | {r['layer_graph_us']:.2f} / {r['dense_graph_us']:.2f} ({r['graph_ratio']:.2f}x)"
            if "graph_ratio" in r
            else (" | not timed" if GPU else "")
        )
        + " |"
        for r in records
    ]
    header = (
        "| case | mask (structure, blocks) | backend | mode | dense module us | dense layer us | "
        f"sparse layer us | its op us | sparse / dense module{graph} |\n"
        + "| --- " * (10 if GPU else 9)
        + "|"
    )
    write_results(
        args.out / stem,
        env | {"dtype": str(DTYPE).removeprefix("torch."), "threads": 1},
        f"Host overhead per call on {env['device']} ({DEVICE}, one thread, "
        f"{str(DTYPE).removeprefix('torch.')})",
        header,
        rows,
        records,
    )
    return records


if __name__ == "__main__":
    main(sys.argv[1:])

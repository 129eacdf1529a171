"""CPU benchmark suite: sparsekit against torch dense (oneDNN) and torch BSR, in one run.

Per layer: 3x3 convs (256/512 channels) with group-wise, channel-wise and kernel-wise masks at
several sparsities, and a 4096x4096 linear at 80% 32x32-block sparsity (also against
``to_sparse_bsr``); end to end: VGG-16 (BN) and ResNet-18 at 32x32 compiled from refilled
(channel) masks of 80% global L1 pruning. Every figure is a median of many runs on all of
torch's threads (best of three medians taken in alternation with the other side), and every
ratio is against dense measured in the same run.

    python -m bench.cpu_suite            # full: writes bench/results/cpu-<date>.{json,md,png}
    python -m bench.cpu_suite --quick    # seconds: tiny shapes, for CI
"""

import datetime
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import sparsekit
from sparsekit import backends, timing, zoo
from sparsekit.transforms import global_magnitude_masks, refill_masks

from .masks import conv_mask, flop_limit
from .report import suite_arguments, write_results

CPU = torch.device("cpu")

FULL_CONVS = [(256, 8, 64), (512, 4, 64), (256, 16, 16), (512, 16, 16)]  # (channels, size, batch)
QUICK_CONVS = [(32, 4, 2)]
SPARSITIES = {"group": (0.5, 0.8, 0.9), "channel": (0.5, 0.8), "kernel": (0.9,), "unstructured": (0.8, 0.9)}


def conv_cases(shapes, quick: bool, gen):
    for channels, size, batch in shapes:
        x = torch.randn(batch, channels, size, size, generator=gen)
        x_last = x.contiguous(memory_format=torch.channels_last)
        for structure, sparsities in SPARSITIES.items():
            for sparsity in sparsities[:1] if quick else sparsities:
                weight = torch.randn(channels, channels, 3, 3, generator=gen)
                weight *= conv_mask(structure, channels, sparsity, gen)
                plan = "auto" if structure == "unstructured" else structure
                layer = sparsekit.SparseConv2d.from_weight(weight, padding=1, structure=plan)
                dense, dense_format = _faster_dense(x, x_last, weight)
                for backend in backends.auto(CPU, weight.dtype, layer.packed()):  # all auto would time
                    twin = layer.with_backend(backend.name)
                    yield {
                        "kind": "conv3x3", "shape": [channels, channels, 3, 3], "input": list(x.shape),
                        "structure": structure, "sparsity": round(1 - weight.ne(0).float().mean().item(), 4),
                        "plan": layer.summary()["structure"], "backend": twin.backend,
                        "blocks": layer.summary()["blocks"], "flop_limit": weight.numel() / weight.count_nonzero().item(),
                        "dense_format": dense_format,
                    }, dense, (lambda x=x, l=twin: l(x)), None


def _faster_dense(x, x_last, weight):
    """torch's conv in its faster memory format for this shape (NCHW or channels_last), picked
    by a first timing, and the format's name."""
    w_last = weight.contiguous(memory_format=torch.channels_last)
    sides = {"nchw": lambda: F.conv2d(x, weight, None, 1, 1),
             "channels_last": lambda: F.conv2d(x_last, w_last, None, 1, 1)}
    times = {name: timing.median_seconds(fn, min_run_time=0.05) for name, fn in sides.items()}
    faster = min(times, key=times.get)
    return sides[faster], faster


def linear_cases(quick: bool, gen):
    features, batch, block = (128, 8, 16) if quick else (4096, 64, 32)
    tiles = features // block
    keep = torch.rand(tiles, tiles, generator=gen) < 0.2
    mask = keep.repeat_interleave(block, 0).repeat_interleave(block, 1)
    weight = torch.randn(features, features, generator=gen) * mask
    x = torch.randn(batch, features, generator=gen)
    layer = sparsekit.SparseLinear.from_weight(weight, structure="group")
    bsr = weight.to_sparse_bsr((block, block))
    yield {
        "kind": "linear", "shape": [features, features], "input": list(x.shape), "structure": "group",
        "sparsity": round(1 - mask.float().mean().item(), 4), "plan": layer.summary()["structure"],
        "backend": layer.backend, "blocks": layer.summary()["blocks"], "bsr_block": block,
        "flop_limit": weight.numel() / weight.count_nonzero().item(),
    }, (lambda: F.linear(x, weight)), (lambda: layer(x)), (lambda: F.linear(x, bsr))


def model_cases(quick: bool, gen):
    """End to end: the dense model (its cost is the dense masked model's) against the compiled
    one, whose BatchNorm statistics are calibrated under the masks so that its check against the
    dense masked model can fail; plans are chosen by measurement except in quick mode (cost
    model)."""
    for name, batch in ([("wrn32_2", 2)] if quick else [("vgg16_bn", 16), ("resnet18", 16)]):
        model = zoo.create(name).eval()
        shape = zoo.INPUT_SHAPES[name]
        x = torch.randn(batch, *shape, generator=gen)
        masks = refill_masks(model, global_magnitude_masks(model, 0.8))
        zoo.calibrate_batchnorm(model, [torch.randn(8, *shape, generator=gen) for _ in range(2)], masks)
        compiled = sparsekit.compile(model, masks, x, measure=not quick)
        report = compiled.sparsekit_report
        if not report.discriminating:
            raise AssertionError(f"{name}: the reference output hardly depends on the input: {report.spread}")
        kept = sum(m.sum().item() for m in masks.values()) / sum(m.numel() for m in masks.values())
        yield {
            "kind": "model", "shape": name, "input": list(x.shape), "structure": "refill (channels)",
            "sparsity": round(1 - kept, 4), "plan": "per layer", "backend": "per layer",
            "blocks": sum(l.blocks for l in report.layers),
            "flop_limit": flop_limit(model, masks, x),
            "slower_layers": [l.name for l in report.layers if l.speedup and l.speedup < 1],
        }, (lambda m=model, x=x: m(x)), (lambda c=compiled, x=x: c(x)), None


def run(quick: bool, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    min_run_time = 0.01 if quick else 0.2
    records = []
    cases = (conv_cases(QUICK_CONVS if quick else FULL_CONVS, quick, gen), linear_cases(quick, gen),
             model_cases(quick, gen))
    for record, dense, sparse, bsr in (case for group in cases for case in group):
        sides = {"dense_ms": dense, "sparse_ms": sparse} | ({"bsr_ms": bsr} if bsr else {})
        record |= timing.paired_ms(sides, min_run_time)
        record["speedup"] = record["dense_ms"] / record["sparse_ms"]
        if bsr is not None:
            record["speedup_vs_bsr"] = record["bsr_ms"] / record["sparse_ms"]
        records.append(record)
        print(_row(record), flush=True)
    return records


def _row(r: dict) -> str:
    bsr = f"{r['bsr_ms']:.2f}" if "bsr_ms" in r else ""
    return (f"| {r['kind']} | {r['shape']} | {r['input']} | {r['structure']} | {r['sparsity']:.2f} | "
            f"{r['plan']} | {r['backend']} | {r['dense_ms']:.2f} | {r['sparse_ms']:.2f} | {bsr} | {r['speedup']:.2f}x "
            f"| {r['flop_limit']:.2f}x |")


HEADER = ("| kind | shape | input | mask | sparsity | plan | backend | dense ms | sparsekit ms | torch BSR ms "
          "| speedup | FLOP limit |\n" + "| --- " * 12 + "|")


def environment(command: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "device": f"{cpu} ({torch.backends.cpu.get_cpu_capability()})", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "sparsekit": sparsekit.__version__, "dtype": "float32",
        "date": datetime.date.today().isoformat(), "command": command,
    }


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    layers = [r for r in records if r["kind"] == "conv3x3"]
    timed = sorted({r["backend"] for r in layers}, key=backends.names().index)
    for color, (structure, marker) in enumerate((("group", "o"), ("channel", "s"), ("kernel", "^"),
                                                          ("unstructured", "D"))):
        for backend in timed:  # the first backend filled, the others hollow
            fill = f"C{color}" if backend == timed[0] else "none"
            points = [(r["sparsity"], r["speedup"]) for r in layers
                      if r["structure"] == structure and r["backend"] == backend]
            if points:
                axes.scatter(*zip(*points), marker=marker, facecolors=fill, edgecolors=f"C{color}",
                             label=f"{structure} masks, backend {backend}")
    s = torch.linspace(0, 0.92, 100)
    axes.plot(s, 1 / (1 - s), "k--", linewidth=1, label="limit 1/(1-s)")
    axes.axhline(1, color="grey", linewidth=0.8)
    axes.set(xlabel="sparsity", ylabel="speedup over torch dense (oneDNN)", yscale="log",
             title="sparsekit block_conv2d on CPU, 3x3 convs, fp32")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None) -> list[dict]:
    args, command = suite_arguments(argv, __doc__.splitlines()[0], "bench.cpu_suite", "tiny shapes, seconds (for CI)")
    env = environment(command)
    title = f"{env['device']}, {env['threads']} threads, torch {env['torch']}, fp32"
    print(f"{title}\n{HEADER}")
    records = run(args.quick)
    stem = args.out / f"cpu-{env['date']}{'-quick' if args.quick else ''}"
    write_results(stem, env, title, HEADER, list(map(_row, records)), records)
    plot(records, stem.with_suffix(".png"))
    return records


if __name__ == "__main__":
    main(sys.argv[1:])

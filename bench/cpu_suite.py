"""CPU benchmark suite: sparsekit against torch dense (oneDNN) and torch BSR, in one run.

Per layer: 3x3 convs (256/512 channels) with group-wise, channel-wise, kernel-wise and
unstructured masks at several sparsities, in fp32 and bf16; ResNet-18's 3x3 convs at batch 16
under kernel-magnitude (whole kernels, each row its own) and unstructured masks at 70/80/90/95%,
in fp32; a 4096x4096 linear at 80%
32x32-block sparsity (also against ``to_sparse_bsr``); end to end: ResNet-18 and VGG-16 (BN) at
32x32 (batch 16) and ResNet-50 at 224x224 (batch 4), channels_last, compiled with measured plans
from layer-wise L1 masks (first conv and classifier dense) at 80%, refilled and plain, and plain
at 90%. Every figure is a median of many runs on all of torch's threads (best of three medians
taken in alternation with the other side), and every ratio is against dense, in its faster
memory format (a single layer of sparsekit's in its own faster one), measured in the same run.
Beside each: the FLOP limit, the fraction of the machine's fp32 peak (``bench.peak``), and for the
C++ kernels where the time goes (input packing, micro-kernel, epilogue) and how many output grid
positions they compute per real one; end to end, the same per layer.

    python -m bench.cpu_suite            # full: writes bench/results/cpu-<date>.{json,md,png}
    python -m bench.cpu_suite --quick    # seconds: tiny shapes, for CI
    python -m bench.cpu_suite --part resnet18-layers   # one part: cpu-<date>-<part>.*
"""

import datetime
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import sparsekit
from sparsekit import backends, timing, zoo
from sparsekit.backends import cpu
from sparsekit.transforms import layerwise_magnitude_masks, refill_masks

from .masks import conv_mask, flop_limit
from .peak import fp32_peak_macs
from .report import suite_arguments, write_results

CPU = torch.device("cpu")

FULL_CONVS = [(256, 8, 64), (512, 4, 64), (256, 16, 16), (512, 16, 16)]  # (channels, size, batch)
QUICK_CONVS = [(32, 4, 2)]
SPARSITIES = {
    "group": (0.5, 0.8, 0.9),
    "channel": (0.5, 0.8),
    "kernel": (0.9,),
    "unstructured": (0.8, 0.9),
}
# ResNet-18's 3x3 convs (zoo, 32x32 inputs) at batch 16 under the masks most pruned models carry:
# whole kernels ranked by magnitude, each row its own (kernel_magnitude_mask), and unstructured
RESNET18_CONVS = [(64, 32, 16), (128, 16, 16), (256, 8, 16), (512, 4, 16)]
MAGNITUDE_SPARSITIES = {s: (0.7, 0.8, 0.9, 0.95) for s in ("kernel-magnitude", "unstructured")}
DTYPES = (torch.float32, torch.bfloat16)
PARTS = ("convs", "resnet18-layers", "linear", "models")
PROFILED_CALLS = 5  # calls of a C++ kernel profiled for its phase breakdown


def conv_cases(shapes, quick: bool, gen, sparsities=SPARSITIES, dtypes=DTYPES):
    for channels, size, batch in shapes:
        x32 = torch.randn(batch, channels, size, size, generator=gen)
        for structure, levels in sparsities.items():
            for sparsity in levels[:1] if quick else levels:
                weight32 = torch.randn(channels, channels, 3, 3, generator=gen)
                weight32 *= conv_mask(structure, channels, sparsity, gen)
                plan = "auto" if structure == "unstructured" else structure.split("-")[0]
                for dtype in dtypes:
                    x, weight = x32.to(dtype), weight32.to(dtype)
                    layer = sparsekit.SparseConv2d.from_weight(weight, padding=1, structure=plan)
                    dense, dense_format, _ = timing.in_faster_format(
                        lambda x, w: F.conv2d(x, w, None, 1, 1), x, weight
                    )
                    for backend in backends.auto(CPU, dtype, layer.packed()):  # all auto would time
                        twin = layer.with_backend(backend.name)
                        sparse, sparse_format, _ = timing.in_faster_format(
                            lambda x, twin=twin: twin(x), x
                        )
                        yield (
                            {
                                "kind": "conv3x3",
                                "shape": [channels, channels, 3, 3],
                                "input": list(x.shape),
                                "dtype": str(dtype).removeprefix("torch."),
                                "structure": structure,
                                "sparsity": round(1 - weight.ne(0).float().mean().item(), 4),
                                "plan": layer.summary()["structure"],
                                "backend": twin.backend,
                                "blocks": layer.summary()["blocks"],
                                "flop_limit": weight.numel() / weight.count_nonzero().item(),
                                "dense_format": dense_format,
                                "sparse_format": sparse_format,
                                "dense_macs": weight.numel() * batch * size * size,
                                "output_positions": batch * size * size,
                            },
                            dense,
                            sparse,
                            None,
                        )


def kernel_phases(run, calls: int = PROFILED_CALLS) -> dict:
    """Per call of ``run`` (a function of no argument calling the C++ CPU kernels): the kernel
    that ran (``exact``: the exact-position kernel, ``planes``, or ``mixed``), ms packing the
    input, in the micro-kernel and in the epilogue (the tiles' wall time split by their thread
    time), and the output grid positions computed."""
    with torch.no_grad():
        run()
        with cpu.phase_profile() as totals:
            for _ in range(calls):
                run()
    if not totals["calls"]:
        return {}
    tiles_ms = 1e3 * totals["tiles_s"] / calls
    thread_s = totals["micro_s"] + totals["store_s"]
    kernel = {totals["calls"]: "exact", 0: "planes"}.get(totals["tap_calls"], "mixed")
    return {
        "kernel": kernel,
        "pack_ms": 1e3 * totals["pack_s"] / calls,
        "micro_ms": tiles_ms * totals["micro_s"] / thread_s if thread_s else 0.0,
        "epilogue_ms": tiles_ms * totals["store_s"] / thread_s if thread_s else 0.0,
        "grid_positions": totals["grid_positions"] // calls,
    }


def linear_cases(quick: bool, gen):
    features, batch, block = (128, 8, 16) if quick else (4096, 64, 32)
    tiles = features // block
    keep = torch.rand(tiles, tiles, generator=gen) < 0.2
    mask = keep.repeat_interleave(block, 0).repeat_interleave(block, 1)
    weight = torch.randn(features, features, generator=gen) * mask
    x = torch.randn(batch, features, generator=gen)
    layer = sparsekit.SparseLinear.from_weight(weight, structure="group")
    bsr = weight.to_sparse_bsr((block, block))
    yield (
        {
            "kind": "linear",
            "shape": [features, features],
            "input": list(x.shape),
            "dtype": "float32",
            "structure": "group",
            "sparsity": round(1 - mask.float().mean().item(), 4),
            "plan": layer.summary()["structure"],
            "backend": layer.backend,
            "blocks": layer.summary()["blocks"],
            "bsr_block": block,
            "flop_limit": weight.numel() / weight.count_nonzero().item(),
            "dense_macs": weight.numel() * batch,
            "output_positions": batch,
        },
        (lambda: F.linear(x, weight)),
        (lambda: layer(x)),
        (lambda: F.linear(x, bsr)),
    )


MODELS = [("resnet18", 16), ("vgg16_bn", 16), ("resnet50", 4)]
MODEL_MASKS = [("refill", 0.8), ("unstructured", 0.8), ("unstructured", 0.9)]


def model_cases(quick: bool, gen):
    """End to end: the dense model (its cost is the dense masked model's, in its faster memory
    format) against the compiled channels_last one, whose BatchNorm statistics are calibrated
    under the masks so that its check against the dense masked model can fail; plans are chosen
    by measurement except in quick mode (cost model)."""
    cases = (
        [("wrn32_2", 2, "refill", 0.8)]
        if quick
        else [(*m, *k) for m in MODELS for k in MODEL_MASKS]
    )
    for name, batch, kind, sparsity in cases:
        model = zoo.create(name).eval()
        shape = zoo.INPUT_SHAPES[name]
        x = torch.randn(batch, *shape, generator=gen)
        masks = layerwise_magnitude_masks(model, sparsity)
        if kind == "refill":
            masks = refill_masks(model, masks)
        zoo.calibrate_batchnorm(
            model, [torch.randn(8, *shape, generator=gen) for _ in range(2)], masks
        )
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        # the layers' kernels against dense, each at full width: no channel compaction
        compiled = sparsekit.compile(model, masks, x, measure=not quick, compact_channels=False)
        report = compiled.sparsekit_report
        if not report.discriminating:
            raise AssertionError(
                f"{name}: the reference output hardly depends on the input: {report.spread}"
            )
        kept = sum(m.sum().item() for m in masks.values()) / sum(m.numel() for m in masks.values())
        dense, dense_format, _ = timing.in_faster_format(model, x)
        yield (
            {
                "kind": "model",
                "shape": name,
                "input": list(x.shape),
                "dtype": "float32",
                "structure": f"layer-wise {kind} {sparsity:.0%}",
                "sparsity": round(1 - kept, 4),
                "plan": "per layer",
                "backend": "per layer",
                "blocks": sum(info.blocks for info in report.layers),
                "flop_limit": flop_limit(model, masks, x),
                "dense_format": dense_format,
                "dense_macs": sum(info.macs for info in report.layers),
                "slower_layers": [
                    info.name for info in report.layers if info.speedup and info.speedup < 1
                ],
                "layers": layer_breakdown(compiled, report, masks, x),
            },
            dense,
            (lambda c=compiled, x=x: c(x)),
            None,
        )


def layer_breakdown(compiled, report, masks, x) -> list[dict]:
    """Per compiled layer: its plan, the times compile measured (dense and sparse, ms), its
    mask's FLOP limit (whatever plan was chosen) and, for layers on the C++ kernels, their
    phase breakdown on the layer's own input."""
    inputs = {}
    hooks = [
        compiled.get_submodule(info.name).register_forward_pre_hook(
            lambda module, args, name=info.name: inputs.setdefault(name, args[0])
        )
        for info in report.layers
    ]
    with torch.no_grad():
        compiled(x)
    for hook in hooks:
        hook.remove()
    rows = []
    for info in report.layers:
        layer, layer_input = compiled.get_submodule(info.name), inputs[info.name]
        mask = masks.get(f"{info.name}.weight")
        row = {
            "layer": info.name,
            "input": list(layer_input.shape),
            "structure": info.structure,
            "backend": info.backend,
            "blocks": info.blocks,
            "flop_limit": 1.0 if mask is None else mask.numel() / mask.sum().item(),
            "dense_ms": info.dense_ms,
            "sparse_ms": info.sparse_ms,
            "dense_macs": info.macs,
        }
        if info.backend == "cpu":
            row |= kernel_phases(lambda: layer(layer_input))
            row["output_positions"] = layer_input.shape[0] * layer(layer_input).shape[2:].numel()
        rows.append(row)
    return rows


def run(quick: bool, peak_macs: float, seed: int = 0, parts=PARTS) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    min_run_time = 0.01 if quick else 0.2
    records = []
    cases = {
        "convs": lambda: conv_cases(QUICK_CONVS if quick else FULL_CONVS, quick, gen),
        "resnet18-layers": lambda: conv_cases(
            QUICK_CONVS if quick else RESNET18_CONVS,
            quick,
            gen,
            MAGNITUDE_SPARSITIES,
            (torch.float32,),
        ),
        "linear": lambda: linear_cases(quick, gen),
        "models": lambda: model_cases(quick, gen),
    }
    for record, dense, sparse, bsr in (case for part in parts for case in cases[part]()):
        sides = {"dense_ms": dense, "sparse_ms": sparse} | ({"bsr_ms": bsr} if bsr else {})
        record |= timing.paired_ms(sides, min_run_time)
        record["speedup"] = record["dense_ms"] / record["sparse_ms"]
        if bsr is not None:
            record["speedup_vs_bsr"] = record["bsr_ms"] / record["sparse_ms"]
        if record["backend"] == "cpu":
            record |= kernel_phases(sparse)
        add_peak_fractions(record, peak_macs)
        for layer in record.get("layers", ()):
            add_peak_fractions(layer, peak_macs)
        records.append(record)
        print(_row(record), flush=True)
    return records


def add_peak_fractions(r: dict, peak_macs: float) -> None:
    """The fraction of the fp32 peak that dense and sparse reach (kept multiply-adds per second;
    padding taps counted, as in the FLOP limit; bf16 rows too are read against the fp32 peak),
    and the micro-kernel's own, on the grid positions it computes, when its phases were
    profiled (kept multiply-adds again: zeros stored inside blocks are work it does uncounted)."""
    kept = r["dense_macs"] / r["flop_limit"]
    if r.get("dense_ms"):
        r["dense_peak"] = r["dense_macs"] / (r["dense_ms"] / 1e3) / peak_macs
    if r.get("sparse_ms"):
        r["sparse_peak"] = kept / (r["sparse_ms"] / 1e3) / peak_macs
    if r.get("micro_ms"):
        r["grid_per_position"] = r["grid_positions"] / r["output_positions"]
        r["micro_peak"] = kept * r["grid_per_position"] / (r["micro_ms"] / 1e3) / peak_macs


def _phases(r: dict) -> str:
    if "micro_ms" not in r:
        return " | | |"
    return (
        f" {r['kernel']} | {r['pack_ms']:.2f} / {r['micro_ms']:.2f} / {r['epilogue_ms']:.2f} | "
        f"{r['grid_per_position']:.2f} ({r['micro_peak']:.0%}) |"
    )


def _row(r: dict) -> str:
    bsr = f"{r['bsr_ms']:.2f}" if "bsr_ms" in r else ""
    return (
        f"| {r['kind']} | {r['shape']} | {r['input']} | {r['dtype']} | {r['structure']} | "
        f"{r['sparsity']:.2f} | {r['plan']} | {r['backend']} | {r['dense_ms']:.2f} | "
        f"{r['sparse_ms']:.2f} | {bsr} | {r['speedup']:.2f}x | {r['flop_limit']:.2f}x | "
        f"{r['speedup'] / r['flop_limit']:.0%} | {r['dense_peak']:.0%} / {r['sparse_peak']:.0%} |"
        + _phases(r)
    )


HEADER = (
    "| kind | shape | input | dtype | mask | sparsity | plan | backend | dense ms | sparsekit ms "
    "| torch BSR ms | speedup | FLOP limit | of limit | % fp32 peak dense / sparse | C++ kernel "
    "| pack / micro / epilogue ms | grid per position (micro % peak) |\n" + "| --- " * 18 + "|"
)


def _layer_row(model: dict, layer: dict) -> str:
    timed = layer["dense_ms"] and layer["sparse_ms"]  # compile measured them (not in quick mode)
    times = (
        f"{layer['dense_ms']:.2f} | {layer['sparse_ms']:.2f} | "
        f"{layer['dense_ms'] / layer['sparse_ms']:.2f}x"
        if timed
        else "| |"
    )
    peak = f"{layer['sparse_peak']:.0%}" if "sparse_peak" in layer else ""
    return (
        f"| {model['shape']} | {model['structure']} | {layer['layer']} | {layer['input']} | "
        f"{layer['structure']} | {layer['backend']} | {times} | {layer['flop_limit']:.2f}x | "
        f"{peak} |" + _phases(layer)
    )


LAYER_HEADER = (
    "| model | mask | layer | input | plan | backend | dense ms | sparsekit ms | speedup "
    "| FLOP limit | % fp32 peak | C++ kernel | pack / micro / epilogue ms "
    "| grid per position (micro % peak) |\n" + "| --- " * 14 + "|"
)


def environment(command: str, peak_macs: float) -> dict:
    return {
        "device": f"{timing.device_name('cpu')} ({torch.backends.cpu.get_cpu_capability()})",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sparsekit": sparsekit.__version__,
        "dtypes": [str(d).removeprefix("torch.") for d in DTYPES],
        "fp32_peak_gmacs": peak_macs / 1e9,
        "date": datetime.date.today().isoformat(),
        "command": command,
    }


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    layers = [r for r in records if r["kind"] == "conv3x3" and r["dtype"] == "float32"]
    timed = sorted({r["backend"] for r in layers}, key=backends.names().index)
    for color, (structure, marker) in enumerate(
        (("group", "o"), ("channel", "s"), ("kernel", "^"), ("unstructured", "D"))
    ):
        for backend in timed:  # the first backend filled, the others hollow
            fill = f"C{color}" if backend == timed[0] else "none"
            points = [
                (r["sparsity"], r["speedup"])
                for r in layers
                if r["structure"] == structure and r["backend"] == backend
            ]
            if points:
                axes.scatter(
                    *zip(*points),
                    marker=marker,
                    facecolors=fill,
                    edgecolors=f"C{color}",
                    label=f"{structure} masks, backend {backend}",
                )
    s = torch.linspace(0, 0.92, 100)
    axes.plot(s, 1 / (1 - s), "k--", linewidth=1, label="limit 1/(1-s)")
    axes.axhline(1, color="grey", linewidth=0.8)
    axes.set(
        xlabel="sparsity",
        ylabel="speedup over torch dense (oneDNN)",
        yscale="log",
        title="sparsekit block_conv2d on CPU, 3x3 convs, fp32",
    )
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None) -> list[dict]:
    args, command = suite_arguments(
        argv,
        __doc__.splitlines()[0],
        "bench.cpu_suite",
        "tiny shapes, seconds (for CI)",
        lambda parser: parser.add_argument(
            "--part", action="append", choices=PARTS, help="default: all, in this order"
        ),
    )
    peak_macs = fp32_peak_macs()
    env = environment(command, peak_macs)
    title = (
        f"{env['device']}, {env['threads']} threads, torch {env['torch']}, fp32 peak "
        f"{env['fp32_peak_gmacs']:.0f} GMAC/s (`python -m bench.peak`)"
    )
    print(f"{title}\n{HEADER}")
    records = run(args.quick, peak_macs, parts=args.part or PARTS)
    only = "".join(f"-{part}" for part in args.part or ())
    stem = args.out / f"cpu-{env['date']}{only}{'-quick' if args.quick else ''}"
    layers = [_layer_row(r, layer) for r in records for layer in r.get("layers", ())]
    write_results(
        stem,
        env,
        title,
        HEADER,
        list(map(_row, records)),
        records,
        extra=f"\n## End to end, per layer\n\n{LAYER_HEADER}\n" + "\n".join(layers) + "\n",
    )
    plot(records, stem.with_suffix(".png"))
    return records


if __name__ == "__main__":
    main(sys.argv[1:])

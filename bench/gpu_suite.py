"""GPU benchmark suite: the Triton kernels against cuDNN / cuBLAS and torch's BSR, in one run.

Per layer: the 3x3 convs of ResNet-50 at 224 (batch 64) and VGG-16 at 32x32 (batch 256) with
group-wise (row groups of 32), channel-wise and kernel-wise masks, in bf16 and strict fp32
(cuDNN with TF32 off as well); block-sparse linears 4096x4096 and 11008x4096 at 80% sparsity
in 32x32 blocks, batch 2048, bf16, also against ``torch.sparse._triton_ops.bsr_dense_mm`` on
the same blocks. End to end: zoo ResNet-18 and VGG-16-BN at 32x32, batch 64, refilled 80% masks,
compiled with measured plans. Each case checks the result against the dense layer before it is
timed. Times are ``triton.testing.do_bench`` medians (CUDA events; warm-up and autotuning excluded)
of each side in NCHW and channels_last, the faster counting (do_bench clears the L2 cache before
each call); on a GPU each side is timed again replayed from a CUDA graph (``graph``, its own faster
format), which leaves out the host's launch cost and runs the calls back to back, so weights and
inputs that fit the L2 stay there (dense and the backends marked ``graph_safe``: torch's BSR
reads tables on the host).

    python -m bench.gpu_suite            # on a GPU: writes bench/results/gpu-<device>-<date>.json
    python -m bench.gpu_suite --quick    # tiny shapes; without a GPU it runs under
                                         # TRITON_INTERPRET=1 and times on the CPU
                                         # (a plumbing check)
    python -m bench.gpu_suite --part bfloat16   # one part: a dtype's convs, "linear" or "models"
                                                # (each fits a 10-minute call)
    python -m bench.gpu_suite --part headline   # the GPU session's: group 50/80% convs in bf16 and
                                                # strict fp32, the 4096x4096 linear
    SPARSEKIT_BENCH_ALSO=cuda python -m bench.gpu_suite --part bfloat16   # also time a backend
                                                # not yet benchmarked (opt-in ones)
"""

import copy
import datetime
import os
import sys

import torch
import torch.nn.functional as F

GPU = torch.cuda.is_available()
if not GPU:  # before triton is imported: the kernels can only run interpreted
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit import backends, timing, tolerance, zoo  # noqa: E402
from sparsekit.transforms import layerwise_magnitude_masks, refill_masks  # noqa: E402

from .masks import conv_mask, flop_limit  # noqa: E402
from .report import suite_arguments, write_results  # noqa: E402

DEVICE = "cuda" if GPU else "cpu"
# (channels, map size, batch, where the layer comes from)
FULL_CONVS = [
    (256, 14, 64, "resnet50 layer3 @224"),
    (512, 7, 64, "resnet50 layer4 @224"),
    (256, 8, 256, "vgg16 @32"),
    (512, 4, 256, "vgg16 @32"),
    (512, 2, 256, "vgg16 @32"),
]
QUICK_CONVS = [(32, 4, 2, "tiny")]
MASKS = [("group", 0.5), ("group", 0.8), ("channel", 0.8), ("kernel", 0.9)]
# the GPU session's part (bench/gpu_session.py): every conv at the group masks that channel
# compaction cannot narrow, in bf16 and strict fp32, and the 4096x4096 linear
HEADLINE_MASKS = [("group", 0.5), ("group", 0.8)]
HEADLINE_DTYPES = ["bfloat16", "float32"]
# "float32" is strict (TF32 off for cuDNN and Triton alike); "tf32" is float32 with TF32 on for both
FULL_DTYPES = ["bfloat16", "float32", "tf32"]
QUICK_DTYPES = ["float32"]
FULL_LINEARS = [(4096, 4096, 2048), (11008, 4096, 2048)]  # (out, in, batch)
QUICK_LINEARS = [(64, 64, 16)]
LINEAR_BLOCK = 32
# end to end: zoo models at 32x32 with layer-wise L1 masks (first conv and classifier dense)
# refilled at 80%, compiled with measured plans (``auto``) and checked by compile's verify and
# against the dense side, the masked model compiled dense (its BatchNorm folded likewise)
FULL_MODELS = [("resnet18", 64), ("vgg16_bn", 64)]
QUICK_MODELS = [("wrn32_2", 2)]
# strict fp32 only: in bf16 the outputs of these randomly initialised models spread across the
# batch less than bf16's bound (measured on an H200), so compile's check could not fail
MODEL_DTYPES = ["float32"]
PRECISIONS = {
    "float32": torch.float32,
    "tf32": "tf32",
    "bfloat16": torch.bfloat16,
}  # keys of the tolerance table
# SPARSEKIT_BENCH_ALSO=cuda,...: time these backends too, though not yet benchmarked (the first
# timing of a backend that has just passed its GPU tests)
ALSO = set(filter(None, os.environ.get("SPARSEKIT_BENCH_ALSO", "").split(",")))
if ALSO - set(backends.REGISTRY):
    raise SystemExit(
        f"SPARSEKIT_BENCH_ALSO names no backend: {', '.join(sorted(ALSO - set(backends.REGISTRY)))}"
    )
GPU_BACKENDS = [
    b
    for b in backends.REGISTRY.values()
    if "cuda" in b.devices and (b.benchmarked or b.name in ALSO)
]


FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
# sides a CUDA graph can hold: dense, the backends that never wait on the host, and a compiled
# model when every backend ``auto`` may give it on CUDA is one of those
GRAPHED = (
    {"dense"}
    | {b.name for b in GPU_BACKENDS if b.graph_safe}
    | (
        {"sparsekit"}
        if all(b.graph_safe for b in backends.REGISTRY.values() if "cuda" in b.auto_on)
        else set()
    )
)


def median_ms(fn) -> float:
    return 1e3 * timing.median_seconds(fn, min_run_time=0.2 if GPU else 0.01, device=DEVICE)


def graph_ms(fn) -> float:
    with torch.no_grad():
        return triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median")


def use_tf32(allowed: bool) -> None:
    """TF32 on or off for cuDNN, cuBLAS and the Triton kernels together."""
    torch.backends.cudnn.allow_tf32 = allowed
    torch.set_float32_matmul_precision("high" if allowed else "highest")


def time_case(record: dict, dense: dict, sides: dict, dtype: str) -> dict:
    """Checks every side in every format against dense (the one tolerance table), then times
    all of them; adds ms per format, the faster format's ms and ratio (and on a GPU its CUDA
    graph's), errors and the bound they were held to. ``dense``: format -> function;
    ``sides``: name -> format -> function. A side of a backend timed only because it was asked for
    (``ALSO``: not yet tested on a GPU) that raises or misses the bound is recorded as failed
    (``<name>_failed``) and not timed; any other stops the run."""
    expected = next(iter(dense.values()))()
    record["bound"] = tolerance.bound(expected, PRECISIONS[dtype])
    for name, by_format in list(sides.items()):
        try:
            error = max(tolerance.max_error(fn(), expected) for fn in by_format.values())
        except Exception as failure:  # an untested backend's first runs
            if name not in ALSO:
                raise
            record[f"{name}_failed"] = f"{type(failure).__name__}: {failure}"[:300]
            del sides[name]
            continue
        record[f"{name}_error"] = error
        if not error <= record["bound"]:
            failed = f"max error {error:.2e} > {record['bound']:.2e}"
            if name not in ALSO:
                raise AssertionError(f"{record['shape']} {name}: {failed}")
            record[f"{name}_failed"] = failed
            del sides[name]
    for name, by_format in {"dense": dense, **sides}.items():
        timers = {"": median_ms} | ({"graph_": graph_ms} if GPU and name in GRAPHED else {})
        for prefix, timer in timers.items():  # each way of timing picks its faster format
            by_ms = record[f"{name}_{prefix}ms_by_format"] = {
                fmt: timer(fn) for fmt, fn in by_format.items()
            }
            record[f"{name}_{prefix}format"] = min(by_ms, key=by_ms.get)
            record[f"{name}_{prefix}ms"] = by_ms[record[f"{name}_{prefix}format"]]
    for name in sides:
        record[f"{name}_speedup"] = record["dense_ms"] / record[f"{name}_ms"]
        if GPU and name in GRAPHED:
            record[f"{name}_graph_speedup"] = record["dense_graph_ms"] / record[f"{name}_graph_ms"]
    return record


def backend_sides(layer_on, packed, inputs: dict) -> dict:
    """{backend name: {format: the packed layer on that backend applied to that input}} for
    every GPU backend that runs the pack (``layer_on(name)`` builds the layer; ``inputs``:
    format -> input)."""
    x = next(iter(inputs.values()))
    return {
        b.name: {fmt: (lambda layer=layer_on(b.name), x=x: layer(x)) for fmt, x in inputs.items()}
        for b in GPU_BACKENDS
        if b.problem(x.device, x.dtype, packed) is None
    }


def conv_cases(convs, dtypes, gen, masks=MASKS):
    for channels, size, batch, origin in convs:
        for dtype_name in dtypes:
            dtype = torch.float32 if dtype_name == "tf32" else getattr(torch, dtype_name)
            x = torch.randn(batch, channels, size, size, generator=gen).to(DEVICE, dtype)
            inputs = {fmt: x.contiguous(memory_format=f) for fmt, f in FORMATS.items()}
            for structure, sparsity in masks:
                weight = torch.randn(channels, channels, 3, 3, generator=gen)
                weight = (weight * conv_mask(structure, channels, sparsity, gen)).to(DEVICE, dtype)
                packed = sparsekit.pack(weight, structure=structure)
                record = {
                    "kind": "conv3x3",
                    "origin": origin,
                    "shape": [channels, channels, 3, 3],
                    "input": list(x.shape),
                    "dtype": dtype_name,
                    "structure": structure,
                    "sparsity": round(1 - weight.ne(0).float().mean().item(), 4),
                    "blocks": packed.num_blocks,
                    "flop_limit": weight.numel() / weight.count_nonzero().item(),
                }
                layer_on = lambda name, w=weight, p=packed: sparsekit.SparseConv2d.from_weight(  # noqa: E731
                    w, padding=1, backend=name, packed=p
                )
                sides = backend_sides(layer_on, packed, inputs)
                dense = {
                    fmt: (
                        lambda x=x, w=weight.contiguous(memory_format=FORMATS[fmt]): F.conv2d(
                            x, w, None, 1, 1
                        )
                    )
                    for fmt, x in inputs.items()
                }
                yield record, dense, sides, dtype_name


def linear_cases(linears, gen):
    from torch.sparse._triton_ops import bsr_dense_mm

    dtype = torch.bfloat16 if GPU else torch.float32
    for out_features, in_features, batch in linears:
        tiles = (
            torch.rand(out_features // LINEAR_BLOCK, in_features // LINEAR_BLOCK, generator=gen)
            < 0.2
        )
        mask = tiles.repeat_interleave(LINEAR_BLOCK, 0).repeat_interleave(LINEAR_BLOCK, 1)
        weight = (torch.randn(out_features, in_features, generator=gen) * mask).to(DEVICE, dtype)
        x = torch.randn(batch, in_features, generator=gen).to(DEVICE, dtype)
        packed = sparsekit.pack(weight, structure="group")
        layer_on = lambda name, w=weight, p=packed: sparsekit.SparseLinear.from_weight(  # noqa: E731
            w, backend=name, packed=p
        )
        sides = backend_sides(layer_on, packed, {"rows": x})
        if GPU:  # torch's BSR kernel is Triton compiled for CUDA only
            bsr, x_t = weight.to_sparse_bsr((LINEAR_BLOCK, LINEAR_BLOCK)), x.T.contiguous()
            sides["bsr"] = {"rows": lambda b=bsr, xt=x_t: bsr_dense_mm(b, xt).T}
        record = {
            "kind": "linear",
            "origin": "block-sparse linear",
            "shape": [out_features, in_features],
            "input": list(x.shape),
            "dtype": str(dtype).removeprefix("torch."),
            "structure": "group",
            "sparsity": round(1 - mask.float().mean().item(), 4),
            "blocks": packed.num_blocks,
            "bsr_block": LINEAR_BLOCK,
            "flop_limit": weight.numel() / weight.count_nonzero().item(),
        }
        yield record, {"rows": lambda x=x, w=weight: F.linear(x, w)}, sides, record["dtype"]


def model_cases(models, dtypes, quick: bool, gen):
    for name, batch in models:
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            model, shape = zoo.create(name).eval(), zoo.INPUT_SHAPES[name]
            masks = refill_masks(model, layerwise_magnitude_masks(model, 0.8))
            zoo.calibrate_batchnorm(
                model, [torch.randn(8, *shape, generator=gen) for _ in range(2)], masks
            )
            model = model.to(DEVICE, dtype)
            masks = {key: mask.to(DEVICE) for key, mask in masks.items()}
            x = torch.randn(batch, *shape, generator=gen).to(DEVICE, dtype)
            inputs = {fmt: x.contiguous(memory_format=f) for fmt, f in FORMATS.items()}
            use_tf32(
                dtype_name == "tf32"
            )  # compile measures and checks plans in the part's precision
            # the dense side is the masked model with its BatchNorm folded, as compile folds it
            folded = sparsekit.compile(
                model,
                masks,
                inputs["nchw"],
                backend="dense",
                measure=False,
                compact_channels=False,
            )
            dense = {
                fmt: (lambda m=copy.deepcopy(folded).to(memory_format=f), x=inputs[fmt]: m(x))
                for fmt, f in FORMATS.items()
            }
            compiled = sparsekit.compile(
                model.to(memory_format=torch.channels_last),
                masks,
                inputs["channels_last"],
                measure=not quick,
                compact_channels=False,  # the layers' kernels, each at full width
            )
            report = compiled.sparsekit_report
            if not (report.ok and report.discriminating):
                raise AssertionError(f"{name} {dtype_name}: compile's check failed: {report}")
            kept = sum(m.sum().item() for m in masks.values()) / sum(
                m.numel() for m in masks.values()
            )
            record = {
                "kind": "model",
                "origin": f"zoo {name}",
                "shape": name,
                "input": list(x.shape),
                "dtype": dtype_name,
                "structure": "refill",
                "sparsity": round(1 - kept, 4),
                "blocks": sum(info.blocks for info in report.layers),
                "flop_limit": flop_limit(model, masks, x),
                "layers": [
                    {
                        "layer": info.name,
                        "structure": info.structure,
                        "backend": info.backend,
                        "dense_ms": info.dense_ms,
                        "sparse_ms": info.sparse_ms,
                        "macs": info.macs,
                        "flops_ratio": info.flops_ratio,
                    }
                    for info in report.layers
                ],
            }
            sides = {"sparsekit": {fmt: (lambda x=x: compiled(x)) for fmt, x in inputs.items()}}
            yield record, dense, sides, dtype_name


def environment(command: str) -> dict:
    return {
        "device": torch.cuda.get_device_name() if GPU else "cpu (TRITON_INTERPRET=1)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if GPU else None,
        "sparsekit": sparsekit.__version__,
        "date": datetime.date.today().isoformat(),
        "command": command,
        "timing": "triton.testing.do_bench median, ms"
        if GPU
        else "torch.utils.benchmark median, ms",
    }


SIDES = [b.name for b in GPU_BACKENDS] + ["bsr", "sparsekit"]


def _row(r: dict) -> str:
    cells = [
        r["kind"],
        r["origin"],
        str(r["shape"]),
        str(r["input"]),
        r["dtype"],
        r["structure"],
        f"{r['sparsity']:.2f}",
        f"{r['flop_limit']:.2f}x",
        _ms(r, "dense"),
    ]
    for side in SIDES:
        if side + "_ms" not in r:
            cells.append(f"failed: {r[side + '_failed']}" if side + "_failed" in r else "")
            continue
        graph = f"; graph {r[side + '_graph_speedup']:.2f}x" if side + "_graph_speedup" in r else ""
        cells.append(f"{_ms(r, side)} ({r[side + '_speedup']:.2f}x{graph})")
    return "| " + " | ".join(cells) + " |"


def _ms(r: dict, side: str) -> str:
    """ms in the faster format, then the CUDA graph's ms where timed, each with its format's initial
    (results of the first H200 run hold the called format's graph time only)."""
    graph = ""
    if side + "_graph_ms" in r:
        graph = (
            f" / {r[side + '_graph_ms']:.3f} "
            f"{r.get(side + '_graph_format', r[side + '_format'])[0]}"
        )
    return f"{r[side + '_ms']:.3f} {r[side + '_format'][0]}{graph}"


# ms as "called format / graph-replayed format", the format n(chw), c(hannels_last) or r(ows)
HEADER = (
    "| kind | layer | shape | input | dtype | mask | sparsity | FLOP limit | dense ms | "
    + " | ".join(f"backend {b} ms (speedup)" for b in SIDES[:-2])
    + " | torch BSR ms (speedup) | compiled model ms (speedup) |\n"
    + "| --- " * (9 + len(SIDES))
    + "|"
)


PARTS = [*FULL_DTYPES, "linear", "models", "headline"]


def run(quick: bool, parts=PARTS, seed: int = 0, done=lambda records: None) -> list[dict]:
    """The records of ``parts`` (``quick``: the tiny cases), each passed to ``done`` with those
    before it as it is measured."""
    gen = torch.Generator().manual_seed(seed)
    records = []
    dtypes = [d for d in (QUICK_DTYPES if quick else FULL_DTYPES) if quick or d in parts]
    cases = [conv_cases(QUICK_CONVS if quick else FULL_CONVS, dtypes, gen)]
    if not quick and "headline" in parts:
        cases.append(conv_cases(FULL_CONVS, HEADLINE_DTYPES, gen, HEADLINE_MASKS))
        cases.append(linear_cases(FULL_LINEARS[:1], gen))
    if quick or "linear" in parts:
        cases.append(linear_cases(QUICK_LINEARS if quick else FULL_LINEARS, gen))
    if quick or "models" in parts:
        cases.append(
            model_cases(
                QUICK_MODELS if quick else FULL_MODELS,
                QUICK_DTYPES if quick else MODEL_DTYPES,
                quick,
                gen,
            )
        )
    previous = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    try:
        for record, dense, sides, dtype in (case for group in cases for case in group):
            use_tf32(dtype == "tf32")
            records.append(time_case(record, dense, sides, dtype))
            print(_row(record), flush=True)
            done(records)
    finally:
        torch.backends.cudnn.allow_tf32 = previous[0]
        torch.set_float32_matmul_precision(previous[1])
    return records


def main(argv=None) -> list[dict]:
    def add_part(parser):
        parser.add_argument(
            "--part",
            action="append",
            choices=PARTS,
            help="only these parts (default: all but headline, a subset of the others; --quick "
            "runs its own tiny cases)",
        )

    args, command = suite_arguments(
        argv,
        __doc__.splitlines()[0],
        "bench.gpu_suite",
        "tiny shapes (CI runs it without a GPU)",
        add_part,
    )
    env = environment(command)
    title = f"{env['device']}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}"
    print(f"{title}\n{HEADER}")
    device = env["device"].split(" (")[0].replace(" ", "-")
    suffix = "-quick" if args.quick else "".join(f"-{p}" for p in args.part or [])
    stem = args.out / f"gpu-{device}-{env['date']}{suffix}"

    def write(records):  # after every case: a run stopped at a time limit keeps what it measured
        write_results(stem, env, title, HEADER, list(map(_row, records)), records)

    records = run(args.quick, args.part or [p for p in PARTS if p != "headline"], done=write)
    write(records)
    return records


if __name__ == "__main__":
    main(sys.argv[1:])

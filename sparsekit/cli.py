"""Command line: ``python -m sparsekit compile | inspect | demo | plan``."""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import backends, masks, saving, spdy, timing, zoo
from .compiler import compile
from .errors import SparsekitError
from .planners import STRUCTURES
from .transforms import global_magnitude_masks, refill_masks


def demo(args) -> int:
    torch.manual_seed(args.seed)
    model = zoo.create(args.model).eval()
    shape = zoo.INPUT_SHAPES[args.model]
    x = torch.randn(args.batch, *shape)
    unstructured = global_magnitude_masks(model, args.sparsity)  # Structure-LTH's IMP step
    layer_masks = refill_masks(model, unstructured) if args.transform == "refill" else unstructured
    # BatchNorm statistics of the masked model, as retraining would leave them: without them the
    # masked random model's output would hardly depend on its input
    zoo.calibrate_batchnorm(model, [torch.randn(args.batch, *shape) for _ in range(2)], layer_masks)
    kept = lambda ms: sum(int(m.sum()) for m in ms.values()) / sum(m.numel() for m in ms.values())  # noqa: E731
    print(
        f"{args.model}: global L1 pruning of all convs but the first to "
        f"{1 - kept(unstructured):.1%} sparsity; after {args.transform}: "
        f"{1 - kept(layer_masks):.1%} sparsity"
        + (", whole output channels" if args.transform == "refill" else "")
        + "; BatchNorm statistics calibrated on random inputs under the masks"
    )
    compiled = compile(
        model, layer_masks, x, structure=args.structure, backend=args.backend, progress=True
    )
    print(compiled.sparsekit_report)
    if args.out:
        saving.save(compiled, args.out)
        print(f"saved to {args.out}")
    return 0


def compile_command(args) -> int:
    model = zoo.create(args.model).eval()
    if args.weights:
        model.load_state_dict(masks._load_file(args.weights))
    x = torch.randn(args.batch, *zoo.INPUT_SHAPES[args.model])
    compiled = compile(
        model, args.mask, x, structure=args.structure, backend=args.backend, progress=True
    )
    print(compiled.sparsekit_report)
    saving.save(compiled, args.out)
    print(f"saved to {args.out}")
    return 0


def inspect_command(args) -> int:
    meta = saving.read_meta(args.dir)
    dense = sum(c.get("backend") == "dense" for c in meta["layers"].values())
    print(
        f"{args.dir}: {len(meta['layers']) - dense} packed layers, {dense} run dense, folded "
        f"BatchNorms: {len(meta['folded_batchnorms'])}"
    )
    print(f"{'layer':<28}{'type':<14}{'backend':<10}{'structure':<10}{'blocks':>7}{'stored':>10}")
    for name, c in meta["layers"].items():
        sizes = c.get("sizes", {})
        print(
            f"{name:<28}{c['type']:<14}{c['backend']:<10}{c['structure']:<10}"
            f"{sizes.get('blocks', 0):>7}{sizes.get('values', 0):>10}"
        )
    report = meta.get("report")
    if report:
        speedup = f"{report['speedup']:.2f}x" if report.get("speedup") else "not measured"
        print(
            f"verified on {report['device']} ({report['dtype']}, inputs {report['input_shapes']}): "
            f"max error {report['max_error']:.2e}, {'ok' if report['ok'] else 'MISMATCH'}; "
            f"end-to-end speedup {speedup}"
        )
    return 0


def plan_command(args) -> int:
    torch.manual_seed(args.seed)
    model = zoo.create(args.model).eval()
    shape = zoo.INPUT_SHAPES[args.model]
    if args.weights:
        model.load_state_dict(masks._load_file(args.weights))
    else:
        # random weights: BatchNorm statistics as training would leave them, else the output
        # hardly varies
        zoo.calibrate_batchnorm(model, [torch.randn(args.batch, *shape) for _ in range(2)])
        print(f"{args.model}: random weights, BatchNorm statistics calibrated on random inputs")
    memory_format = timing.MEMORY_FORMATS[args.memory_format]
    model = model.to(memory_format=memory_format)
    x = torch.randn(args.batch, *shape).contiguous(memory_format=memory_format)
    calib = [
        torch.randn(args.batch, *shape).contiguous(memory_format=memory_format)
        for _ in range(args.calib)
    ]
    layer_masks, compiled, report = spdy.plan(
        model,
        x,
        args.speedup,
        calib,
        levels=spdy.geometric_levels(args.levels),
        structure=args.structure,
        backend=args.backend,
        transform=None if args.transform == "none" else args.transform,
        reconstruct=args.reconstruct,
        recalibrate_batchnorm=args.recalibrate_batchnorm,
        draws=args.draws,
        steps=args.steps,
        cache=args.cache,
        progress=True,
        seed=args.seed,
    )
    print(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in layer_masks.items()}, args.out / "masks.safetensors"
        )
        (args.out / "plan.json").write_text(json.dumps(report.to_dict(), indent=1))
        report.plot(args.out / "plan.png")
        saving.save(compiled, args.out / "compiled")
        print(f"masks, report (plan.json, plan.png) and the compiled model saved in {args.out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsekit")
    commands = parser.add_subparsers(dest="command", required=True)

    d = commands.add_parser(
        "demo", help="prune a zoo model, make it structural, compile, verify, report"
    )
    d.add_argument("--model", default="resnet18", choices=list(zoo.MODELS))
    d.add_argument("--sparsity", type=float, default=0.8)
    d.add_argument("--transform", default="refill", choices=["refill", "none"])
    d.add_argument("--structure", default="auto", choices=STRUCTURES)
    d.add_argument("--backend", default="auto", choices=backends.choices())
    d.add_argument("--batch", type=int, default=16)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", type=Path, help="also save the compiled model here")
    d.set_defaults(run=demo)

    c = commands.add_parser("compile", help="compile a zoo model with a mask file and save it")
    c.add_argument("model", choices=list(zoo.MODELS))
    c.add_argument("--mask", required=True, type=Path, help=".pt or .safetensors file of masks")
    c.add_argument("--weights", type=Path, help=".pt or .safetensors state_dict of the model")
    c.add_argument("--structure", default="auto", choices=STRUCTURES)
    c.add_argument("--backend", default="auto", choices=backends.choices())
    c.add_argument("--batch", type=int, default=16, help="batch of the example input")
    c.add_argument("--out", required=True, type=Path)
    c.set_defaults(run=compile_command)

    p = commands.add_parser(
        "plan", help="per-layer sparsity for a measured speedup target (SPDY), compiled"
    )
    p.add_argument("model", choices=list(zoo.MODELS))
    p.add_argument(
        "--speedup", required=True, type=float, help="end-to-end speedup target over dense"
    )
    p.add_argument(
        "--weights", type=Path, help=".pt or .safetensors state_dict (default: random weights)"
    )
    p.add_argument(
        "--batch", type=int, default=16, help="batch of the example and calibration inputs"
    )
    p.add_argument(
        "--calib", type=int, default=4, help="calibration batches (random inputs, KL to dense)"
    )
    p.add_argument(
        "--levels", type=int, default=len(spdy.DEFAULT_LEVELS), help="sparsity levels, 0 included"
    )
    p.add_argument("--structure", default="auto", choices=STRUCTURES)
    p.add_argument("--backend", default="auto", choices=backends.choices())
    p.add_argument("--transform", default="none", choices=["none", "refill", "regroup", "kernel"])
    p.add_argument("--reconstruct", action="store_true", help="refit kept weights by least squares")
    p.add_argument(
        "--recalibrate-batchnorm",
        action="store_true",
        help="re-estimate BatchNorm statistics of each pruned choice on the calibration inputs",
    )
    p.add_argument(
        "--memory-format",
        default="channels_last",
        choices=list(timing.MEMORY_FORMATS),
        help="of the model and its inputs (dense is timed in its faster one either way)",
    )
    p.add_argument("--draws", type=int, default=100)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--cache", type=Path, help="JSON file of timing tables to reuse")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, help="directory for masks, plan.json, plan.png and the compiled model"
    )
    p.set_defaults(run=plan_command)

    i = commands.add_parser("inspect", help="describe a saved compiled model")
    i.add_argument("dir", type=Path)
    i.set_defaults(run=inspect_command)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except SparsekitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Channel dataflow compaction, end to end: each model with refill masks (first conv and
classifier dense) compiled with compaction and without it, both timed against the dense model
(BatchNorm folded, in its faster memory format) in alternated rounds of the same run, beside
the mask's FLOP limit and the compacted one (dense MACs over those run).

    python -m bench.compaction [--quick] [--out bench/results]

writes ``compaction-<device>-<date>.json`` and ``.md``; ``--quick``: one small case, few runs.
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

import sparsekit
from sparsekit import timing, zoo

from .reproduce import environment, masks_for, paired_runs

# (model, batch) at the zoo's input size
CASES = [("vgg16_bn", 16), ("resnet18", 16), ("resnet50", 4)]
QUICK = [("resnet18", 2)]
SPARSITY = 0.8
RUNS, WARMUP = 15, 3


def run_case(name: str, batch: int, gen, runs: int, warmup: int) -> dict:
    shape = zoo.INPUT_SHAPES[name]
    model = zoo.create(name).eval()
    masks = masks_for(model, "refill", SPARSITY)
    zoo.calibrate_batchnorm(model, [torch.randn(8, *shape, generator=gen)], masks)
    x = torch.randn(batch, *shape, generator=gen)
    sides, reports = {}, {}
    for side, compact in (("compacted", True), ("uncompacted", False)):
        compiled = sparsekit.compile(model, masks, x, measure=False, compact_channels=compact)
        report = compiled.sparsekit_report
        if not (report.ok and report.discriminating):
            raise AssertionError(f"{name}: compile's check failed: {report}")
        run, fmt, _ = timing.in_faster_format(compiled, x)
        sides[side], reports[side] = run, (report, fmt)
    dense_model = sparsekit.compile(
        model, masks, x, backend="dense", measure=False, verify=False, compact_channels=False
    )
    sides["dense"], dense_format, _ = timing.in_faster_format(dense_model, x)
    times = paired_runs(sides, runs, warmup)
    report = reports["compacted"][0]
    record = {
        "model": name,
        "input": list(x.shape),
        "dtype": "float32",
        "transform": "refill",
        "sparsity": SPARSITY,
        "dense_format": dense_format,
        "mask_flop_limit": report.mask_flop_limit,
        "compacted_flop_limit": report.flop_limit,
        "max_error": report.max_error,
        "bound": report.bound,
        "stopped": report.compaction["stopped"],
        "runs": runs,
    }
    for side, (median, low, high) in times.items():
        record[f"{side}_ms"], record[f"{side}_quartiles_ms"] = median, [low, high]
    for side in ("compacted", "uncompacted"):
        record[f"{side}_format"] = reports[side][1]
        record[f"{side}_speedup"] = record["dense_ms"] / record[f"{side}_ms"]
    record["layers"] = [
        {
            "layer": layer.name,
            "in": layer.channels_in,
            "out": layer.channels_out,
            "structure": layer.structure,
            "flop_limit": layer.flop_limit,
            "mask_flop_limit": layer.mask_flop_limit,
        }
        for layer in report.layers
    ]
    return record


def markdown(records: list, env: dict) -> str:
    lines = [
        f"# Channel dataflow compaction: {env['device']}, {env['threads']} threads, "
        f"torch {env['torch']}, {env['date']}",
        "",
        f"`{env['command']}`: refill {SPARSITY:.0%} (first conv and classifier dense), fp32, "
        "dense with BatchNorm folded in its faster memory format, the three sides timed in "
        "alternated rounds of one run (median of the rounds).",
        "",
        "| model | input | dense ms | uncompacted ms (x) | compacted ms (x) | mask FLOP limit "
        "| compacted FLOP limit | max error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        lines.append(
            f"| {r['model']} | {r['input']} | {r['dense_ms']:.2f} ({r['dense_format']}) | "
            f"{r['uncompacted_ms']:.2f} ({r['uncompacted_speedup']:.2f}x) | "
            f"{r['compacted_ms']:.2f} ({r['compacted_speedup']:.2f}x) | "
            f"{r['mask_flop_limit']:.2f}x | {r['compacted_flop_limit']:.2f}x | "
            f"{r['max_error']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    command = "python -m bench.compaction" + (" --quick" if args.quick else "")
    env = environment(command, "cpu")
    gen = torch.Generator().manual_seed(0)
    runs, warmup = (3, 1) if args.quick else (RUNS, WARMUP)
    records = [run_case(n, b, gen, runs, warmup) for n, b in (QUICK if args.quick else CASES)]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"compaction-cpu-{datetime.date.today().isoformat()}" + ("-quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(
        json.dumps({"environment": env, "results": records}, indent=1)
    )
    (args.out / f"{stem}.md").write_text(markdown(records, env))
    print(markdown(records, env), file=sys.stdout)
    return records


if __name__ == "__main__":
    main()

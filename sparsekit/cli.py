"""Command line: ``python -m sparsekit demo``."""

import argparse
import sys

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

from . import ops, pack, unpack
from .structure import STRUCTURES

FP32_TOLERANCE = (1e-5, 1e-4)  # max error <= atol + rtol * max |reference|


def regrouped_mask(out: int, cols: int, parts: int, density: float, gen) -> torch.Tensor:
    """A Structure-LTH-like mask: ``parts`` row groups, each keeping its own column subset,
    plus a few scattered weights outside the blocks."""
    mask = torch.rand(out, cols, generator=gen) < density / 20
    rows = torch.randperm(out, generator=gen).view(parts, -1)
    for part in rows:
        mask[part[:, None], (torch.rand(cols, generator=gen) < density).nonzero().flatten()] = True
    return mask


def median_seconds(stmt: str, **names) -> float:
    """Median wall time of ``stmt`` on all of torch's threads (warm-up and repeats included)."""
    timer = Timer(stmt, globals=names, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=0.5).median


def demo(args) -> int:
    gen = torch.Generator().manual_seed(args.seed)
    cin, cout, k = args.channels, args.channels, 3
    weight = torch.randn(cout, cin, k, k, generator=gen)
    mask = regrouped_mask(cout, cin * k * k, 8, args.density, gen).view(weight.shape)
    x = torch.randn(args.batch, cin, args.size, args.size, generator=gen)
    reference = F.conv2d(x, weight * mask, None, 1, 1)
    bound = FP32_TOLERANCE[0] + FP32_TOLERANCE[1] * reference.abs().max().item()
    dense_s = median_seconds("F.conv2d(x, w, None, 1, 1)", F=F, x=x, w=weight * mask)
    print(
        f"layer: Conv2d {cin}->{cout} {k}x{k}, padding 1, input {tuple(x.shape)} fp32; the mask "
        f"keeps {mask.float().mean():.1%} of the weights, mostly in 8 row groups\n"
        f"dense F.conv2d: {dense_s * 1e3:.2f} ms (median, {torch.get_num_threads()} threads); "
        f"error bound {bound:.1e}\n"
    )
    print(
        f"{'structure':<10}{'blocks':>7}{'density':>9}{'flops':>7}{'est.cost':>9}"
        f"{'max err':>10}{'ms':>8}{'speedup':>9}"
    )
    ok = True
    for structure in STRUCTURES:
        packed = pack(weight, mask, structure=structure)
        ok &= torch.equal(unpack(packed), weight * mask)
        error = (ops.block_conv2d(x, packed, None, 1, 1) - reference).abs().max().item()
        ok &= error <= bound
        seconds = median_seconds("ops.block_conv2d(x, p, None, 1, 1)", ops=ops, x=x, p=packed)
        p = packed.summary()
        label = f"auto:{p['structure']}" if structure == "auto" else structure
        print(
            f"{label:<10}{p['blocks']:>7}{p['density']:>9.3f}{p['flops_ratio']:>7.3f}{p['cost']:>9.3f}"
            f"{error:>10.1e}{seconds * 1e3:>8.2f}{dense_s / seconds:>8.2f}x"
        )
    print(
        "\nest.cost: the planner's cost model, relative to dense; speedup: measured against dense "
        "F.conv2d in this run.\n" + ("all plans exact: round trip bit for bit, outputs within bound"
                                     if ok else "MISMATCH: a plan failed its check")
    )
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsekit")
    commands = parser.add_subparsers(dest="command", required=True)
    d = commands.add_parser("demo", help="pack a masked conv, check it, print the plans and timing")
    d.add_argument("--channels", type=int, default=256)
    d.add_argument("--size", type=int, default=8, help="input height and width")
    d.add_argument("--batch", type=int, default=32)
    d.add_argument("--density", type=float, default=0.2, help="kept fraction inside row groups")
    d.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return demo(args)


if __name__ == "__main__":
    sys.exit(main())

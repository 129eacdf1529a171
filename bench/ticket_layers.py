"""Per-layer CPU timing of Structure-LTH's regrouped ResNet-18 (CIFAR-10) ticket.

Each conv gets random weights under the ticket's own mask (its dense blocks, from
``tests/data``), is packed by the chosen planner and timed with ``block_conv2d`` against
``F.conv2d`` on the masked dense weight, on the same threads and input, in one run.

    python bench/ticket_layers.py [--batch 64] [--structure group] [--ticket PATH]
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import sparsekit
from sparsekit import timing

DEFAULT_TICKET = (
    Path(__file__).resolve().parents[1] / "tests/data/structure_lth_resnet18_cifar10_blocks.json"
)


def conv_geometry(name: str, kernel: int) -> tuple[int, int, int]:
    """(input size, stride, padding) of a CIFAR ResNet-18 conv from its name."""
    if name == "conv1":
        return 32, 1, 1
    stage = int(name[len("layer")])
    size = 32 >> (stage - 1)
    first_of_stage = (
        stage > 1 and name.startswith(f"layer{stage}.0.") and not name.endswith("conv2")
    )
    return (2 * size if first_of_stage else size), (2 if first_of_stage else 1), kernel // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--structure", default="group", choices=sparsekit.planners.STRUCTURES)
    parser.add_argument("--ticket", type=Path, default=DEFAULT_TICKET)
    args = parser.parse_args()
    layers = json.loads(args.ticket.read_text())["layers"]
    print(
        f"batch {args.batch}, fp32, {torch.get_num_threads()} threads, structure {args.structure}"
    )
    print(
        f"{'layer':<24}{'shape':<18}{'density':>8}{'blocks':>7}"
        f"{'dense ms':>10}{'sparse ms':>10}{'speedup':>8}"
    )
    total_dense = total_sparse = 0.0
    for name, layer in layers.items():
        out, cin, kh, kw = layer["weight_shape"]
        mask = torch.zeros(out, cin * kh * kw, dtype=torch.bool)
        for rows, cols in layer["blocks"]:
            if rows and cols:
                mask[torch.tensor(rows)[:, None], torch.tensor(cols)] = True
        weight = torch.randn(out, cin, kh, kw) * mask.view(out, cin, kh, kw)
        size, stride, padding = conv_geometry(name, kh)
        x = torch.randn(args.batch, cin, size, size)
        packed = sparsekit.pack(weight, structure=args.structure)
        dense, sparse = timing.paired_ms(
            {
                "dense": lambda: F.conv2d(x, weight, None, stride, padding),
                "sparse": lambda: sparsekit.ops.block_conv2d(x, packed, None, stride, padding),
            },
            min_run_time=0.3,
            rounds=1,
        ).values()
        total_dense, total_sparse = total_dense + dense, total_sparse + sparse
        print(
            f"{name:<24}{str((out, cin, kh, kw)):<18}{mask.float().mean():>8.2f}"
            f"{packed.num_blocks:>7}{dense:>10.2f}{sparse:>10.2f}{dense / sparse:>7.2f}x"
        )
    print(
        f"{'all convs':<58}{total_dense:>10.2f}{total_sparse:>10.2f}"
        f"{total_dense / total_sparse:>7.2f}x"
    )


if __name__ == "__main__":
    main()

"""The Structure-LTH loop end to end on a real data set that ships with scikit-learn (digits).

A small CNN is trained on the 8x8 digits; IMP rounds (global L1 over every conv but the first,
rewinding to the weights after the first epoch) are post-processed by IMP-Regroup and by
IMP-Refill; the final ticket of each is trained, compiled with sparsekit.compile and verified.
Printed: test accuracy per round next to the dense accuracy, the sparsity, and the measured CPU
speedup of the compiled model over the dense masked one.

    pip install scikit-learn   # the optional extra: pip install -e .[examples]
    python examples/structure_lth_digits.py [--rounds 3] [--rate 0.5] [--epochs 15]
"""

import argparse
import copy

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import sparsekit
from sparsekit.transforms import imp


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 64):
        super().__init__()
        widths = [1, width // 2, width, 2 * width, 2 * width]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(widths, widths[1:])
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(b) for b in widths[1:])
        self.fc = nn.Linear(widths[-1], 10)

    def forward(self, x):
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = F.relu(bn(conv(x)))
            if i == 1:
                x = F.max_pool2d(x, 2)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def digits(seed: int = 0):
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = order[:360], order[360:]
    return (x[train], y[train]), (x[test], y[test])


def accuracy(model, data) -> float:
    model.eval()
    with torch.no_grad():
        return (model(data[0]).argmax(1) == data[1]).float().mean().item()


def trainer(train, epochs: int, seed: int):
    def run(model):
        gen = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(train[1]), generator=gen).split(64):
                optimizer.zero_grad()
                F.cross_entropy(model(train[0][batch]), train[1][batch]).backward()
                optimizer.step()
        model.eval()

    return run


def sparsity(masks: dict) -> float:
    return 1 - sum(m.sum().item() for m in masks.values()) / sum(m.numel() for m in masks.values())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    train, test = digits(args.seed)
    train_fn = trainer(train, args.epochs, args.seed)

    init = DigitsCNN(args.width)
    trainer(train, 1, args.seed)(init)  # the rewind point: weights after one epoch
    rewind = copy.deepcopy(init.state_dict())
    dense = copy.deepcopy(init)
    train_fn(dense)
    dense_accuracy = accuracy(dense, test)
    print(f"dense: test accuracy {dense_accuracy:.4f}")

    results = {"dense_accuracy": dense_accuracy}
    for post in ("regroup", "refill"):
        model = copy.deepcopy(init)
        accuracies = []

        def train_and_score(m):
            train_fn(m)
            accuracies.append(accuracy(m, test))

        history = imp(
            model,
            train_and_score,
            rounds=args.rounds,
            rate=args.rate,
            post=post,
            rewind_state=rewind,
        )
        train_and_score(model)  # the final ticket, under the last round's masks
        print(f"IMP-{post.capitalize()}:")
        for r, masks in enumerate(history, 1):
            print(
                f"  round {r}: sparsity {sparsity(masks):.1%}, test accuracy after training "
                f"{accuracies[r]:.4f} (dense {dense_accuracy:.4f})"
            )
        compiled = sparsekit.compile(model.eval(), None, test[0])
        report = compiled.sparsekit_report
        agree = (compiled(test[0]).argmax(1) == model(test[0]).argmax(1)).float().mean().item()
        print(report)
        print(
            f"  compiled: {'exact' if report.ok else 'MISMATCH'} "
            f"(max error {report.max_error:.1e}), "
            f"same predictions on {agree:.1%} of the test set, measured CPU speedup "
            f"{report.speedup:.2f}x at batch {len(test[1])}"
        )
        results[post] = {
            "sparsity": sparsity(history[-1]),
            "accuracies": accuracies,
            "speedup": report.speedup,
            "ok": report.ok,
            "agree": agree,
        }
    return results


if __name__ == "__main__":
    main()

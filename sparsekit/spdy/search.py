"""SPDY's search over per-layer sensitivity coefficients.

A coefficient vector ``c`` makes the dynamic program's costs ``c_l * (i / (n - 1))**2`` (level
``i`` of ``n``); the program's choice under the time budget is scored by the calibration loss of
the stitched model. ``draws`` random vectors come first, then local search: from the best
vector, a number of coordinates falling from 10% of the layers to 1 is redrawn, and the new
vector kept when its choice scores lower.
"""

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..compiler.recording import as_input_tuple
from ..errors import SparsekitError
from .database import ErrorDatabase
from .program import DEFAULT_BUCKETS, solve


@dataclass
class Candidate:
    coefficients: list[float]
    choice: list[int]  # level index per layer
    seconds: float  # the choice's summed table time
    loss: float


def costs_of(coefficients, levels: int) -> torch.Tensor:
    """``[layers][levels]`` costs ``c_l * (i / (levels - 1))**2``."""
    steps = (torch.arange(levels, dtype=torch.float64) / (levels - 1)) ** 2
    return torch.as_tensor(coefficients, dtype=torch.float64)[:, None] * steps[None]


def kl_to_dense(output: torch.Tensor, dense_output: torch.Tensor) -> torch.Tensor:
    """KL(dense || stitched) of the two outputs' softmax over the last dimension, batch mean."""
    return F.kl_div(
        F.log_softmax(output.double(), -1),
        F.log_softmax(dense_output.double(), -1),
        log_target=True,
        reduction="batchmean",
    )


class Scorer:
    """The calibration loss of a choice of levels: the mean over ``batches`` of ``loss_fn(output
    of the stitched model, target)``. A batch is the model's input (a tensor: the target is the
    dense model's output, default loss ``kl_to_dense``) or ``(inputs, labels)`` (``inputs`` a
    tensor or tuple of them; the target is ``labels``, default loss cross-entropy, or with
    ``labels=None`` the dense model's output). Memoised per choice."""

    def __init__(self, database: ErrorDatabase, model, batches, loss_fn=None):
        self.database, self.memo = database, {}
        self.batches = []
        for batch in batches:
            if isinstance(batch, (tuple, list)):
                if len(batch) != 2:
                    raise SparsekitError(
                        "calib: a batch is an input tensor or a pair (inputs, labels)"
                    )
                inputs, labels = as_input_tuple(batch[0]), batch[1]
            else:
                inputs, labels = as_input_tuple(batch), None
            if labels is not None:
                self.batches.append((inputs, labels, loss_fn or F.cross_entropy))
                continue
            with torch.inference_mode():
                self.batches.append((inputs, model(*inputs), loss_fn or kl_to_dense))
        if not self.batches:
            raise SparsekitError("calib: at least one calibration batch is needed")

    def __call__(self, choice) -> float:
        key = tuple(choice)
        if key not in self.memo:
            model = self.database.stitched(choice)
            with torch.inference_mode():
                total = sum(
                    float(fn(model(*inputs), target)) for inputs, target, fn in self.batches
                )
            self.memo[key] = total / len(self.batches)
        return self.memo[key]


def search(
    times,
    score,
    budget: float,
    *,
    draws: int = 100,
    steps: int = 100,
    seed: int = 0,
    buckets: int = DEFAULT_BUCKETS,
    progress: bool = False,
) -> list[Candidate]:
    """Every candidate tried (``draws`` random coefficient vectors, then ``steps`` of local
    search), in order; the best is the one of least loss. ``times``: the ``[layers][levels]``
    table, ``score(choice) -> loss``, ``budget``: the summed time the layers may take."""
    if draws < 1 or steps < 0:
        raise SparsekitError(f"search: draws must be >= 1 and steps >= 0, got {draws}, {steps}")
    times = torch.as_tensor(times, dtype=torch.float64)
    layers, levels = times.shape
    rng = random.Random(seed)
    tried: list[Candidate] = []

    def attempt(coefficients) -> Candidate:
        choice = solve(times, costs_of(coefficients, levels), budget, buckets=buckets)
        seconds = float(sum(times[layer, level] for layer, level in enumerate(choice)))
        tried.append(Candidate(list(coefficients), choice, seconds, score(choice)))
        return tried[-1]

    with tqdm(
        total=draws + steps, desc="sparsekit.spdy search", unit="candidate", disable=not progress
    ) as bar:
        best = None
        for _ in range(draws):
            candidate = attempt([rng.random() for _ in range(layers)])
            best = candidate if best is None or candidate.loss < best.loss else best
            bar.update()
        most = max(1, math.ceil(0.1 * layers))
        for step in range(steps):
            count = max(1, round(most - (most - 1) * step / max(steps - 1, 1)))
            coefficients = list(best.coefficients)
            for layer in rng.sample(range(layers), count):
                coefficients[layer] = rng.random()
            candidate = attempt(coefficients)
            best = candidate if candidate.loss < best.loss else best
            bar.update()
    return tried

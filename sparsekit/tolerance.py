"""The one tolerance table: how far a sparse result may be from its dense reference.

A result ``actual`` matches ``expected`` when ``max |actual - expected| <= growth * (atol + rtol
* max |expected|)``, with ``(atol, rtol)`` by the precision the two were computed in: the dtype,
or ``"tf32"`` for float32 on a GPU while torch's float32 matmul precision allows TF32 (the
precision sparsekit's fp32 GPU kernels then use), and ``growth`` by the sums behind the result:
1 for one layer summing up to ``REFERENCE_REDUCTION`` products, more for bigger reductions and
for a model's output, which carries every layer's error.
compile() holds every candidate plan to it, verify() every layer and the model, and the tests and
bench suites import it rather than keep their own. Dense references are computed under
``matching_precision()``, so that a strict fp32 kernel is not compared with a cuDNN result that
used TF32.
"""

import math
from contextlib import contextmanager

import torch

TOLERANCES = {  # precision -> (atol, rtol)
    torch.float64: (1e-10, 1e-9),
    torch.float32: (1e-5, 1e-4),
    "tf32": (1e-4, 5e-3),
    torch.float16: (1e-3, 5e-3),
    torch.bfloat16: (1e-2, 3e-2),
}
# How the bound grows with the sums behind a value. A layer's output sums K products (its
# reduction: in_channels / groups * kh * kw for a conv, in_features for a linear), and two
# implementations that add them in different orders differ by the rounding errors of both. Those
# errors have random signs and add like a random walk: relative to the output they grow as
# sqrt(K) (the probabilistic bound of Higham and Mary, 2019), for cancelling and same-sign terms
# alike; the worst case, K * eps, is far from reached and would leave a bound too loose to fail.
# The table's values hold with a wide margin (errors of 1-6% of the bound on CPU, every dtype) up
# to the zoo's largest reduction, a 3x3 conv over 512 channels, on which the tests check them: the
# bound is the table's up to that size, and grows as sqrt(K / REFERENCE_REDUCTION) beyond it.
REFERENCE_REDUCTION = 3 * 3 * 512
# A model-level check means something only when the reference output changes with the input: its
# spread across the batch must exceed the bound this many times.
MIN_SPREAD = 100


def precision(expected: torch.Tensor):
    """The key of ``TOLERANCES`` for a result computed like ``expected`` (under
    ``matching_precision``)."""
    if (
        expected.dtype == torch.float32
        and expected.is_cuda
        and torch.get_float32_matmul_precision() != "highest"
    ):
        return "tf32"
    return expected.dtype if expected.dtype in TOLERANCES else torch.float32


@contextmanager
def matching_precision():
    """cuDNN's convolutions in the fp32 precision sparsekit's kernels use: TF32 off while torch's
    float32 matmul precision is "highest" (cuDNN's own switch defaults to TF32 on)."""
    previous = torch.backends.cudnn.allow_tf32  # only this flag: cudnn.flags() resets the others
    torch.backends.cudnn.allow_tf32 = previous and torch.get_float32_matmul_precision() != "highest"
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def reduction(weight_shape) -> int:
    """How many products a Conv2d ``[out, in / groups, kh, kw]`` or Linear ``[out, in]`` weight
    sums into each output."""
    return math.prod(weight_shape[1:])


def growth(reductions=()) -> float:
    """How many times the table's bound a result may be off by when it went through layers of
    these ``reductions`` (one per layer; none: 1).

    Each layer's rounding error grows as sqrt(K) (see ``REFERENCE_REDUCTION``); a model's output
    carries the errors of every layer the input went through, parallel branches included, and
    independent errors add in quadrature: sqrt(sum of max(K, K0) / K0) with K0 =
    ``REFERENCE_REDUCTION``, sqrt(depth) for layers of up to K0 terms. This assumes later layers
    pass an error on without amplifying it, as normalised networks roughly do. Adding the layers'
    bounds up linearly (the worst case) would loosen a 100-layer model's bound 100 times, beyond
    what a batch's spread can test (``MIN_SPREAD``).
    """
    terms = sum(max(k, REFERENCE_REDUCTION) for k in reductions) / REFERENCE_REDUCTION
    return math.sqrt(max(1.0, terms))


def bound(expected: torch.Tensor, key=None, *, reductions=()) -> float:
    """The largest max |error| accepted against ``expected`` (``key``: its precision, by default
    the one ``precision`` reads off it; ``reductions``: those of the layers behind it, see
    ``growth``: ``[reduction(weight_shape)]`` for one layer's output, every layer's for a
    model's; none, the table's bound as is)."""
    atol, rtol = TOLERANCES[precision(expected) if key is None else key]
    base = atol + rtol * expected.abs().max().item() if expected.numel() else atol
    return growth(reductions) * base


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| in fp64 (inf when the shapes differ)."""
    if actual.shape != expected.shape:
        return math.inf
    return (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0


def batch_spread(output: torch.Tensor) -> float | None:
    """How much a model's output changes across its batch: max |output[i] - output[0]| (None
    for a batch of one). Near 0 means every input gives the same output, and a comparison with
    it cannot tell a wrong kernel from a right one."""
    if output.dim() == 0 or output.shape[0] < 2:
        return None
    return (output.double() - output[:1].double()).abs().max().item()

"""The one tolerance table: how far a sparse result may be from its dense reference.

A result ``actual`` matches ``expected`` when ``max |actual - expected| <= atol + rtol * max
|expected|``, with ``(atol, rtol)`` by the precision the two were computed in: the dtype, or
``"tf32"`` for float32 on a GPU while torch's float32 matmul precision allows TF32 (the
precision sparsekit's fp32 GPU kernels then use). compile() holds every candidate plan to it,
verify() every layer and the model, and the tests and bench suites import it rather than keep
their own. Dense references are computed under ``matching_precision()``, so that a strict fp32
kernel is not compared with a cuDNN result that used TF32.
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


def bound(expected: torch.Tensor, key=None) -> float:
    """The largest max |error| accepted against ``expected`` (``key``: its precision, by default
    the one ``precision`` reads off it)."""
    atol, rtol = TOLERANCES[precision(expected) if key is None else key]
    return atol + rtol * expected.abs().max().item() if expected.numel() else atol


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

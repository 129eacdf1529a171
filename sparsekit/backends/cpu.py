"""Backend ``"cpu"``: the C++ kernels of ``sparsekit._C`` on CPU tensors (fp32, bf16, fp16 with
fp32 accumulation; register-blocked, AVX-512 / AVX2 clones chosen at load), on the layout
``sparsekit::prepack`` builds (one byte tensor: the exact-position kernel's panels or the
planes kernel's columns). Its cost model (``planners.cost``) was fitted to these kernels."""

import math
from contextlib import contextmanager

import torch

from ..errors import SparsekitError
from ..planners import Block, cost
from . import extension
from .base import Backend

MISSING = extension.missing_kernel("CPU")  # read once: the extension registers at import


class CpuBackend(Backend):
    name = "cpu"
    devices = ("cpu",)
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    auto_on = ("cpu",)
    op_prefix = ""  # the extension's own ops

    def unavailable(self, device):
        return super().unavailable(device) or MISSING

    def prepack(self, packed):
        return extension.prepack(packed)

    def cost(self, packed):
        blocks = [Block(rows.cpu(), cols.cpu()) for rows, cols, _ in packed.blocks()]
        return cost.plan_cost(blocks) / cost.dense_cost(
            packed.out_features, math.prod(packed.weight_shape[1:])
        )


BACKEND = CpuBackend()


@contextmanager
def phase_profile():
    """Profiles the C++ CPU kernels' calls made inside the block; yields a dict that is filled on
    exit with their totals: ``calls``, and ``tap_calls`` of them on the exact-position kernel
    (packs of many-row blocks; the others ran on the planes kernel), ``pair_calls`` of those
    multiplying bf16 column pairs (AVX512-BF16), ``window_calls`` of the planes kernel's reading
    tap-row windows (kernel masks, batches of 16 and more, x86-64-v4); ``pack_s`` and ``tiles_s``,
    the wall time of the call's set-up and input copy (planes, or padded rows) and of the
    tiles; ``micro_s`` and ``store_s``, the tiles' time summed over threads, split between the
    register-blocked passes and the rest (position tables, bias, ReLU, output writes);
    ``grid_positions``, the output positions computed (for the planes kernel the padding between
    rows and images included)."""
    if MISSING:
        raise SparsekitError(f"phase_profile: {MISSING}")
    totals = {}
    extension._C.phase_profile(True)
    try:
        yield totals
    finally:
        totals.update(extension._C.phase_profile(False))

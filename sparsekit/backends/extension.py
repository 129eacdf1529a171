"""The C++ extension ``sparsekit._C``: its ops are the unprefixed ``sparsekit::prepack`` /
``block_conv2d`` / ``block_linear``, with a kernel per dispatch key it registers (CPU; CUDA in a
CUDA build). ``prepack`` checks a pack's index against its layer and builds the kernels' layout
of it for the pack's device (the CPU kernels': one byte tensor; the CUDA kernel's: its tile
tables). The schemas are defined here, before the library loads, so that the dispatcher checks
each C++ kernel's signature against them as it registers."""

import torch

from . import schema
from .base import Layout, pack_geometry

# the pack's tensors and its layer's geometry -> the layout's tensors and ints
torch.library.define(
    "sparsekit::prepack",
    "(Tensor values, Tensor row_idx, Tensor col_idx, Tensor block_ptr, int out_channels, "
    "int in_channels, int[2] kernel_size, int groups) -> (Tensor[], int[])",
)
schema.define_ops("")  # no Python implementation: the extension registers its kernels

try:
    from .. import _C  # registers the kernels

    ERROR = None
except ImportError as error:  # a source checkout that was not built
    _C = None
    ERROR = error

OPS = ("prepack", *schema.SCHEMAS)


def missing_kernel(dispatch_key: str) -> str | None:
    """Why the extension has no ``dispatch_key`` kernel for every op (None: it has them)."""
    if ERROR is not None:
        return (
            f"needs the C++ extension sparsekit._C, which is not built ({ERROR}); install "
            "with `pip install --no-build-isolation -e .`"
        )
    for op in OPS:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsekit::{op}", dispatch_key):
            return f"the C++ extension was built without {dispatch_key} kernels"
    return None


def prepack(packed) -> Layout:
    """The extension's layout of ``packed`` for its device (SparsekitError-free: ``packed`` is
    checked; the C++ check raises ValueError on a malformed index)."""
    tensors, ints = torch.ops.sparsekit.prepack(
        packed.values, packed.row_idx, packed.col_idx, packed.block_ptr, *pack_geometry(packed)
    )
    return Layout(tuple(tensors), tuple(ints))

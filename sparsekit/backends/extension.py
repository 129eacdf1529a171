"""The C++ extension ``sparsekit._C``: its ops are the unprefixed ``sparsekit::block_conv2d`` /
``block_linear``, with a kernel per dispatch key it registers (CPU; CUDA in a CUDA build). The schemas are defined here, before the library loads, so that the
dispatcher checks each C++ kernel's signature against them as it registers."""

import torch

from . import schema

schema.define_ops("")  # no Python implementation: the extension registers its kernels

try:
    from .. import _C  # registers the kernels

    ERROR = None
except ImportError as error:  # a source checkout that was not built
    _C = None
    ERROR = error


def missing_kernel(dispatch_key: str) -> str | None:
    """Why the extension has no ``dispatch_key`` kernel for every op (None: it has them)."""
    if ERROR is not None:
        return (f"needs the C++ extension sparsekit._C, which is not built ({ERROR}); install "
                "with `pip install --no-build-isolation -e .`")
    for op in schema.SCHEMAS:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsekit::{op}", dispatch_key):
            return f"the C++ extension was built without {dispatch_key} kernels"
    return None

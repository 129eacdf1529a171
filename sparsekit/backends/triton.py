"""Backend ``"triton"``: the implicit-GEMM Triton kernels of ``sparsekit.triton_kernels`` on
CUDA tensors (fp32 strict unless torch's matmul precision allows TF32, bf16, fp16), and on CPU
tensors under ``TRITON_INTERPRET=1`` (tests). ``auto`` picks it on CUDA, where it has passed its
tests (an H200, torch 2.11, Triton 3.6)."""

import torch

from . import schema
from .base import Backend, Layout, pack_geometry

try:
    from ..triton_kernels import block_conv as kernels

    ERROR = None
except ImportError as error:  # no triton installed
    kernels, ERROR = None, error

if kernels is not None:
    schema.define_ops(
        "triton_", {"block_conv2d": kernels.block_conv2d, "block_linear": kernels.block_linear}
    )


class TritonBackend(Backend):
    """Its layout is ``triton_kernels.row_tiles``: row tiles with the K-tiles of every block
    that touches them, and the layer geometry it serves."""

    name = "triton"
    devices = ("cuda",)
    auto_on = ("cuda",)
    graph_safe = True
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    op_prefix = "triton_"

    def unavailable(self, device):
        if ERROR is not None:
            return f"needs triton ({ERROR}): pip install triton (or sparsekit[triton])"
        if device.type == "cpu" and kernels.INTERPRETED:
            return None
        if device.type != "cuda":
            return (
                f"runs on CUDA tensors (on CPU ones only under TRITON_INTERPRET=1), not on "
                f"{device.type} ones"
            )
        return None

    def prepack(self, packed):
        out_channels, in_channels, kernel_size, groups = pack_geometry(packed)
        tensors, ints = kernels.layout(
            packed.values,
            packed.row_idx,
            packed.col_idx,
            packed.block_ptr,
            out_channels,
            in_channels,
            kernel_size,
            groups,
        )
        return Layout(tensors, ints)


BACKEND = TritonBackend()

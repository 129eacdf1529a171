"""Backend ``"cuda"``: the C++ extension's CUDA kernel (``csrc/cuda``) on CUDA tensors: a gathered
implicit GEMM on CuTe, bf16 and fp16 on tensor cores and fp32 in strict fp32 FMAs, fp32
accumulation, over the tile layout ``sparsekit::prepack`` builds from the pack (on the host, once
per layer, then copied to the device). It has not run on a GPU yet, so ``auto`` never picks it and
the bench suites do not time it: it runs only when asked for by name, in a CUDA build of the
extension."""

import torch

from . import extension
from .base import Backend

MISSING = extension.missing_kernel("CUDA")  # read once: the extension registers at import


class CudaBackend(Backend):
    name = "cuda"
    devices = ("cuda",)
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    benchmarked = False  # until it has passed its tests on a GPU
    graph_safe = True  # its glue launches on the current stream and reads nothing on the host
    op_prefix = ""  # the extension's own ops, whose CUDA kernels it registers

    def unavailable(self, device):
        return super().unavailable(device) or MISSING

    def prepack(self, packed):
        return extension.prepack(packed)


BACKEND = CudaBackend()

"""Backend ``"cuda"``: the C++ extension's CUDA kernels (``csrc/cuda``) on CUDA tensors, fp32,
bf16 and fp16 with fp32 accumulation. Today that is the direct reference kernel (one thread per
output element); the tensor-core kernels are still to be written. It has not run on a GPU yet,
so ``auto`` never picks it and the bench suites do not time it: it runs only when asked for by
name, in a CUDA build of the extension."""

import torch

from . import extension
from .base import Backend

MISSING = extension.missing_kernel("CUDA")  # read once: the extension registers at import


class CudaBackend(Backend):
    name = "cuda"
    devices = ("cuda",)
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    benchmarked = False  # the direct reference kernel: slow by design
    op_prefix = ""  # the extension's own ops, whose CUDA kernels it registers

    def unavailable(self, device):
        return super().unavailable(device) or MISSING


BACKEND = CudaBackend()

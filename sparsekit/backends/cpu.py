"""Backend ``"cpu"``: the C++ kernels of ``sparsekit._C`` on CPU tensors (fp32, bf16, fp16 with
fp32 accumulation; register-blocked, AVX-512 / AVX2 clones chosen at load)."""

import torch

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


BACKEND = CpuBackend()

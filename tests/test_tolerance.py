"""The dense references' precision follows the kernels': TF32 off for cuDNN while torch's
float32 matmul precision is "highest" (strict fp32 kernels), left as it was otherwise."""

import pytest
import torch

from sparsekit import tolerance


@pytest.mark.parametrize("matmul, cudnn_tf32", [("highest", False), ("high", True)])
def test_references_use_the_kernels_fp32_precision(matmul, cudnn_tf32):
    previous = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = True  # torch's default
        with tolerance.matching_precision():
            assert torch.backends.cudnn.allow_tf32 is cudnn_tf32
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.set_float32_matmul_precision(previous[0])
        torch.backends.cudnn.allow_tf32 = previous[1]

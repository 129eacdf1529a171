"""The ``cuda`` backend (the extension's CUDA kernels) against fp64 dense, on a GPU with a CUDA
build of the extension; skipped elsewhere. ``tests/test_cuda_build.py`` checks the build itself
on every machine with nvcc."""

import pytest
import torch

from sparsekit import backends, ops, pack

from .helpers import assert_matches, expected_conv, expected_linear, packed_conv

CUDA = torch.device("cuda")
PROBLEM = backends.get("cuda").problem(CUDA, torch.float32)
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"cuda backend: {PROBLEM}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", [  # (cout, cin, kernel, groups, stride, padding, dilation)
    (24, 16, (3, 3), 1, 1, 1, 1),
    (12, 6, (3, 3), 2, 2, 2, 2),
    (8, 8, (1, 1), 8, 1, 0, 1),
])
def test_block_conv2d_matches_dense(case, channels_last, dtype):
    cout, cin, kernel, groups, stride, padding, dilation = case
    gen = torch.Generator().manual_seed(0)
    packed = packed_conv(cout, cin, kernel, groups, dtype, gen=gen).to(CUDA)
    x = torch.randn(3, cin, 9, 7, generator=gen).to(CUDA, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    bias = torch.randn(cout, generator=gen).to(CUDA, dtype)
    y = ops.block_conv2d(x, packed, bias, stride, padding, dilation, relu=True, backend="cuda")
    assert_matches(y, expected_conv(x, packed, bias, stride, padding, dilation, True), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_linear_matches_dense(dtype):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 24, generator=gen).to(dtype)
    packed = pack(weight, torch.rand(40, 24, generator=gen) < 0.4).to(CUDA)
    x = torch.randn(5, 2, 24, generator=gen).to(CUDA, dtype)
    y = ops.block_linear(x, packed, None, backend="cuda")
    assert_matches(y, expected_linear(x, packed, None, False), dtype)

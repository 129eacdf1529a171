"""The ``cuda`` backend (the extension's tensor-core tile kernel) against fp64 dense, on a GPU with
a CUDA build of the extension; skipped elsewhere. ``tests/test_cuda_build.py`` checks the build
itself on every machine with nvcc, ``tests/cpp/test_tile_conv.cpp`` the host part of the kernel
(layout, grid, thread shares, indexing) on the CPU."""

import pytest
import torch

from sparsekit import backends, ops, pack

from .helpers import assert_matches, expected_conv, expected_linear, packed_conv

CUDA = torch.device("cuda")
PROBLEM = backends.get("cuda").problem(CUDA, torch.float32)
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"cuda backend: {PROBLEM}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    "case",
    [
        # (cout, cin, kernel, groups, stride, padding, dilation, structure, batch)
        (24, 16, (3, 3), 1, 1, 1, 1, "auto", 3),
        (12, 6, (3, 3), 2, 2, 2, 2, "auto", 3),
        (8, 8, (1, 1), 8, 1, 0, 1, "auto", 3),
        # whole channels (16-byte gathers), three row tiles, several position tiles per row tile
        (130, 64, (3, 3), 1, 1, 1, 1, "channel", 5),
        (96, 48, (3, 3), 1, 2, 1, 1, "kernel", 4),
    ],
)
def test_block_conv2d_matches_dense(case, channels_last, dtype):
    cout, cin, kernel, groups, stride, padding, dilation, structure, batch = case
    gen = torch.Generator().manual_seed(0)
    packed = packed_conv(cout, cin, kernel, groups, dtype, structure, gen=gen).to(CUDA)
    x = torch.randn(batch, cin, 9, 7, generator=gen).to(CUDA, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    bias = torch.randn(cout, generator=gen).to(CUDA, dtype)
    y = ops.block_conv2d(x, packed, bias, stride, padding, dilation, relu=True, backend="cuda")
    assert_matches(y, expected_conv(x, packed, bias, stride, padding, dilation, True), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(40, 24, (5, 2)), (200, 256, (300,))])  # (out, in, batch)
def test_block_linear_matches_dense(shape, dtype):
    out_features, in_features, batch = shape
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=gen).to(dtype)
    packed = pack(weight, torch.rand(out_features, in_features, generator=gen) < 0.4).to(CUDA)
    x = torch.randn(*batch, in_features, generator=gen).to(CUDA, dtype)
    y = ops.block_linear(x, packed, None, backend="cuda")
    assert_matches(y, expected_linear(x, packed, None, False), dtype)

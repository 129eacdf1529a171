"""What a CUDA graph (``torch.cuda.CUDAGraph``, or ``torch.compile(mode="reduce-overhead")``) needs
of the ops: that they never wait on the host. On any machine: the Python implementations of
the backends marked ``graph_safe`` read no tensor on the host (the check is shown to catch the
reference backend, which does), and the CUDA glue calls nothing that synchronises. On a GPU: a
layer and a compiled model replayed from a graph equal their eager calls bit for bit.
"""

import pathlib
import re

import pytest
import torch
from torch.overrides import TorchFunctionMode

import sparsekit
from sparsekit import backends, timing, zoo
from sparsekit.backends import schema
from sparsekit.nn import SparseConv2d, SparseLinear

from .helpers import calibrated_zoo_model, packed_conv

GPU = torch.cuda.is_available()
CSRC = pathlib.Path(__file__).parents[1] / "csrc"
# Tensor methods and torch functions that read a tensor's data on the host: on a CUDA tensor each
# waits for the device, which a graph capture refuses
HOST_READS = {
    "item",
    "tolist",
    "cpu",
    "numpy",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "nonzero",
    "masked_select",
    "bincount",
    "unique",
    "unique_consecutive",
    "equal",
    "any",
    "all",
}
# these read the host only in some forms: indexing by a bool mask (an implicit nonzero), a copy to
# the CPU, repeat_interleave without output_size
SOMETIMES = {
    "__getitem__": lambda args, kwargs: any(
        isinstance(a, torch.Tensor) and a.dtype == torch.bool
        for a in (args[1] if isinstance(args[1], tuple) else (args[1],))
    ),
    "to": lambda args, kwargs: any(str(a) == "cpu" for a in (*args[1:], kwargs.get("device"))),
    "repeat_interleave": lambda args, kwargs: "output_size" not in kwargs,
}


class HostReads(TorchFunctionMode):
    """Records the host reads (``HOST_READS``) made inside it."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        kwargs = kwargs or {}
        if name in HOST_READS and not (name in ("any", "all") and not args):
            self.seen.append(name)
        elif name in SOMETIMES and SOMETIMES[name](args, kwargs):
            self.seen.append(name)
        return func(*args, **kwargs)


def python_backends():
    """(backend, its conv op's Python implementation) of the backends whose ops are Python and
    run on this machine's CPU."""
    found = []
    for backend in backends.REGISTRY.values():
        impl = schema.PYTHON_IMPLS.get(f"sparsekit::{backend.op_prefix}block_conv2d")
        if impl is not None and backend.problem(torch.device("cpu"), torch.float32) is None:
            found.append(pytest.param(backend, impl, id=backend.name))
    return found


@pytest.mark.parametrize(("backend", "impl"), python_backends())
def test_graph_safe_python_ops_read_nothing_on_the_host(backend, impl, monkeypatch):
    if backend.name == "triton":  # its host code up to the launch: the interpreter's launch reads
        # tensors on the host, as the real one on a GPU does not
        from sparsekit.triton_kernels import block_conv

        monkeypatch.setattr(block_conv, "_launch", lambda *args: None)
    gen = torch.Generator().manual_seed(0)
    packed = packed_conv(8, 4, (3, 3), 1, torch.float32, kind="kernel", density=0.5, gen=gen)
    layout = backend.prepack(packed.check())  # host reads here are allowed: once per layer
    x = torch.randn(2, 4, 6, 6, generator=gen)
    args = (list(layout.tensors), list(layout.ints), 8, [3, 3], [1, 1], [1, 1], [1, 1], 1)
    with torch.no_grad(), HostReads() as reads:
        impl(x, *args, torch.randn(8), True)
    if backend.graph_safe:
        assert reads.seen == [], f"backend {backend.name!r} reads {reads.seen} on the host"
    else:  # the check can fail: the reference backend reads its block index on the host
        assert reads.seen, f"backend {backend.name!r} is not marked graph_safe but reads nothing"


def test_the_cuda_glue_calls_nothing_that_synchronises():
    sources = sorted((CSRC / "cuda").rglob("*.c*")) + [CSRC / "cpu" / "block_ops.cpp"]
    assert len(sources) >= 3
    syncing = re.compile(
        r"\.item\b|\.cpu\(\)|\.to\(\s*(at::)?kCPU|Synchronize|cudaMemcpy\(|cudaMalloc\(|cudaFree\("
    )
    found = {p.name: syncing.findall(p.read_text()) for p in sources}
    assert not any(found.values()), found


gpu_only = pytest.mark.skipif(not GPU, reason="CUDA graphs need a GPU")


def replayed(fn, x):
    """``fn`` captured into a CUDA graph on a static copy of ``x``, then replayed on ``x``'s
    values (after a replay on other values: what the capture ran on is overwritten)."""
    static = x.clone()
    graph, out = timing.captured(fn, static)
    static.copy_(torch.randn_like(x))
    graph.replay()
    static.copy_(x)
    graph.replay()
    return out


@gpu_only
@pytest.mark.parametrize(
    "backend",
    [b.name for b in backends.REGISTRY.values() if b.graph_safe and "cuda" in b.devices],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_a_layer_replayed_from_a_cuda_graph_equals_its_eager_call(backend, dtype):
    if backends.get(backend).problem(torch.device("cuda"), dtype) is not None:
        pytest.skip(backends.get(backend).problem(torch.device("cuda"), dtype))
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 32, 3, 3, generator=gen)
    weight[:, 16:] = 0
    conv = SparseConv2d.from_weight(
        weight.to("cuda", dtype), padding=1, relu=True, backend=backend, structure="channel"
    )
    linear = SparseLinear.from_weight(
        weight.flatten(1).to("cuda", dtype), backend=backend, structure="channel"
    )
    x = torch.randn(4, 32, 8, 8, generator=gen).to("cuda", dtype)
    rows = torch.randn(16, 288, generator=gen).to("cuda", dtype)
    with torch.inference_mode():
        assert torch.equal(replayed(conv, x), conv(x))
        assert torch.equal(replayed(linear, rows), linear(rows))


@gpu_only
def test_a_compiled_model_replays_from_a_cuda_graph_and_under_reduce_overhead():
    torch.manual_seed(0)
    model, masks = calibrated_zoo_model("resnet18")
    x = torch.randn(8, *zoo.INPUT_SHAPES["resnet18"])
    compiled = sparsekit.compile(model.cuda(), masks, x.cuda(), measure=False)
    x = x.cuda()
    with torch.inference_mode():
        eager = compiled(x)
        assert torch.equal(replayed(compiled, x), eager)
        reduced = torch.compile(compiled, mode="reduce-overhead", fullgraph=True)
        for _ in range(3):  # recorded on the first calls, replayed from then on
            out = reduced(x)
        torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)


def test_the_host_read_check_sees_the_reads_hidden_in_indexing_and_copies():
    x = torch.randn(4)
    with HostReads() as reads:
        x[x > 0], x.to("cpu"), x.to(torch.float64), x[1:], x.repeat_interleave(2)
        x.repeat_interleave(torch.tensor([1, 2, 1, 1]), output_size=5)
    assert reads.seen == ["__getitem__", "to", "repeat_interleave"]

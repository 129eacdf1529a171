"""The modules that move channels in a compacted network (see ``compiler.compaction``).

A compacted tensor holds some of the channels (dim 1) of the tensor the dense model computes,
in increasing order; every other channel the network still reads is a constant known at compile
time. These modules join, widen and correct such tensors; index tensors are derived from the
saved channel plan (non-persistent), values are state (saved with the model).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .geometry import is_channels_last, output_memory_format


def _per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` ([C]) shaped to broadcast along dim 1 of ``like``."""
    return values.view(1, -1, *([1] * (like.dim() - 2)))


def _pixel_rows(x: torch.Tensor) -> torch.Tensor | None:
    """The ``[pixels, channels]`` rows of a channels_last 4-d tensor (a view of its memory), else
    None. torch's index ops along dim 1 walk a channels_last tensor one strided channel at a
    time: on these rows ``index_add_`` runs 20x, ``index_select`` 2x faster (16x64x32x32, CPU)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) if is_channels_last(x) else None


def _index_select(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x.index_select(1, index)``, channels_last in, channels_last out."""
    rows = _pixel_rows(x)
    if rows is None:
        return x.index_select(1, index)
    n, _, h, w = x.shape
    return rows.index_select(1, index).view(n, h, w, len(index)).permute(0, 3, 1, 2)


def _index_add(out: torch.Tensor, index: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``out.index_add_(1, index, source)``."""
    rows = _pixel_rows(out)
    if rows is None:
        return out.index_add_(1, index, source)
    rows.index_add_(1, index, source.permute(0, 2, 3, 1).reshape(-1, source.shape[1]))
    return out


def _empty_like_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """An uninitialised tensor of ``x``'s shape with ``channels`` channels, in its memory format."""
    shape = (x.shape[0], channels, *x.shape[2:])
    if x.dim() == 4:
        return torch.empty(
            shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x)
        )
    return x.new_empty(shape)


class ChannelMap(nn.Module):
    """Builds a tensor of ``len(source)`` channels from a compacted one: channel ``k`` is the
    input's channel ``source[k]``, or the constant ``fill[k]`` where ``source[k]`` is -1. It gives
    full-width inputs to ops the compaction does not understand, the graph's outputs, and a
    depthwise conv the channels its kept rows read."""

    def __init__(self, source: torch.Tensor, fill: torch.Tensor):
        super().__init__()
        source = source.to(torch.long)
        kept = source >= 0
        self.register_buffer("fill", fill.clone())
        self.register_buffer("source", source[kept], persistent=False)
        self.register_buffer("target", kept.nonzero().flatten(), persistent=False)
        self.width = len(source)
        self.gather_only = bool(kept.all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gather_only:
            return _index_select(x, self.source)
        out = _empty_like_channels(x, self.width)
        out.copy_(_per_channel(self.fill, out).expand_as(out))
        return out.index_copy_(1, self.target, _index_select(x, self.source))

    def extra_repr(self) -> str:
        return f"width={self.width}, from_input={len(self.source)}"


class ChannelAdd(nn.Module):
    """``a + b`` of two compacted tensors, over the channels of either (in increasing order).

    ``a_channels`` / ``b_channels``: where each operand's used channels go in the output;
    ``a_select`` / ``b_select``: which of its channels it uses (None: all, in order); ``constant``:
    per output channel, what the operands that do not hold it add (their known constants). A
    narrow operand adds into the other by index (``index_add``): no full-width tensor is built.
    Per channel the sum is the dense model's ``a + b`` (adding a zero changes nothing)."""

    def __init__(self, a_channels, b_channels, a_select, b_select, constant: torch.Tensor):
        super().__init__()
        width = len(constant)
        self.register_buffer("constant", constant.clone())
        for name, index in {
            "a_channels": a_channels,
            "b_channels": b_channels,
            "a_select": a_select,
            "b_select": b_select,
        }.items():
            self.register_buffer(
                name, None if index is None else index.to(torch.long), persistent=False
            )
        self.width = width
        self.a_covers = bool(torch.equal(self.a_channels, torch.arange(width)))
        self.b_covers = bool(torch.equal(self.b_channels, torch.arange(width)))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.a_select is not None:
            a = _index_select(a, self.a_select)
        if self.b_select is not None:
            b = _index_select(b, self.b_select)
        if self.a_covers and self.b_covers:  # both hold every channel: no constant remains
            return a + b
        if self.a_covers:
            return _index_add(a + _per_channel(self.constant, a), self.b_channels, b)
        if self.b_covers:
            return _index_add(b + _per_channel(self.constant, b), self.a_channels, a)
        out = _empty_like_channels(a, self.width)
        out.copy_(_per_channel(self.constant, out).expand_as(out))
        return _index_add(_index_add(out, self.a_channels, a), self.b_channels, b)

    def extra_repr(self) -> str:
        return f"width={self.width}, a={len(self.a_channels)}, b={len(self.b_channels)}"


class ConstantBorder(nn.Module):
    """Adds to a narrow conv's output what its constant input channels contribute, which zero
    padding makes differ at the borders: ``weight`` ([out, 1, kh, kw]) is their kernels summed
    with their values, convolved with an image of ones the size of the input (one channel, batch
    one: per call, so any input size is exact)."""

    def __init__(self, weight: torch.Tensor, stride, padding, dilation):
        super().__init__()
        self.register_buffer("weight", weight.clone())
        self.stride, self.padding, self.dilation = stride, padding, dilation

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ones = x.new_ones((1, 1, *x.shape[2:]))
        border = F.conv2d(ones, self.weight, None, self.stride, self.padding, self.dilation)
        return y.add_(border)  # y is the conv's own fresh output

    def extra_repr(self) -> str:
        return f"out={self.weight.shape[0]}, stride={self.stride}, padding={self.padding}"

"""Ops: the functional Python entry to every sparsekit op, with argument checks and backend
dispatch.

``torch.ops.sparsekit.<prefix>block_conv2d`` / ``block_linear`` take a backend's layout of a
pack (``Backend.prepack``); the functions here take the ``PackedWeight`` itself, check the
arguments (raising ``SparsekitError``), pick the backend through the registry
(``sparsekit.backends``: ``"auto"`` or a backend's name), build its layout and run its op. They
build the layout on every call, so they are for eager use: a layer (``sparsekit.nn``) builds it
once and calls the op directly, which is what torch.compile and torch.export trace.
"""

import torch

from . import backends
from .errors import SparsekitError
from .formats import PackedWeight
from .geometry import conv_output_size


def pair(value, name: str, minimum: int = 0) -> tuple[int, int]:
    """``value`` (an int or two ints, each >= ``minimum``) as a pair; ``name`` labels errors."""
    values = (value, value) if isinstance(value, int) else tuple(value)
    if len(values) != 2 or not all(isinstance(v, int) and v >= minimum for v in values):
        raise SparsekitError(f"{name}: expected an int or two ints >= {minimum}, got {value!r}")
    return values


def _check_args(input, weight, bias, backend: str, op: str):
    """Checks shared by both ops; returns the backend to run."""
    if not isinstance(input, torch.Tensor):
        raise SparsekitError(f"{op}: input must be a tensor, got {type(input).__name__}")
    if not isinstance(weight, PackedWeight):
        raise SparsekitError(f"{op}: weight must be a PackedWeight, got {type(weight).__name__}")
    is_conv = len(weight.kernel_size) == 2
    if is_conv != (op == "block_conv2d"):
        other = "block_conv2d" if is_conv else "block_linear"
        raise SparsekitError(f"{op}: weight of shape {weight.weight_shape} belongs to {other}")
    if input.dtype != weight.dtype:
        raise SparsekitError(
            f"{op}: input dtype {input.dtype} differs from the weight's {weight.dtype}"
        )
    if input.device != weight.device:
        raise SparsekitError(f"{op}: input is on {input.device}, the weight on {weight.device}")
    if bias is not None and (
        not isinstance(bias, torch.Tensor)
        or bias.shape != (weight.out_features,)
        or bias.dtype != input.dtype
        or bias.device != input.device
    ):
        raise SparsekitError(
            f"{op}: bias must be a [{weight.out_features}] tensor of the input's dtype and device"
        )
    weight.check(f"{op}: weight")
    try:
        return backends.resolve(backend, input.device, input.dtype, weight)
    except SparsekitError as error:
        raise SparsekitError(f"{op}: {error}") from None


def supports(weight: PackedWeight, backend: str) -> bool:
    """Whether ``backend`` can run ``weight`` at all (devices and dtypes aside)."""
    return backends.get(backend).supports(weight)


def _conv_geometry(input, weight: PackedWeight, stride, padding, dilation):
    """Checked (stride, padding, dilation) pairs and the output's (OH, OW)."""
    stride = pair(stride, "block_conv2d: stride", 1)
    padding = pair(padding, "block_conv2d: padding", 0)
    dilation = pair(dilation, "block_conv2d: dilation", 1)
    if input.dim() != 4 or input.shape[1] != weight.in_features:
        raise SparsekitError(
            f"block_conv2d: input shape {tuple(input.shape)} is not [N, {weight.in_features}, H, W]"
        )
    size = tuple(
        conv_output_size(
            input.shape[2 + i], weight.kernel_size[i], stride[i], padding[i], dilation[i]
        )
        for i in range(2)
    )
    if min(size) < 1:
        raise SparsekitError(
            f"block_conv2d: input {tuple(input.shape)} is smaller than the dilated kernel"
        )
    return stride, padding, dilation, size


def block_conv2d(
    input: torch.Tensor,
    weight: PackedWeight,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    relu: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """``F.conv2d(input, unpack(weight), bias, stride, padding, dilation, weight.groups)``
    (then ReLU if ``relu``) computed over the packed blocks only, in the input's memory format
    (channels_last stays channels_last)."""
    chosen = _check_args(input, weight, bias, backend, "block_conv2d")
    stride, padding, dilation, _ = _conv_geometry(input, weight, stride, padding, dilation)
    return chosen.block_conv2d(
        input, chosen.prepack(weight), weight, bias, stride, padding, dilation, relu
    )


def block_linear(
    input: torch.Tensor,
    weight: PackedWeight,
    bias: torch.Tensor | None = None,
    relu: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """``F.linear(input, unpack(weight), bias)`` (then ReLU if ``relu``) over the packed blocks,
    for any leading batch dimensions."""
    chosen = _check_args(input, weight, bias, backend, "block_linear")
    if input.dim() == 0 or input.shape[-1] != weight.in_features:
        raise SparsekitError(
            f"block_linear: input shape {tuple(input.shape)} does not end in the weight's "
            f"{weight.in_features} features"
        )
    return chosen.block_linear(input, chosen.prepack(weight), weight, bias, relu)

"""The sparsekit ops' schemas, each written once, and the one helper that gives a backend its
copy of them.

Every backend runs the same two ops under its own name, ``sparsekit::<prefix>block_conv2d`` and
``sparsekit::<prefix>block_linear``, on its own layout of a pack (``Backend.prepack``): the
tensors and ints a layer holds, passed as ``layout`` and ``layout_ints``, which the op reads as
they are (the pack was checked when the layout was built). ``define_ops`` defines them from
``SCHEMAS``, registers the
backend's Python implementations (a C++ backend registers its kernels itself, per dispatch key,
with ``TORCH_LIBRARY_IMPL``: the dispatcher then checks their C++ signatures against the schema),
the one fake (meta) implementation of each op, and an Autograd kernel that refuses to
differentiate: the ops are for inference. That kernel is the C++ extension's where it is built
(``refuse_gradient``: a call that records no gradient then costs no Python there), else a
Python autograd formula that raises.
"""

from collections.abc import Callable

import torch

from ..errors import SparsekitError
from ..geometry import block_conv2d_shape, block_linear_shape, output_memory_format

# y[N, K, OH, OW]: the sum over packed blocks of W_b @ im2col(x)[cols_b] into rows_b, + bias, ReLU.
# y[*, K]: the same on x[*, C] with a 1x1 kernel.
SCHEMAS = {
    "block_conv2d": (
        "(Tensor input, Tensor[] layout, int[] layout_ints, int out_channels, int[2] kernel_size, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups, Tensor? bias, "
        "bool relu) -> Tensor"
    ),
    "block_linear": (
        "(Tensor input, Tensor[] layout, int[] layout_ints, int out_features, Tensor? bias, "
        "bool relu) -> Tensor"
    ),
}


def _block_conv2d_fake(
    input,
    layout,
    layout_ints,
    out_channels,
    kernel_size,
    stride,
    padding,
    dilation,
    groups,
    bias,
    relu,
):
    shape = block_conv2d_shape(input.shape, out_channels, kernel_size, stride, padding, dilation)
    return torch.empty(
        shape, dtype=input.dtype, device=input.device, memory_format=output_memory_format(input)
    )


def _block_linear_fake(input, layout, layout_ints, out_features, bias, relu):
    return input.new_empty(block_linear_shape(input.shape, out_features))


FAKES = {"block_conv2d": _block_conv2d_fake, "block_linear": _block_linear_fake}


def _no_gradient(name: str):
    """The backward formula of ``name``: it refuses, naming the op (as the C++ kernel does)."""

    def refuse(ctx, grad):
        raise SparsekitError(f"{name}: sparsekit ops are for inference and have no gradient")

    return refuse


def _no_context(ctx, inputs, output):
    return None


# sparsekit::<prefix><op> -> its Python implementation, for the ops that have one (read by the
# tests of what a CUDA graph needs of them)
PYTHON_IMPLS: dict[str, Callable] = {}


def _refuse_gradient(name: str) -> None:
    try:
        from .. import _C
    except ImportError:  # a source checkout that was not built: the Python formula
        torch.library.register_autograd(name, _no_gradient(name), setup_context=_no_context)
    else:
        _C.refuse_gradient(name.removeprefix("sparsekit::"))


def define_ops(
    prefix: str, impls: dict[str, Callable] | None = None, device_types="default"
) -> None:
    """Defines ``sparsekit::<prefix><op>`` for every op of ``SCHEMAS``, with ``impls[op]`` for
    ``device_types`` (``"default"``: every device) when given, the op's fake and the refusing
    Autograd kernel. All are defined before any is registered: the first registration may load
    the extension, whose C++ kernels the dispatcher checks against the schemas."""
    names = {op: f"sparsekit::{prefix}{op}" for op in SCHEMAS}
    for op, name in names.items():
        torch.library.define(name, SCHEMAS[op])
    for op, name in names.items():
        if impls is not None:
            torch.library.impl(name, device_types, impls[op])
            PYTHON_IMPLS[name] = impls[op]
        torch.library.register_fake(name, FAKES[op])
        _refuse_gradient(name)

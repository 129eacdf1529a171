"""Ops: the Python entry to every sparsekit op, its reference and its backend dispatch.

``torch.ops.sparsekit.block_conv2d`` / ``block_linear`` take the packed tensors of a
``PackedWeight`` (see ``formats``); the functions here take the ``PackedWeight`` itself, check
the arguments (raising ``SparsekitError``) and pick a backend:

- ``"cpu"``: the C++ kernels of ``sparsekit._C`` (fp32, bf16, fp16 on CPU tensors);
- ``"torch"``: each block as torch's dense conv / linear on any device, for packs whose blocks
  hold whole kernels (channel- and kernel-wise plans; see ``torch_blocks``);
- ``"triton"``: the Triton kernels of ``sparsekit.triton_kernels`` (CUDA tensors; CPU tensors
  only under ``TRITON_INTERPRET=1``, for tests);
- ``"reference"``: pure torch, fp32 accumulation, the definition the kernels are tested against;
- ``"auto"``: the compiled kernel for the input's device.
"""

import math

import torch
import torch.nn.functional as F

from . import torch_blocks
from .errors import SparsekitError
from .formats import PackedWeight
from .geometry import block_conv2d_fake, block_linear_fake, conv_output_size
from .tensor_memo import memoize

try:
    from . import _C  # noqa: F401  (registers torch.ops.sparsekit.*)

    EXTENSION_ERROR = None
except ImportError as error:  # a source checkout that was not built
    EXTENSION_ERROR = error

try:
    from .triton_kernels import block_conv as _triton_ops  # noqa: F401  (registers triton_*)

    TRITON_ERROR = None
except ImportError as error:  # no triton installed
    TRITON_ERROR = error

BACKENDS = ("auto", "cpu", "torch", "triton", "reference")
OP_PREFIX = {"cpu": "", "torch": "torch_", "triton": "triton_"}  # backend -> its ops' name prefix
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def pair(value, name: str, minimum: int = 0) -> tuple[int, int]:
    """``value`` (an int or two ints, each >= ``minimum``) as a pair; ``name`` labels errors."""
    values = (value, value) if isinstance(value, int) else tuple(value)
    if len(values) != 2 or not all(isinstance(v, int) and v >= minimum for v in values):
        raise SparsekitError(f"{name}: expected an int or two ints >= {minimum}, got {value!r}")
    return values


def _check_args(input, weight, bias, backend: str, op: str) -> str:
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
        raise SparsekitError(f"{op}: input dtype {input.dtype} differs from the weight's {weight.dtype}")
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
    if backend not in BACKENDS:
        raise SparsekitError(f"{op}: backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "reference":
        return backend
    if backend == "torch":  # checked eagerly: the check reads the indices, which a trace cannot
        if not torch.compiler.is_compiling() and not supports(weight, backend):
            raise SparsekitError(
                f"{op}: backend 'torch' runs blocks of whole kernels only, and this "
                f"{weight.structure!r} pack has blocks with part of a kernel"
            )
        return backend
    if backend == "auto":
        backend = "cpu" if input.device.type == "cpu" else "triton"
    if input.dtype not in KERNEL_DTYPES:
        raise SparsekitError(f"{op}: backend {backend!r} takes {KERNEL_DTYPES}, not {input.dtype}")
    if backend == "triton":
        if TRITON_ERROR is not None:
            raise SparsekitError(f"{op}: backend 'triton' needs triton ({TRITON_ERROR})")
        if input.device.type != "cuda" and not _triton_ops.INTERPRETED:
            raise SparsekitError(
                f"{op}: backend 'triton' runs on CUDA tensors (on CPU ones only under "
                f"TRITON_INTERPRET=1), not on {input.device.type}"
            )
        return backend
    if input.device.type != "cpu":
        raise SparsekitError(
            f"{op}: backend 'cpu' takes CPU tensors, not {input.device.type} ones; "
            "use backend='triton', 'torch' or 'reference'"
        )
    if EXTENSION_ERROR is not None:
        raise SparsekitError(
            f"{op}: the C++ extension sparsekit._C is not built ({EXTENSION_ERROR}); "
            "install with `pip install --no-build-isolation -e .`"
        )
    return backend


def supports(weight: PackedWeight, backend: str) -> bool:
    """Whether ``backend`` can run ``weight`` at all (devices and dtypes aside)."""
    if backend != "torch":
        return backend in BACKENDS
    cols, ptr, area = weight.col_idx, weight.block_ptr, math.prod(weight.kernel_size)
    return memoize("whole kernels", (cols, ptr), lambda: torch_blocks.whole_kernel_blocks(cols, ptr, area))


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
        conv_output_size(input.shape[2 + i], weight.kernel_size[i], stride[i], padding[i], dilation[i])
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
    (then ReLU if ``relu``) computed over the packed blocks only. Output is NCHW contiguous."""
    backend = _check_args(input, weight, bias, backend, "block_conv2d")
    stride, padding, dilation, _ = _conv_geometry(input, weight, stride, padding, dilation)
    if backend == "reference":
        return reference_block_conv2d(input, weight, bias, stride, padding, dilation, relu)
    return getattr(torch.ops.sparsekit, f"{OP_PREFIX[backend]}block_conv2d")(
        input, weight.values, weight.row_idx, weight.col_idx, weight.block_ptr,
        weight.out_features, list(weight.kernel_size), list(stride), list(padding),
        list(dilation), weight.groups, bias, relu,
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
    backend = _check_args(input, weight, bias, backend, "block_linear")
    if input.dim() == 0 or input.shape[-1] != weight.in_features:
        raise SparsekitError(
            f"block_linear: input shape {tuple(input.shape)} does not end in the weight's "
            f"{weight.in_features} features"
        )
    if backend == "reference":
        return reference_block_linear(input, weight, bias, relu)
    return getattr(torch.ops.sparsekit, f"{OP_PREFIX[backend]}block_linear")(
        input, weight.values, weight.row_idx, weight.col_idx, weight.block_ptr,
        weight.out_features, bias, relu,
    )


def _accumulate_blocks(columns: torch.Tensor, weight: PackedWeight, acc: torch.Tensor) -> None:
    """acc[:, rows] += tile @ columns[:, group offset + cols] for every block ([B, cols, L])."""
    rows_per_group = weight.out_features // weight.groups
    cols_per_group = math.prod(weight.weight_shape[1:])
    for rows, cols, tile in weight.blocks():
        group = int(rows[0]) // rows_per_group
        x = columns[:, group * cols_per_group + cols.long()]
        acc[:, rows.long()] += tile.to(acc.dtype) @ x


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference_block_conv2d(
    input, weight: PackedWeight, bias=None, stride=1, padding=0, dilation=1, relu=False
) -> torch.Tensor:
    """The block convolution in plain torch: explicit im2col, one matmul per block."""
    stride, padding, dilation, (oh, ow) = _conv_geometry(input, weight, stride, padding, dilation)
    acc_dtype = _accumulator_dtype(input.dtype)
    n = input.shape[0]
    columns = F.unfold(input.to(acc_dtype), weight.kernel_size, dilation, padding, stride)
    acc = torch.zeros(n, weight.out_features, oh * ow, dtype=acc_dtype, device=input.device)
    _accumulate_blocks(columns, weight, acc)
    return _epilogue(acc, bias, relu).reshape(n, weight.out_features, oh, ow).to(input.dtype)


def reference_block_linear(input, weight: PackedWeight, bias=None, relu=False) -> torch.Tensor:
    """The block linear in plain torch: one matmul per block."""
    acc_dtype = _accumulator_dtype(input.dtype)
    x = input.reshape(-1, input.shape[-1]).to(acc_dtype).T[None]  # [1, in, M]
    acc = torch.zeros(1, weight.out_features, x.shape[2], dtype=acc_dtype, device=input.device)
    _accumulate_blocks(x, weight, acc)
    out = _epilogue(acc, bias, relu)[0].T
    return out.reshape(*input.shape[:-1], weight.out_features).to(input.dtype)


def _epilogue(acc: torch.Tensor, bias, relu: bool) -> torch.Tensor:
    if bias is not None:
        acc += bias.to(acc.dtype)[:, None]
    return acc.relu_() if relu else acc


if EXTENSION_ERROR is None:

    torch.library.register_fake("sparsekit::block_conv2d")(block_conv2d_fake)
    torch.library.register_fake("sparsekit::block_linear")(block_linear_fake)


def _no_gradient(ctx, grad):
    raise SparsekitError("sparsekit ops are for inference and have no gradient")


for _prefix in OP_PREFIX.values():
    for _op in (f"{_prefix}block_conv2d", f"{_prefix}block_linear"):
        if hasattr(torch.ops.sparsekit, _op):  # not built or not installed: nothing to register
            torch.library.register_autograd(
                f"sparsekit::{_op}", _no_gradient, setup_context=lambda ctx, inputs, output: None
            )

"""What a backend is: where it runs, what it takes, the packs it supports, its own layout of a
pack, its cost model (if any) and its two ops. A backend module defines one subclass of
``Backend`` and the registry (``sparsekit.backends``) lists its instance.
"""

from dataclasses import dataclass

import torch

from ..formats import PackedWeight


@dataclass(frozen=True)
class Layout:
    """A backend's layout of one pack: what its ops take as ``layout`` (tensors, on the pack's
    device) and ``layout_ints`` (host-side facts, e.g. the geometry it was built for). A layer
    builds it once (``Backend.prepack``) and holds the tensors as non-persistent buffers."""

    tensors: tuple[torch.Tensor, ...]
    ints: tuple[int, ...] = ()


class Backend:
    """A way of running the packed ops. Subclasses set the class attributes and override what
    differs; the defaults run ``torch.ops.sparsekit``'s ``<op_prefix>block_conv2d`` /
    ``<op_prefix>block_linear`` (see ``schema``) on the pack's own tensors."""

    name: str
    devices: tuple[str, ...]  # device types its ops run on
    dtypes: tuple[torch.dtype, ...]  # input (and weight) dtypes it takes
    # device types on which `auto` may pick it: those where it has passed its tests on real
    # hardware; on any other device it runs only when asked for by name
    auto_on: tuple[str, ...] = ()
    benchmarked = True  # whether the bench suites time it against dense
    # whether its ops never wait on the host (no reading of tables there), so a CUDA graph can
    # hold them
    graph_safe = False
    # packs of more blocks than this do not compete in compile's plan choice (None: no limit): a
    # backend that makes one library call per block cannot win with many, and running such a
    # pack once to check it costs seconds on a large layer
    max_competing_blocks: int | None = None
    op_prefix: str = ""
    unsupported_reason = ""  # what supports() asks of a pack, for error messages

    def unavailable(self, device: torch.device) -> str | None:
        """Why this backend cannot run on ``device`` in this process (None: it can)."""
        if device.type not in self.devices:
            return f"runs on {' or '.join(self.devices)} tensors, not {device.type} ones"
        return None

    def supports(self, packed: PackedWeight) -> bool:
        """Whether this backend can run ``packed`` at all (devices and dtypes aside)."""
        return True

    def competes(self, packed: PackedWeight) -> bool:
        """Whether compile's plan choice tries ``packed`` on this backend."""
        limit = self.max_competing_blocks
        return self.supports(packed) and (limit is None or packed.num_blocks <= limit)

    def prepack(self, packed: PackedWeight) -> Layout:
        """This backend's own layout of ``packed`` (a checked pack, on the device and in the
        dtype it will run on), built once per layer: layers hold it and rebuild it after
        loading or moving, never save it. Default: the pack's own tensors."""
        return Layout((packed.values, packed.row_idx, packed.col_idx, packed.block_ptr))

    def cost(self, packed: PackedWeight) -> float | None:
        """The estimated time of ``packed`` relative to its dense layer on this backend's
        kernels, which compile ranks plans by when nothing is measured; None: this backend
        has no cost model, so its plans are chosen by measurement only."""
        return None

    def problem(self, device: torch.device, dtype: torch.dtype, packed: PackedWeight | None = None):
        """Why this backend cannot run ``packed`` on ``dtype`` tensors of ``device`` (None: it
        can)."""
        reason = self.unavailable(device)
        if reason is None and dtype not in self.dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            reason = f"takes {names} tensors, not {str(dtype).removeprefix('torch.')}"
        if reason is None and packed is not None and not self.supports(packed):
            reason = f"cannot run this {packed.structure!r} pack ({self.unsupported_reason})"
        return reason

    @property
    def conv2d_op(self):
        """``sparsekit::<op_prefix>block_conv2d``, the op a conv layer calls with its layout."""
        return getattr(torch.ops.sparsekit, f"{self.op_prefix}block_conv2d")

    @property
    def linear_op(self):
        """``sparsekit::<op_prefix>block_linear``."""
        return getattr(torch.ops.sparsekit, f"{self.op_prefix}block_linear")

    def block_conv2d(
        self, input, layout: Layout, weight: PackedWeight, bias, stride, padding, dilation, relu
    ) -> torch.Tensor:
        """The conv op on ``layout``, this backend's layout of ``weight``; the arguments are
        checked (``ops``)."""
        return self.conv2d_op(
            input,
            list(layout.tensors),
            list(layout.ints),
            weight.out_features,
            list(weight.kernel_size),
            list(stride),
            list(padding),
            list(dilation),
            weight.groups,
            bias,
            relu,
        )

    def block_linear(self, input, layout: Layout, weight: PackedWeight, bias, relu) -> torch.Tensor:
        """The linear op on ``layout``, as ``block_conv2d``."""
        return self.linear_op(
            input, list(layout.tensors), list(layout.ints), weight.out_features, bias, relu
        )

    def __repr__(self) -> str:
        return f"<sparsekit backend {self.name!r}>"


def pack_geometry(packed: PackedWeight) -> tuple[int, int, list[int], int]:
    """``(out_channels, in_channels, kernel_size, groups)`` of a pack, a linear's kernel 1x1:
    what a layout is built for."""
    kernel_size = list(packed.kernel_size) or [1, 1]
    return packed.out_features, packed.in_features, kernel_size, packed.groups

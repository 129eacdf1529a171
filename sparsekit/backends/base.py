"""What a backend is: where it runs, what it takes, the packs it supports, its own layout of a
pack, and its two ops. A backend module defines one subclass of ``Backend`` and the registry
(``sparsekit.backends``) lists its instance.
"""

import torch

from ..formats import PackedWeight


class Backend:
    """A way of running the packed ops. Subclasses set the class attributes and override what
    differs; the defaults run the canonical packed tensors through ``torch.ops.sparsekit``'s
    ``<op_prefix>block_conv2d`` / ``<op_prefix>block_linear`` (see ``schema``)."""

    name: str
    devices: tuple[str, ...]  # device types its ops run on
    dtypes: tuple[torch.dtype, ...]  # input (and weight) dtypes it takes
    # device types on which `auto` may pick it: those where it has passed its tests on real
    # hardware; on any other device it runs only when asked for by name
    auto_on: tuple[str, ...] = ()
    benchmarked = True  # whether the bench suites time it against dense
    # whether its ops never wait on the host (no reading of tables there), so a CUDA graph can hold them
    graph_safe = False
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

    def prepack(self, packed: PackedWeight):
        """This backend's own layout of ``packed``, derived once per layer (a cache: layers keep
        it, rebuild it after loading or moving, and never save it). Default: the pack itself."""
        return packed

    def problem(self, device: torch.device, dtype: torch.dtype, packed: PackedWeight | None = None):
        """Why this backend cannot run ``packed`` on ``dtype`` tensors of ``device`` (None: it
        can). The pack is not read while torch.compile traces: its indices are data."""
        reason = self.unavailable(device)
        if reason is None and dtype not in self.dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            reason = f"takes {names} tensors, not {str(dtype).removeprefix('torch.')}"
        if reason is None and packed is not None and not torch.compiler.is_compiling():
            if not self.supports(packed):
                reason = f"cannot run this {packed.structure!r} pack ({self.unsupported_reason})"
        return reason

    def block_conv2d(self, input, weight, bias, stride, padding, dilation, relu) -> torch.Tensor:
        """The conv op on ``weight``, what ``prepack`` made of the pack; the arguments are
        checked (``ops``)."""
        op = getattr(torch.ops.sparsekit, f"{self.op_prefix}block_conv2d")
        return op(input, weight.values, weight.row_idx, weight.col_idx, weight.block_ptr,
                  weight.out_features, list(weight.kernel_size), list(stride), list(padding),
                  list(dilation), weight.groups, bias, relu)

    def block_linear(self, input, weight, bias, relu) -> torch.Tensor:
        """The linear op on ``weight``, as ``block_conv2d``."""
        op = getattr(torch.ops.sparsekit, f"{self.op_prefix}block_linear")
        return op(input, weight.values, weight.row_idx, weight.col_idx, weight.block_ptr,
                  weight.out_features, bias, relu)

    def __repr__(self) -> str:
        return f"<sparsekit backend {self.name!r}>"

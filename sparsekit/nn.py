"""SparseConv2d / SparseLinear: inference layers that run a packed weight (or a dense one).

A layer is built from its effective weight (masked, BatchNorm folded) with ``from_weight`` and
is described by a JSON-able ``config`` from which an empty twin is made (``from_config``) for
loading a state_dict. ``backend="dense"`` keeps the weight dense and calls ``F.conv2d`` /
``F.linear``; any other backend (see ``sparsekit.backends``) packs it and calls the sparsekit
ops.

A packed layer's state is the canonical pack (its buffers ``values``, ``row_idx``, ``col_idx``,
``block_ptr``: what ``state_dict`` saves) and its backend's layout of it (``Backend.prepack``),
held as non-persistent buffers ``layout_0``, ``layout_1``, ... . ``ready()`` checks the pack,
resolves the backend and builds the layout: at build, after ``load_state_dict`` and after every
``.to()`` / ``.cuda()`` / ``.half()``. A call then only runs the backend's op on it: no check
of the pack, no backend lookup, no layout built. A layer whose backend cannot run where it
now lies (a ``"cpu"`` layer moved to a GPU) keeps no layout and says so when called; after
changing the packed buffers in place, call ``ready()``.

``ready()`` also fixes the op's arguments once (``_fast``): an eager call whose input has the
layer's dtype passes them to the op as they are, the whole call a few attribute reads from
the op, while torch.compile and torch.export trace the full path, which reads the buffers by
name so that they lift them as the module's state. The fixed arguments serve only while the
layer's buffers are the very tensors they were fixed from: a buffer assigned or swapped in
(``layer.bias = t``, ``torch.func.functional_call``) sends calls down the full path, which reads
it, until the next ``ready()``.
"""

import operator

import torch
import torch.nn.functional as F
from torch import nn
from torch.compiler import is_compiling

from . import backends, ops
from .errors import SparsekitError
from .formats import PackedWeight, pack
from .geometry import is_channels_last, output_memory_format

PACKED_BUFFERS = ("values", "row_idx", "col_idx", "block_ptr")
DTYPES = {str(d): d for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16)}


class _SparseLayer(nn.Module):
    """Buffers and bookkeeping shared by both layers: a dense ``weight`` or the packed tensors
    and the layout."""

    def __init__(self, config: dict, weight_shape: tuple[int, ...], device=None):
        super().__init__()
        self.config = dict(config)
        self.weight_shape = weight_shape
        dtype = DTYPES[config["dtype"]]
        if self.is_dense:
            self.register_buffer("weight", torch.empty(weight_shape, dtype=dtype, device=device))
        else:
            sizes = config["sizes"]
            self.register_buffer("values", torch.empty(sizes["values"], dtype=dtype, device=device))
            self.register_buffer(
                "row_idx", torch.empty(sizes["row_idx"], dtype=torch.int32, device=device)
            )
            self.register_buffer(
                "col_idx", torch.empty(sizes["col_idx"], dtype=torch.int32, device=device)
            )
            self.register_buffer(
                "block_ptr", torch.empty(3, sizes["blocks"] + 1, dtype=torch.int64, device=device)
            )
        bias_shape = (weight_shape[0],) if config["bias"] else None
        self.register_buffer(
            "bias",
            None if bias_shape is None else torch.empty(bias_shape, dtype=dtype, device=device),
        )
        self._layout_names: tuple[str, ...] = ()
        self._layout_ints: list[int] = []
        self._op = None  # the backend's op, once ready()
        # (dtype, op, its arguments after the input, the names of the buffers among them and those
        # buffers), once ready()
        self._fast = None
        self._not_ready = "its buffers were not loaded yet (load_state_dict, or sparsekit.load)"
        self.register_load_state_dict_post_hook(_ready_after_load)

    @property
    def is_dense(self) -> bool:
        return self.config["backend"] == "dense"

    @property
    def backend(self) -> str:
        return self.config["backend"]

    @property
    def dtype(self) -> torch.dtype:
        """The weight's dtype: the layer computes in it, and its input must have it."""
        return (self.weight if self.is_dense else self.values).dtype

    def _label(self) -> str:
        """The layer as errors name it: its type and, in a compiled model, the layer it replaced."""
        name = self.config.get("source", {}).get("layer")
        return type(self).__name__ + ("" if name is None else f" {name!r}")

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every module before compiling any: refusing here says
        # why, where the compiler would fail deep inside on the config dict or the ops
        raise SparsekitError(
            f"{self._label()}: TorchScript (torch.jit.script) is not supported; use "
            "torch.compile or torch.export instead"
        )

    def packed(self) -> PackedWeight:
        return PackedWeight(
            self.weight_shape,
            self.config.get("groups", 1),
            self.values,
            self.row_idx,
            self.col_idx,
            self.block_ptr,
            self.config["structure"],
        )

    def ready(self):
        """This layer, its pack checked, its backend resolved and its layout built (see the
        module doc); SparsekitError if the pack is malformed or its backend cannot run it."""
        if self.is_dense:
            return self
        self._drop_layout()
        if any(b.is_meta for b in self.buffers()):  # no data to check or lay out
            self._not_ready = "its buffers are on the meta device"
            return self
        packed = self.packed().check(
            f"layer {self.config.get('source', {}).get('layer', 'weight')!r}"
        )
        backend = backends.get(self.backend)
        if not backend.supports(packed):
            raise SparsekitError(
                f"backend {self.backend!r} cannot run this {self.config['structure']!r} plan "
                f"({backend.unsupported_reason})"
            )
        problem = backend.problem(packed.device, packed.dtype)
        if problem is not None:  # e.g. moved to a device it does not run on: said when called
            self._not_ready = f"backend {self.backend!r} {problem}"
            return self
        layout = backend.prepack(packed)
        self._layout_names = tuple(f"layout_{i}" for i in range(len(layout.tensors)))
        for name, tensor in zip(self._layout_names, layout.tensors):
            self.register_buffer(name, tensor, persistent=False)
        self._layout_ints = list(layout.ints)
        self._op = self._backend_op()
        self._fast = self._fast_call()
        return self

    def _fast_call(self):
        """(dtype, op, the op's arguments after the input, the names of the buffers among them,
        those buffers) of an eager call, or None where the layer takes its full path on every
        call (no layout, or input padding of its own)."""
        layout = [getattr(self, name) for name in self._layout_names]
        args = self._op_args(layout, self._layout_ints)
        names = ("bias", *self._layout_names)
        return self.values.dtype, self._op, args, names, tuple(map(self._buffers.get, names))

    def _fast_args(self, x: torch.Tensor):
        """The op and its fixed arguments, if an eager call of ``x`` may take them (None if
        not): not while compiling or exporting, for the layer's dtype, and with the buffers
        among them as they were fixed (each still the same tensor)."""
        fast = self._fast
        if (
            fast is not None
            and x.dtype is fast[0]
            and not is_compiling()
            and all(map(operator.is_, map(self._buffers.get, fast[3]), fast[4]))
        ):
            return fast[1], fast[2]
        return None

    def _backend_op(self):
        backend = backends.get(self.backend)
        return backend.conv2d_op if isinstance(self, SparseConv2d) else backend.linear_op

    def __getstate__(self):
        # torch's op objects do not pickle: the op is found again when the layer is unpickled
        return {**super().__getstate__(), "_op": None, "_fast": None}

    def __setstate__(self, state):
        super().__setstate__(state)
        if self._layout_names:  # laid out again: a pickled layout may be another version's
            self.ready()

    def _drop_layout(self) -> None:
        for name in self._layout_names:
            delattr(self, name)
        self._layout_names, self._layout_ints, self._op, self._fast = (), [], None, None

    def _apply(self, fn, recurse=True):
        self._drop_layout()  # built again from the moved pack, not moved itself
        super()._apply(fn, recurse)
        # .half() and the like change the weight's dtype: the config, which save writes and from
        # which load allocates the buffers, says the new one
        self.config["dtype"] = str(self.dtype)
        return self.ready()

    def _run(self, x: torch.Tensor):
        """The backend's op, with this layer's layout as its first arguments after the input
        ``x``, which must have the weight's dtype (the one check a call makes)."""
        if self._op is None:
            raise SparsekitError(f"{type(self).__name__} cannot run: {self._not_ready}")
        if x.dtype != self.values.dtype:  # said here, naming the layer, not deep in the op
            raise SparsekitError(
                f"{self._label()}: input dtype {x.dtype} differs from the weight's "
                f"{self.values.dtype}; convert the module with .to({x.dtype}) (or .half(), "
                f".bfloat16(), ...) to run it in {x.dtype}, or the input with "
                f".to({self.values.dtype})"
            )
        return self._op, [getattr(self, name) for name in self._layout_names], self._layout_ints

    def _op_args(self, layout: list, layout_ints: list) -> tuple:
        """The op's arguments after the input, on ``layout``."""
        raise NotImplementedError

    def supports(self, backend: str) -> bool:
        """Whether this layer's pack can run on ``backend`` (see ``ops.supports``)."""
        return not self.is_dense and ops.supports(self.packed(), backend)

    def with_backend(self, backend: str) -> "_SparseLayer":
        """A twin of this packed layer (same plan, copied buffers) that runs on ``backend``."""
        if self.is_dense or backend not in backends.names():
            raise SparsekitError(f"backend: a {self.backend!r} layer cannot move to {backend!r}")
        twin = from_config(self.config | {"backend": backend}, self.values.device)
        twin.load_state_dict(self.state_dict())
        return twin

    def _fill(self, weight: torch.Tensor, bias: torch.Tensor | None, packed: PackedWeight | None):
        with torch.no_grad():
            if packed is None:
                self.weight.copy_(weight)
            else:
                for name in PACKED_BUFFERS:
                    getattr(self, name).copy_(getattr(packed, name))
            if bias is not None:
                self.bias.copy_(bias)
        return self.ready()

    def summary(self) -> dict:
        """As ``PackedWeight.summary``: structure, blocks, kept weights, density (over the dense
        weight's), fill (over stored values), FLOPs relative to dense."""
        if not self.is_dense:
            return self.packed().summary()
        nnz = int(torch.count_nonzero(self.weight))
        return {
            "weight_shape": list(self.weight_shape),
            "groups": self.config.get("groups", 1),
            "structure": "dense",
            "blocks": 0,
            "nnz": nnz,
            "stored": self.weight.numel(),
            "density": nnz / self.weight.numel(),
            "fill": nnz / self.weight.numel(),  # a dense layer stores every weight
            "flops_ratio": 1.0,
        }

    def extra_repr(self) -> str:
        s = self.summary()
        return (
            f"{tuple(self.weight_shape)}, backend={self.backend!r}, structure={s['structure']!r}, "
            f"blocks={s['blocks']}, density={s['density']:.3f}, fill={s['fill']:.3f}, "
            f"flops_ratio={s['flops_ratio']:.3f}"
        )


def _packed_config(weight, bias, structure, backend, groups, name, packed):
    """(config entries, PackedWeight or None) for a weight under ``backend`` (``"auto"``: the
    first backend ``auto`` allows for the weight's device and dtype and the pack), packed by the
    ``structure`` planner unless ``packed`` is a pack of it already made."""
    config = {"dtype": str(weight.dtype), "bias": bias is not None}
    if backends.check_choice(backend) == "dense":
        return config | {"backend": backend, "structure": "dense"}, None
    if packed is None:
        packed = pack(weight, None, structure=structure, groups=groups, name=name)
    if backend == "auto":
        backend = backends.resolve(backend, weight.device, weight.dtype, packed).name
    sizes = {
        "values": packed.values.numel(),
        "row_idx": packed.row_idx.numel(),
        "col_idx": packed.col_idx.numel(),
        "blocks": packed.num_blocks,
    }
    return config | {"backend": backend, "structure": packed.structure, "sizes": sizes}, packed


def _pad_amounts(padding, kernel_size, dilation) -> tuple[int, int, int, int]:
    """F.pad amounts (left, right, top, bottom) of a Conv2d's padding (ints, 'same' or 'valid')."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
        h, w = ((t // 2, t - t // 2) for t in total)
        return (*w, *h)
    return (padding[1], padding[1], padding[0], padding[0])


class SparseConv2d(_SparseLayer):
    """Drop-in inference replacement of ``nn.Conv2d`` with a packed (or dense) weight."""

    def __init__(self, config: dict, device=None):
        kh, kw = config["kernel_size"]
        shape = (config["out_channels"], config["in_channels"] // config["groups"], kh, kw)
        super().__init__(config, shape, device)
        left, right, top, bottom = config["pad"]
        symmetric = left == right and top == bottom and config["padding_mode"] == "zeros"
        self._padding = (top, left) if symmetric else (0, 0)
        self._pre_pad = None if symmetric else (config["pad"], config["padding_mode"])

    def _apply(self, fn, recurse=True):
        # .to(memory_format=...) converts a conv's 4-d weight and with it the format torch's conv
        # computes in; a packed layer has no 4-d tensor, so its flag follows what fn does to one
        probe = torch.empty(1, 2, 1, 2)  # channels_last or not, never both
        if self.config.get("channels_last"):
            probe = probe.contiguous(memory_format=torch.channels_last)
        self.config["channels_last"] = is_channels_last(fn(probe))
        return super()._apply(fn, recurse)

    @classmethod
    def from_weight(
        cls,
        weight,
        bias=None,
        *,
        stride=(1, 1),
        padding=(0, 0),
        dilation=(1, 1),
        groups=1,
        padding_mode="zeros",
        structure="auto",
        backend="auto",
        relu=False,
        name="weight",
        packed=None,
        channels_last=False,
    ) -> "SparseConv2d":
        """A layer computing ``conv2d(x, weight, bias, ...)`` (then ReLU if ``relu``), the zeros
        of ``weight`` being its mask. ``padding`` takes ints, ``"same"`` or ``"valid"``;
        ``backend``: ``"dense"``, ``"auto"`` or a backend's name; ``packed``: a pack of
        ``weight`` already made, reused instead of planning again; ``channels_last``: compute
        in channels_last whatever the input's format, as torch's conv does for a layer whose
        weight is channels_last (``from_conv`` sets it so)."""
        kernel_size = tuple(weight.shape[2:])
        entries, packed = _packed_config(weight, bias, structure, backend, groups, name, packed)
        config = entries | {
            "type": "SparseConv2d",
            "in_channels": weight.shape[1] * groups,
            "out_channels": weight.shape[0],
            "kernel_size": list(kernel_size),
            "stride": list(ops.pair(stride, "stride", 1)),
            "dilation": list(ops.pair(dilation, "dilation", 1)),
            "groups": groups,
            "padding_mode": padding_mode,
            "relu": relu,
            "channels_last": channels_last,
        }
        if not isinstance(padding, str):
            padding = ops.pair(padding, "padding", 0)
        config["pad"] = list(_pad_amounts(padding, kernel_size, config["dilation"]))
        return cls(config, weight.device)._fill(weight, bias, packed)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs) -> "SparseConv2d":
        return cls.from_weight(
            conv.weight.detach(),
            None if conv.bias is None else conv.bias.detach(),
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            padding_mode=conv.padding_mode,
            channels_last=is_channels_last(conv.weight),
            **kwargs,
        )

    def _fast_call(self):
        return None if self._pre_pad is not None else super()._fast_call()

    def _op_args(self, layout, layout_ints):
        c = self.config
        return (
            layout,
            layout_ints,
            c["out_channels"],
            c["kernel_size"],
            c["stride"],
            self._padding,
            c["dilation"],
            c["groups"],
            self.bias,
            c["relu"],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = self._fast_args(x)
        if fast is not None and x.dim() == 4:
            if self.config.get("channels_last"):
                x = x.contiguous(memory_format=torch.channels_last)
            return fast[0](x, *fast[1])
        c = self.config
        if c.get("channels_last") and x.dim() == 4:  # (.get: a model saved before the key existed)
            x = x.contiguous(memory_format=torch.channels_last)
        if self._pre_pad is not None:
            amounts, mode = self._pre_pad
            fmt = output_memory_format(x)  # circular padding would drop channels_last
            x = F.pad(x, amounts, mode="constant" if mode == "zeros" else mode).contiguous(
                memory_format=fmt
            )
        if self.is_dense:
            y = F.conv2d(
                x, self.weight, self.bias, c["stride"], self._padding, c["dilation"], c["groups"]
            )
            return F.relu(y) if c["relu"] else y
        op, layout, ints = self._run(x)
        return op(x, *self._op_args(layout, ints))


class SparseLinear(_SparseLayer):
    """Drop-in inference replacement of ``nn.Linear`` with a packed (or dense) weight."""

    def __init__(self, config: dict, device=None):
        super().__init__(config, (config["out_features"], config["in_features"]), device)

    @classmethod
    def from_weight(
        cls,
        weight,
        bias=None,
        *,
        structure="auto",
        backend="auto",
        relu=False,
        name="weight",
        packed=None,
    ) -> "SparseLinear":
        """A layer computing ``linear(x, weight, bias)`` (then ReLU if ``relu``); the other
        arguments as for ``SparseConv2d.from_weight``."""
        entries, packed = _packed_config(weight, bias, structure, backend, 1, name, packed)
        config = entries | {
            "type": "SparseLinear",
            "in_features": weight.shape[1],
            "out_features": weight.shape[0],
            "relu": relu,
        }
        return cls(config, weight.device)._fill(weight, bias, packed)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "SparseLinear":
        bias = None if linear.bias is None else linear.bias.detach()
        return cls.from_weight(linear.weight.detach(), bias, **kwargs)

    def _op_args(self, layout, layout_ints):
        return layout, layout_ints, self.config["out_features"], self.bias, self.config["relu"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = self._fast_args(x)
        if fast is not None:
            return fast[0](x, *fast[1])
        if self.is_dense:
            y = F.linear(x, self.weight, self.bias)
            return F.relu(y) if self.config["relu"] else y
        op, layout, ints = self._run(x)
        return op(x, *self._op_args(layout, ints))


def _ready_after_load(layer: _SparseLayer, incompatible_keys) -> None:
    """Builds the layer's layout from the tensors just loaded (a load_state_dict post-hook):
    unless some were missing, which the load reports itself."""
    if not incompatible_keys.missing_keys:
        layer.ready()


LAYERS = {"SparseConv2d": SparseConv2d, "SparseLinear": SparseLinear}


def geometry(module: nn.Module) -> dict:
    """The config entries that the Conv2d or Linear ``module`` fixes for a sparse layer replacing
    it, as ``from_conv`` / ``from_linear`` write them: its sizes, its op's arguments, its bias."""
    if isinstance(module, nn.Conv2d):
        return {
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "kernel_size": list(module.kernel_size),
            "stride": list(module.stride),
            "dilation": list(module.dilation),
            "groups": module.groups,
            "padding_mode": module.padding_mode,
            "pad": list(_pad_amounts(module.padding, module.kernel_size, module.dilation)),
            "bias": module.bias is not None,
        }
    return {
        "in_features": module.in_features,
        "out_features": module.out_features,
        "bias": module.bias is not None,
    }


def from_config(config: dict, device=None) -> _SparseLayer:
    """An empty layer (buffers uninitialised, on ``device``) described by ``config``, ready for a
    state_dict."""
    try:
        return LAYERS[config["type"]](config, device)
    except (KeyError, TypeError, ValueError) as error:
        raise SparsekitError(f"layer config {config!r} is malformed: {error!r}") from error

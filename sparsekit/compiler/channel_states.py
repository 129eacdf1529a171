"""What each channel of each tensor of a BN-folded fx graph is (forward) and which of them any
later op reads (backward): the analysis half of ``compaction``.

A channel (dim 1 of a rank-2 or rank-4 tensor) is *live* (it varies with the input) or
*constant* (its value is known at compile time; zero is a constant). Every node's op is read as
one of a few kinds (``op_of``): a conv or linear layer, a pointwise map, a pooling that keeps
constants, a flatten, an add, a concat, a size query, or ``Opaque``: an op the pass does not
understand, which sees full-width inputs and makes every output channel live. Conv and linear
layers pick here which output rows they compute (their live rows that something reads), so the
decision is a plain value saved with the model.
"""

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

POINTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.AlphaDropout,
)
POINTWISE_FUNCTIONS = {
    F.relu,
    torch.relu,
    torch.relu_,
    F.relu6,
    F.hardtanh,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    torch.sigmoid,
    F.sigmoid,
    torch.tanh,
    F.tanh,
    F.softplus,
    torch.clamp,
}
POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_min", "clamp_max"}
SCALAR_FUNCTIONS = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    torch.add,
    torch.mul,
}
SCALAR_METHODS = {"add", "sub", "mul", "div"}
KEEPING_POOLS = (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)
KEEPING_POOL_FUNCTIONS = {F.max_pool2d, F.adaptive_max_pool2d, F.adaptive_avg_pool2d}
FLATTENS = {torch.flatten}
ADDS = {operator.add, torch.add}
CATS = {torch.cat, torch.concat}


@dataclass
class Channels:
    """What the pass knows of a tensor's channels: which are live, and the constant each other
    one holds (in the tensor's dtype; 0 where live)."""

    live: torch.Tensor  # bool [C]
    value: torch.Tensor  # [C]

    @staticmethod
    def all_live(count: int, dtype: torch.dtype) -> "Channels":
        return Channels(torch.ones(count, dtype=torch.bool), torch.zeros(count, dtype=dtype))

    def __len__(self) -> int:
        return len(self.live)


def channel_shape(node: fx.Node):
    """The example shape of ``node``'s tensor if its channels are dim 1 of a rank-2 or rank-4
    tensor, else None."""
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None and len(shape) in (2, 4) else None


def node_dtype(node: fx.Node) -> torch.dtype:
    return node.meta["tensor_meta"].dtype


# ---- the kinds of op ----


class Op:
    """An op of the graph as the pass reads it. ``inputs``: the channel-tensor nodes it reads
    (in order); ``forward`` their states -> its output's; ``backward`` the channels of its
    output that are read -> those of each input it reads."""

    stops = False  # whether compaction stops at this op (an Opaque one)

    def __init__(self, node: fx.Node, inputs: list):
        self.node, self.inputs = node, inputs

    def forward(self, states: list) -> Channels | None:
        raise NotImplementedError

    def backward(self, need: torch.Tensor, states: list) -> list:
        return [need.clone() for _ in self.inputs]


class Opaque(Op):
    """Not understood: full-width inputs (constants written back), every output channel live."""

    stops = True

    def __init__(self, node, inputs, why: str):
        super().__init__(node, inputs)
        self.why = why

    def forward(self, states):
        shape = channel_shape(self.node)
        return None if shape is None else Channels.all_live(shape[1], node_dtype(self.node))

    def backward(self, need, states):
        return [torch.ones(len(s), dtype=torch.bool) for s in states]


class Pointwise(Op):
    """A map applied to each element alone (an activation, a BatchNorm in eval, a scalar
    arithmetic): constants map through the op itself, run on them."""

    def __init__(self, node, inputs, apply):
        super().__init__(node, inputs)
        self.apply = apply  # (constants shaped as the input, [1, C, 1...]) -> mapped

    def forward(self, states):
        (state,) = states
        shape = [1, len(state)] + [1] * (len(channel_shape(self.inputs[0])) - 2)
        with torch.no_grad():
            value = self.apply(state.value.view(shape)).reshape(-1).to(state.value.dtype)
        return Channels(state.live.clone(), torch.where(state.live, 0, value))


class KeepingPool(Op):
    """A pooling or spatial mean whose windows only average or pick input values: a constant
    channel stays that constant."""

    def forward(self, states):
        (state,) = states
        return Channels(state.live.clone(), state.value.clone())


class Size(Op):
    """``x.size(d)`` for the batch or a spatial dim: the same on a compacted tensor."""

    def forward(self, states):
        return None

    def backward(self, need, states):
        return [torch.zeros(len(states[0]), dtype=torch.bool)]


class Flatten(Op):
    """``flatten(x, 1)`` of an [N, C, H, W] tensor: channel c becomes features c*HW..(c+1)*HW-1
    (HW from the example; a different size would not fit the layer after it either)."""

    def __init__(self, node, inputs):
        super().__init__(node, inputs)
        shape = channel_shape(inputs[0])
        self.area = shape[2] * shape[3]

    def forward(self, states):
        (state,) = states
        return Channels(
            state.live.repeat_interleave(self.area), state.value.repeat_interleave(self.area)
        )

    def backward(self, need, states):
        return [need.view(-1, self.area).any(1)]


class Add(Op):
    """``a + b`` of two tensors of one shape: live where either is; constants add."""

    def forward(self, states):
        a, b = states
        return Channels(a.live | b.live, torch.where(a.live | b.live, 0, a.value + b.value))


class Cat(Op):
    """``torch.cat(tensors, 1)``: the channels of each in turn."""

    def forward(self, states):
        return Channels(torch.cat([s.live for s in states]), torch.cat([s.value for s in states]))

    def backward(self, need, states):
        return list(need.split([len(s) for s in states]))


class Layer(Op):
    """A Conv2d (groups 1, or depthwise: one input channel per group) or a Linear on [N, F]:
    an output row is constant when the live channels it reads are none, and the constant
    ones it reads either none or seen the same everywhere (no zero padding); otherwise live.
    ``rows`` (set by backward): the output rows it computes, its live rows that are read (at
    least one, so that every tensor of the compacted graph keeps its batch and spatial size)."""

    def __init__(self, node, inputs, module: nn.Module):
        super().__init__(node, inputs)
        self.module = module
        self.rows = None
        weight = module.weight.detach().cpu()
        self.depthwise = isinstance(module, nn.Conv2d) and module.groups > 1
        # [out, in] whether the row reads the column (the input channel its group sees)
        self.reads = (weight != 0).flatten(2).any(2) if weight.dim() == 4 else weight != 0

    @property
    def border_free(self) -> bool:
        """Whether a constant input channel gives a constant output everywhere: no padding, or
        a padding that repeats the input (reflect, replicate, circular)."""
        module = self.module
        if not isinstance(module, nn.Conv2d) or module.padding_mode != "zeros":
            return True
        if isinstance(module.padding, str):
            return module.padding == "valid" or all(k == 1 for k in module.kernel_size)
        return all(p == 0 for p in module.padding)

    def source(self) -> torch.Tensor:
        """Per output row of a depthwise conv, the input channel it reads."""
        out, channels = self.module.out_channels, self.module.in_channels
        return torch.arange(out) // (out // channels)

    def forward(self, states):
        (state,) = states
        weight, bias = self.module.weight.detach().cpu(), self.module.bias
        bias = torch.zeros(weight.shape[0]) if bias is None else bias.detach().cpu()
        taps = weight.double().flatten(2).sum(2) if weight.dim() == 4 else weight.double()
        constant = ~state.live & (state.value != 0)
        if self.depthwise:
            source = self.source()
            reads = self.reads[:, 0]
            live = reads & (state.live[source] | (constant[source] & (not self.border_free)))
            folded = taps[:, 0] * state.value[source].double() * (reads & constant[source])
        else:
            live = (self.reads & state.live).any(1)
            if not self.border_free:
                live |= (self.reads & constant).any(1)
            folded = taps @ torch.where(constant, state.value, 0).double()
        value = bias.double() + folded
        self.live_out = live
        return Channels(live, torch.where(live, 0, value).to(state.value.dtype))

    def backward(self, need, states):
        (state,) = states
        wanted = self.live_out & need
        if not wanted.any():  # keep one row: a tensor carries its batch and spatial size
            wanted = torch.zeros_like(wanted)
            wanted[int(need.nonzero()[0]) if need.any() else 0] = True
        self.rows = wanted.nonzero().flatten()
        if self.depthwise:
            read = torch.zeros(len(state), dtype=torch.bool)
            read[self.source()[self.rows]] = True
            return [read & state.live]
        return [self.reads[self.rows].any(0) & state.live]


# ---- reading a node's op ----


def op_of(node: fx.Node, modules: dict, calls: dict) -> Op | None:
    """The kind of ``node``'s op; None for nodes without an op on channels (placeholders,
    attributes, the output)."""
    if node.op in ("placeholder", "get_attr", "output"):
        return None
    tensors = [n for n in node.all_input_nodes if channel_shape(n) is not None]
    own = channel_shape(node)
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)):
            if calls[node.target] > 1:
                return Opaque(node, tensors, f"{type(module).__name__} called more than once")
    single = _single_input(node, tensors, own)
    if single is None:
        return _read_joins(node, tensors, own)
    (x,) = single
    if node.op == "call_module":
        return _read_module(node, x, modules[node.target], own)
    if node.op == "call_method" and node.target == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if isinstance(dim, int) and dim not in (1, -len(channel_shape(x)) + 1):
            return Size(node, [x])
        return Opaque(node, [x], "size of the channel dim")
    return _read_function(node, x, own)


def _single_input(node, tensors, own):
    """[x] when ``node`` reads one channel tensor, its first argument, and no other node (but
    the size a ``view(x.size(0), -1)`` reads)."""
    if len(tensors) != 1 or not node.args or node.args[0] is not tensors[0]:
        return None
    others = [n for n in node.all_input_nodes if n is not tensors[0]]
    if others and not _is_flatten(node, channel_shape(tensors[0])):
        return None
    return tensors


def _read_module(node, x, module, own) -> Op:
    shape = channel_shape(x)
    if isinstance(module, nn.Conv2d):
        groups, channels = module.groups, module.in_channels
        if groups == 1 or groups == channels:
            return Layer(node, [x], module)
        return Opaque(node, [x], f"Conv2d with {groups} groups of several channels")
    if isinstance(module, nn.Linear):
        if len(shape) == 2:
            return Layer(node, [x], module)
        return Opaque(node, [x], "Linear on a tensor of rank other than 2")
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d) and own == shape:
        if module.training or module.running_mean is None:
            return Opaque(node, [x], "BatchNorm without running statistics")
        return Pointwise(node, [x], module)
    if isinstance(module, POINTWISE_MODULES) and own == shape:
        return Pointwise(node, [x], module)
    if isinstance(module, KEEPING_POOLS) and own is not None:
        return KeepingPool(node, [x])
    if isinstance(module, nn.AvgPool2d) and own is not None:
        return _avg_pool(node, x, module.padding, module.count_include_pad, module.divisor_override)
    if isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) == (1, -1):
        return Flatten(node, [x]) if len(shape) == 4 else Pointwise(node, [x], nn.Identity())
    return Opaque(node, [x], type(module).__name__)


def _avg_pool(node, x, padding, count_include_pad, divisor_override) -> Op:
    """An average pooling keeps a constant unless zero padding counts in its borders' average
    (or a divisor is imposed): then it is opaque, for the compaction as a whole stays exact."""
    padded = any(p != 0 for p in ((padding,) if isinstance(padding, int) else padding))
    if (padded and count_include_pad) or divisor_override is not None:
        return Opaque(node, [x], "AvgPool2d whose border averages count its zero padding")
    return KeepingPool(node, [x])


def _read_function(node, x, own) -> Op:
    shape, target, rest = channel_shape(x), node.target, node.args[1:]
    same = own == shape
    is_function, is_method = node.op == "call_function", node.op == "call_method"
    if same and (
        (is_function and target in POINTWISE_FUNCTIONS)
        or (is_method and target in POINTWISE_METHODS)
    ):
        return Pointwise(node, [x], _applied(node))
    if same and _is_scalar_op(node, rest):
        return Pointwise(node, [x], _applied(node))
    if own is not None and is_function and target in KEEPING_POOL_FUNCTIONS:
        return KeepingPool(node, [x])
    if own is not None and is_function and target is F.avg_pool2d:
        padding = _argument(node, 3, "padding", 0)
        include = _argument(node, 5, "count_include_pad", True)
        return _avg_pool(node, x, padding, include, _argument(node, 6, "divisor_override", None))
    if own is not None and (target == "mean" or target is torch.mean):
        dims = _argument(node, 1, "dim", None)
        dims = (dims,) if isinstance(dims, int) else dims
        if dims is not None and own is not None and _spatial(dims, len(shape)):
            return KeepingPool(node, [x])
    if _is_flatten(node, shape):
        return Flatten(node, [x]) if len(shape) == 4 else Pointwise(node, [x], lambda v: v)
    return Opaque(node, [x], _name(target))


def _read_joins(node, tensors, own) -> Op | None:
    target = node.target
    if node.op == "call_function" and target in ADDS and own is not None and not node.kwargs:
        if len(node.args) == 2 and all(channel_shape(a) == own for a in node.args):
            if isinstance(node.args[0], fx.Node) and isinstance(node.args[1], fx.Node):
                return Add(node, list(node.args))
    if node.op == "call_function" and target in CATS and own is not None:
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = _argument(node, 1, "dim", 0)
        if (
            isinstance(parts, (list, tuple))
            and dim in (1, 1 - len(own))
            and all(isinstance(p, fx.Node) and channel_shape(p) is not None for p in parts)
        ):
            return Cat(node, list(parts))
    return Opaque(node, tensors, _name(target))


def _is_scalar_op(node, rest) -> bool:
    scalar = len(node.args) == 2 and isinstance(node.args[1], (int, float)) and not node.kwargs
    return scalar and (
        (node.op == "call_function" and node.target in SCALAR_FUNCTIONS)
        or (node.op == "call_method" and node.target in SCALAR_METHODS)
    )


def _is_flatten(node, shape) -> bool:
    """flatten(x, 1) as a function, a method, or ``x.view(x.size(0), -1)`` (or reshape)."""
    if node.target in FLATTENS or (node.op == "call_method" and node.target == "flatten"):
        start = _argument(node, 1, "start_dim", 0)
        end = _argument(node, 2, "end_dim", -1)
        return start == 1 and end in (-1, len(shape) - 1)
    if node.op == "call_method" and node.target in ("view", "reshape") and len(node.args) == 3:
        size, last = node.args[1], node.args[2]
        return (
            last == -1
            and isinstance(size, fx.Node)
            and size.op == "call_method"
            and size.target == "size"
            and size.args[:2] == (node.args[0], 0)
        )
    return False


def _spatial(dims, rank) -> bool:
    return rank == 4 and all(d in (2, 3, -1, -2) for d in dims)


def _argument(node, index, name, default):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _applied(node):
    """The node's own op with its other arguments, applied to a tensor of constants."""
    if node.op == "call_method":
        return lambda v: getattr(v, node.target)(*node.args[1:], **node.kwargs)
    return lambda v: node.target(v, *node.args[1:], **node.kwargs)


def _name(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))

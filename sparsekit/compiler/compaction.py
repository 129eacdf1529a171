"""Stage 3 of compile: exact channel dataflow compaction of the BN-folded model.

The model is traced with torch.fx and its channels analysed (``channel_states``): forward, each
channel of each tensor is live or a known constant; backward, each conv and linear layer keeps
only its live output rows that a later op reads. The graph is then written again so that every
tensor holds only the channels something reads (in increasing order; ``Compacted.plan`` records
which), and each layer is an ordinary narrow ``nn.Conv2d`` / ``nn.Linear`` (its kept rows x the
channels its input holds) under its own name:

- a constant input channel a layer reads is folded into its bias, exactly where it is the same
  at every position; under zero padding its contribution differs at the borders, so a
  ``ConstantBorder`` adds it convolved with an image of ones of the input's size;
- a depthwise conv keeps the channels it computes, and reads a constant one from a
  ``ChannelMap`` that writes it back;
- an add of two tensors that hold different channels adds the narrow one into the other by index
  (``ChannelAdd``), concat concatenates what each part holds, flatten maps channels to features;
- an op the pass does not understand (``channel_states.Opaque``), and the graph's outputs, get
  full-width tensors with the constants written back (``ChannelMap``): correct, not compacted.

The plan (per node: its live channels; per layer: its rows and whether it needs a border) is a
plain value: ``saving`` stores it, and ``compact(model, plan=...)`` rebuilds the same graph on a
fresh instance of the architecture, whose tensors are then loaded.
"""

from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..attention import SparseMultiheadAttention
from ..channels import ChannelAdd, ChannelMap, ConstantBorder
from ..geometry import is_channels_last
from .channel_states import (
    Add,
    Cat,
    Channels,
    Flatten,
    Layer,
    Opaque,
    Pointwise,
    channel_shape,
    node_dtype,
    op_of,
)

HELPERS = "sparsekit_channels"  # the submodule holding the compacted graph's channel modules
DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
}


class CompactionUnavailable(Exception):
    """The model cannot be compacted (torch.fx cannot trace it, or its example run fails)."""


@dataclass
class Compacted:
    """The compacted model, its plan (JSON-able), and what it saves per layer for the report:
    ``layers`` {name: {"in": [held, of], "out": [rows, of], "dense_macs", "mask_macs", "macs"}}
    (MACs on the example inputs: of the dense layer, of the mask's non-zeros, of the narrow
    layer), ``stopped`` {node: why} the ops that received full-width tensors compaction had
    narrowed, ``removed`` the layers no output depends on."""

    module: fx.GraphModule
    plan: dict
    layers: dict = field(default_factory=dict)
    stopped: dict = field(default_factory=dict)
    removed: list = field(default_factory=list)

    @property
    def narrowed(self) -> bool:
        """Whether any layer reads or computes fewer channels than its dense layer."""
        return any(
            r["in"][0] < r["in"][1] or r["out"][0] < r["out"][1] for r in self.layers.values()
        )

    def summary(self) -> dict:
        return {"layers": self.layers, "stopped": self.stopped, "removed": self.removed}


class _Tracer(fx.Tracer):
    """Keeps every conv, linear and BatchNorm (subclasses too) and every sparsekit module (the
    attention compile rebuilt keeps its class) a single node."""

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        leaves = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, SparseMultiheadAttention)
        return isinstance(module, leaves) or super().is_leaf_module(module, qualname)


def compact(model: nn.Module, example_inputs: tuple = (), *, plan: dict | None = None) -> Compacted:
    """``model`` (BN-folded, eval) with its dataflow compacted (see the module doc), analysed on
    ``example_inputs``, or rebuilt from a saved ``plan`` (then the tensors come from a saved
    state_dict). ``model``'s modules are shared with the result, its narrowed layers replaced
    there only. Raises ``CompactionUnavailable`` when the model cannot be traced or run."""
    try:
        graph = _Tracer().trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure: compile runs uncompacted
        raise CompactionUnavailable(f"torch.fx cannot trace the model: {error}") from error
    traced = fx.GraphModule(model, graph)
    if plan is None:
        try:
            with torch.inference_mode():
                ShapeProp(traced).propagate(*example_inputs)
        except Exception as error:  # noqa: BLE001 - reported, compile runs uncompacted
            raise CompactionUnavailable(f"the traced model fails on the inputs: {error}") from error
    else:
        _restore_shapes(traced.graph, plan)
    modules = dict(traced.named_modules())
    calls = _module_calls(traced.graph)
    ops = {node: op_of(node, modules, calls) for node in traced.graph.nodes}
    states = _forward(traced.graph, ops) if plan is None else _states_of(traced.graph, plan)
    if plan is None:
        _backward(traced.graph, ops, states)
    else:
        _rows_of(ops, plan)
    return _Writer(traced, ops, states, plan).write()


def _module_calls(graph: fx.Graph) -> dict:
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return calls


def _forward(graph, ops) -> dict:
    states = {}
    for node in graph.nodes:
        op = ops[node]
        if op is None:
            shape = channel_shape(node)
            if shape is not None and node.op != "output":
                states[node] = Channels.all_live(shape[1], node_dtype(node))
            continue
        states[node] = op.forward([states[n] for n in op.inputs])
        if states[node] is None:
            del states[node]
    return states


def _backward(graph, ops, states) -> None:
    """Which channels of each tensor a later op reads; sets each layer's rows."""
    need = {node: torch.zeros(len(s), dtype=torch.bool) for node, s in states.items()}
    for node in reversed(graph.nodes):
        if node.op == "output":
            for n in node.all_input_nodes:
                if n in need:
                    need[n][:] = True
            continue
        op = ops[node]
        if op is None:
            continue
        own = need.get(node)
        reads = op.backward(own, [states[n] for n in op.inputs])
        for n, read in zip(op.inputs, reads):
            need[n] |= read


# ---- the plan, saved and restored ----


def _restore_shapes(graph, plan) -> None:
    nodes = plan["nodes"]
    for node in graph.nodes:
        saved = nodes.get(node.name)
        if saved is not None:
            node.meta["tensor_meta"] = TensorMetadata(
                torch.Size(saved["shape"]), DTYPES[saved["dtype"]], False, None, None, False, {}
            )


def _states_of(graph, plan) -> dict:
    states = {}
    for node in graph.nodes:
        saved = plan["nodes"].get(node.name)
        if saved is not None and "live" in saved:
            live = torch.tensor([c == "1" for c in saved["live"]], dtype=torch.bool)
            states[node] = Channels(live, torch.zeros(len(live), dtype=DTYPES[saved["dtype"]]))
    return states


def _rows_of(ops, plan) -> None:
    for node, op in ops.items():
        if isinstance(op, Layer):
            op.rows = torch.tensor(plan["nodes"][node.name]["rows"], dtype=torch.long)


def _plan_entry(node, state) -> dict:
    meta = node.meta["tensor_meta"]
    entry = {"shape": list(meta.shape), "dtype": str(meta.dtype).removeprefix("torch.")}
    if state is not None:
        entry["live"] = "".join("1" if x else "0" for x in state.live.tolist())
    return entry


# ---- writing the compacted graph ----


class _Writer:
    def __init__(self, traced: fx.GraphModule, ops: dict, states: dict, plan: dict | None):
        self.traced, self.ops, self.states = traced, ops, states
        self.saved = plan
        self.graph = fx.Graph()
        self.env = {}  # old node -> (new node, channels it holds: index tensor, or None)
        self.widened = {}  # old node -> its full-width new node
        self.helpers = nn.Module()
        self.plan = {"nodes": {}}
        self.result = Compacted(None, self.plan)

    def write(self) -> Compacted:
        for node in self.traced.graph.nodes:
            if "tensor_meta" in node.meta and isinstance(node.meta["tensor_meta"], TensorMetadata):
                self.plan["nodes"][node.name] = _plan_entry(node, self.states.get(node))
            op = self.ops[node]
            if node.op == "output":
                self.graph.node_copy(node, lambda n: self._full(n, node))
            elif op is None or isinstance(op, Opaque):
                self._copy_opaque(node, op)
            else:
                self._write(node, op)
        parameter = next(self.traced.parameters(), None)
        if parameter is not None:
            self.helpers.to(parameter.device)
        self.traced.add_module(HELPERS, self.helpers)
        module = fx.GraphModule(self.traced, self.graph, class_name="CompactedModel")
        module.graph.eliminate_dead_code()
        module.delete_all_unused_submodules()
        module.recompile()
        self.graph = module.graph
        kept = {n.target for n in self.graph.nodes if n.op == "call_module"}
        self.result.removed = sorted(name for name in self.result.layers if name not in kept)
        self.result.module = module.eval()
        return self.result

    # -- helpers --

    def _holds(self, node) -> torch.Tensor:
        return self.env[node][1]

    def _add_helper(self, node, module: nn.Module, args) -> fx.Node:
        name = f"{node.name}_{type(module).__name__.lower()}"
        self.helpers.add_module(name, module)
        return self.graph.call_module(f"{HELPERS}.{name}", args)

    def _full(self, node, user=None) -> fx.Node:
        """``node``'s value at full width: its compacted tensor with the constants written
        back (once per node), or the node itself when it is not a channel tensor."""
        new, held = self.env[node]
        if held is None or len(held) == len(self.states[node]):
            return new
        if node not in self.widened:
            state = self.states[node]
            source = torch.full((len(state),), -1, dtype=torch.long)
            source[held] = torch.arange(len(held))
            if (state.live & (source < 0)).any():
                raise AssertionError(f"compaction: live channels of {node.name} were dropped")
            self.widened[node] = self._add_helper(node, ChannelMap(source, state.value), (new,))
        if user is not None and user.op != "output":
            why = getattr(self.ops.get(user), "why", "")
            self.result.stopped.setdefault(user.name, why)
        return self.widened[node]

    def _copy_opaque(self, node, op) -> None:
        new = self.graph.node_copy(node, lambda n: self._full(n, node))
        shape = channel_shape(node) if node.op != "output" else None
        held = torch.arange(shape[1]) if shape is not None and node in self.states else None
        self.env[node] = (new, held)
        if op is not None:
            self._record_layer(node)

    def _write(self, node, op) -> None:
        if isinstance(op, Layer):
            self.env[node] = self._layer(node, op)
            return
        if isinstance(op, Add):
            self.env[node] = self._add(node, op)
            return
        if isinstance(op, Cat):
            offsets = torch.tensor([0] + [len(self.states[p]) for p in op.inputs]).cumsum(0)
            held = torch.cat([self._holds(p) + o for p, o in zip(op.inputs, offsets)])
            parts = [self.env[p][0] for p in op.inputs]
            self.env[node] = (self.graph.call_function(torch.cat, (parts, 1)), held)
            return
        (x,) = op.inputs
        new_x, held = self.env[x]
        if isinstance(op, Flatten):
            features = (held[:, None] * op.area + torch.arange(op.area)).flatten()
            self.env[node] = (self.graph.call_function(torch.flatten, (new_x, 1)), features)
            return
        if isinstance(op, Pointwise) and node.op == "call_module":
            self._narrow_batchnorm(node, held)
        new = self.graph.node_copy(node, lambda n: self.env[n][0])
        self.env[node] = (new, held if node in self.states else None)

    def _narrow_batchnorm(self, node, held) -> None:
        module = self.traced.get_submodule(node.target)
        if type(module) not in (nn.BatchNorm1d, nn.BatchNorm2d) or len(held) == module.num_features:
            return
        narrow = type(module)(
            len(held), module.eps, module.momentum, module.affine, module.track_running_stats
        ).to(device=module.running_mean.device, dtype=module.running_mean.dtype)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                if getattr(module, name) is not None:
                    getattr(narrow, name).copy_(getattr(module, name)[held])
        self.traced.set_submodule(node.target, narrow.eval())

    def _add(self, node, op):
        (a, b), (sa, sb) = op.inputs, [self.states[n] for n in op.inputs]
        held_a, held_b = self._holds(a), self._holds(b)
        width = len(self.states[node])
        in_a, in_b = _membership(held_a, width), _membership(held_b, width)
        # a channel of the sum needs each operand to hold it or to know it as a constant
        usable = (in_a | in_b) & (in_a | ~sa.live) & (in_b | ~sb.live)
        held = usable.nonzero().flatten()
        if len(held) == 0:  # nothing either holds is usable: add at full width
            new = self.graph.node_copy(node, lambda n: self._full(n, node))
            return new, torch.arange(width)
        if torch.equal(held_a, held) and torch.equal(held_b, held):
            return self.graph.node_copy(node, lambda n: self.env[n][0]), held
        constant = torch.where(in_a[held], 0, sa.value[held]) + torch.where(
            in_b[held], 0, sb.value[held]
        )
        position = torch.full((width,), -1, dtype=torch.long)
        position[held] = torch.arange(len(held))
        a_args, b_args = _operand(held_a, usable, position), _operand(held_b, usable, position)
        helper = ChannelAdd(a_args[0], b_args[0], a_args[1], b_args[1], constant)
        return self._add_helper(node, helper, (self.env[a][0], self.env[b][0])), held

    def _layer(self, node, op: Layer):
        (x,) = op.inputs
        new_x, held_in = self.env[x]
        state, module, rows = self.states[x], op.module, op.rows
        weight = module.weight.detach()
        bias = torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
        if module.bias is not None:
            bias = module.bias.detach().double()
        bias = bias[rows]
        if op.depthwise:
            narrow, new_in = self._depthwise_input(node, op, new_x, held_in, state)
            built = _conv_like(module, narrow, bias, groups=len(rows))
            self.traced.set_submodule(node.target, built)
            out = self.graph.call_module(node.target, (new_in,))
            self._record_layer(node, narrow, len(rows))
            return out, rows
        constant = _membership(held_in, len(state)).logical_not() & ~state.live
        folded = weight[rows][:, constant.to(weight.device)].double() * _per_column(
            state.value[constant], weight
        )
        folded = folded.sum(1)  # [rows, kh, kw] for a conv, [rows] for a linear
        narrow = weight[rows][:, held_in]
        border = self._border(node, op, folded)
        if not border:
            bias = bias + (folded.flatten(1).sum(1) if folded.dim() > 1 else folded)
        built = _conv_like(module, narrow, bias, groups=1)
        self.traced.set_submodule(node.target, built)
        out = self.graph.call_module(node.target, (new_x,))
        if border:
            helper = ConstantBorder(
                folded.unsqueeze(1).to(weight.dtype), module.stride, module.padding, module.dilation
            )
            out = self._add_helper(node, helper, (out, new_x))
        self._record_layer(node, narrow, len(held_in))
        return out, rows

    def _border(self, node, op: Layer, folded) -> bool:
        """Whether the layer's constant inputs need a ``ConstantBorder`` (saved in the plan: a
        rebuilt model has no constants to tell)."""
        entry = self.plan["nodes"][node.name]
        if self.saved is not None:
            border = bool(self.saved["nodes"][node.name]["border"])
        else:
            border = not op.border_free and bool((folded != 0).any())
        entry["rows"], entry["border"] = op.rows.tolist(), border
        return border

    def _depthwise_input(self, node, op, new_x, held_in, state):
        """The kept rows' kernels, and an input holding exactly the channel each reads (from
        the compacted input, or written as its constant)."""
        self._border(node, op, torch.zeros(1))
        reads = op.source()[op.rows]
        position = torch.full((len(state),), -1, dtype=torch.long)
        position[held_in] = torch.arange(len(held_in))
        narrow = op.module.weight.detach()[op.rows]
        if torch.equal(reads, held_in):
            return narrow, new_x
        source = position[reads]
        fill = torch.where(source < 0, state.value[reads], 0)
        return narrow, self._add_helper(node, ChannelMap(source, fill), (new_x,))

    def _record_layer(self, node, narrow=None, held=None) -> None:
        """The layer's channels and MACs on the example inputs, for the report."""
        if node.op != "call_module":
            return
        module = self.traced.get_submodule(node.target)  # narrowed already, if it was
        original = self.ops[node].module if isinstance(self.ops[node], Layer) else module
        if not isinstance(original, (nn.Conv2d, nn.Linear)):
            return
        weight = original.weight.detach()
        shape = node.meta["tensor_meta"].shape
        positions = shape.numel() // shape[1]
        channels_in = weight.shape[1] * getattr(original, "groups", 1)
        run = weight if narrow is None else narrow
        self.result.layers[node.target] = {
            "in": [channels_in if held is None else held, channels_in],
            "out": [run.shape[0], weight.shape[0]],
            "dense_macs": weight.numel() * positions,
            "mask_macs": int((weight != 0).sum()) * positions,
            "macs": run.numel() * positions,
            "reduction": weight[0].numel(),
        }


def _membership(held: torch.Tensor, width: int) -> torch.Tensor:
    inside = torch.zeros(width, dtype=torch.bool)
    inside[held] = True
    return inside


def _operand(held, usable, position):
    """(where the operand's used channels go in the sum, which of its channels it uses: None
    for all, in order)."""
    used = usable[held]
    select = None if used.all() else used.nonzero().flatten()
    return position[held[used]], select


def _per_column(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return values.to(weight.device, torch.float64).view(1, -1, *([1] * (weight.dim() - 2)))


def _conv_like(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor, groups: int):
    """An ``nn.Conv2d`` (``module``'s geometry, ``groups``) or ``nn.Linear`` holding ``weight``
    and ``bias``, with ``module``'s device, dtype and weight memory format."""
    kind = {"device": weight.device, "dtype": weight.dtype}
    if isinstance(module, nn.Conv2d):
        built = nn.Conv2d(
            weight.shape[1] * groups,
            weight.shape[0],
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            groups,
            True,
            module.padding_mode,
            **kind,
        )
        if is_channels_last(module.weight):
            built = built.to(memory_format=torch.channels_last)
    else:
        built = nn.Linear(weight.shape[1], weight.shape[0], True, **kind)
    with torch.no_grad():
        built.weight.copy_(weight)
        built.bias.copy_(bias.to(weight.dtype))
    return built.eval().requires_grad_(module.weight.requires_grad)

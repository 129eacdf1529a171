"""Which layers compile may replace, and the attention modules it rebuilds so that it can.

A layer is replaced only where its parent calls it. Some module kinds read a child's weights
by attribute instead (``ATTRIBUTE_READERS``): a packed layer in that child's place has no
``weight`` and every forward would fail, so such a child is never replaced on its own. For
``nn.MultiheadAttention``, which reads ``out_proj.weight`` and holds its input projections as
parameters of its own, compile does better: it replaces the whole module by its
``SparseMultiheadAttention`` twin, whose four projections (``q_proj``, ``k_proj``, ``v_proj``,
``out_proj``) are layers it calls, and packs those. The twin is put in place in the reference
too, before anything is recorded: each projection is then a layer with its own input, checked,
timed and verified like any other (the twin computes what the module computed, see
``sparsekit.attention``).
"""

import warnings

from torch import nn

from .. import masks as masks_lib
from ..attention import PROJECTIONS, SparseMultiheadAttention
from ..errors import SparsekitWarning

# parent kind -> its children it reads by attribute (their weights) instead of calling them
ATTRIBUTE_READERS = {
    nn.MultiheadAttention: ("out_proj",),
    # its fast path (eval, batched, batch_first) hands these weights to one fused op
    nn.TransformerEncoderLayer: ("self_attn", "linear1", "linear2"),
}
# the attention parameters (see masks.ATTENTION_PARAMS) each projection is made of
PROJECTION_PARAMS = {
    "q_proj": ("in_proj_weight", "in_proj_bias", "q_proj_weight"),
    "k_proj": ("in_proj_weight", "in_proj_bias", "k_proj_weight"),
    "v_proj": ("in_proj_weight", "in_proj_bias", "v_proj_weight"),
}


def compile_targets(model: nn.Module, layer_masks: dict) -> tuple[list[str], list[str]]:
    """(the layers compile packs, the ``nn.MultiheadAttention`` modules it rebuilds first):
    the masked Conv2d / Linear layers (every one when no mask is given) and the projections of
    the masked attention modules (named as in the rebuilt module: ``<attention>.q_proj``, ...).
    A layer or attention module that a parent reads by attribute stays as it is, with a
    warning that says so."""
    modules = dict(model.named_modules())
    targets, attentions = [], []
    for name, module in modules.items():
        if isinstance(module, nn.MultiheadAttention):
            projections = _masked_projections(name, layer_masks)
            if not projections:
                continue
            reason = _read_by_parent(modules, name) or _unknown_forward(module)
            if reason:
                _warn(f"attention {name!r}, its projections included, stays dense: {reason}")
                continue
            attentions.append(name)
            targets += [f"{name}.{projection}" for projection in projections]
        elif isinstance(module, masks_lib.SPARSE_MODULES) and (
            not layer_masks or name in layer_masks
        ):
            reason = _read_by_parent(modules, name)
            if reason is None:
                targets.append(name)
            elif not isinstance(modules[_parent(name)], nn.MultiheadAttention):
                _warn(f"layer {name!r} stays dense: {reason}")
            # else an attention's out_proj: packed with its attention, or warned with it
    return targets, attentions


def rebuild_attention(model: nn.Module, names) -> nn.Module:
    """``model`` (in place) with each named ``nn.MultiheadAttention`` replaced by its
    ``SparseMultiheadAttention`` twin, whose dense projections it calls."""
    for name in names:
        model.set_submodule(name, SparseMultiheadAttention.from_module(model.get_submodule(name)))
    return model


def attention_of_layers(model: nn.Module, layer_names) -> list[str]:
    """The ``nn.MultiheadAttention`` modules of ``model`` that compile rebuilt, given the names
    of the sparse layers it put in a compiled model of that architecture: the parents of its
    projections (compile never replaces an attention's child on its own)."""
    modules = dict(model.named_modules())
    parents = {_parent(name) for name in layer_names if name.rpartition(".")[2] in PROJECTIONS}
    return sorted(p for p in parents if isinstance(modules.get(p), nn.MultiheadAttention))


def _masked_projections(name: str, layer_masks: dict) -> list[str]:
    """The projections of attention ``name`` to pack: those whose weights carry a mask, or all
    four when no mask is given (the zeros in the weights are the mask)."""
    if not layer_masks:
        return list(PROJECTIONS)
    masked = layer_masks.get(name, {})
    projections = [p for p, params in PROJECTION_PARAMS.items() if set(params) & set(masked)]
    return projections + (["out_proj"] if f"{name}.out_proj" in layer_masks else [])


def _read_by_parent(modules: dict, name: str) -> str | None:
    """Why the parent of module ``name`` would break if it were replaced (None: it would
    not)."""
    parent_name, _, child = name.rpartition(".")
    parent = modules[parent_name] if name else None
    for kind, children in ATTRIBUTE_READERS.items():
        if isinstance(parent, kind) and child in children:
            where = f" {parent_name!r}" if parent_name else " (the model itself)"
            return (
                f"it is read by attribute by its parent {_kind_name(kind)}{where}, which uses "
                "its weights instead of calling it"
            )
    return None


def _unknown_forward(module: nn.MultiheadAttention) -> str | None:
    if type(module).forward is nn.MultiheadAttention.forward:
        return None
    return (
        f"it is a {type(module).__name__}, whose forward is its own, not "
        "nn.MultiheadAttention's that SparseMultiheadAttention reproduces"
    )


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _kind_name(kind: type) -> str:
    return f"nn.{kind.__name__}" if kind.__module__.startswith("torch.nn") else kind.__name__


def _warn(message: str) -> None:
    warnings.warn(f"sparsekit.compile: {message}", SparsekitWarning, stacklevel=5)

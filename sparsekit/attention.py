"""SparseMultiheadAttention: ``nn.MultiheadAttention``'s eval forward with its projections as
layers it calls.

``nn.MultiheadAttention`` keeps its query, key and value projections as one parameter
(``in_proj_weight``, or ``q/k/v_proj_weight`` when the key and value sizes differ) and reads
``out_proj.weight`` by attribute instead of calling ``out_proj``, so none of its weights can be
swapped for a packed layer. ``SparseMultiheadAttention.from_module`` holds the same weights as
four linear layers, ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` (dense ``nn.Linear`` at
first: compile then packs them like any other Linear), and computes exactly what
``F.multi_head_attention_forward`` computes in eval mode: every option of the module and of its
call, dropout excepted (an inference module: eval mode drops nothing).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SparsekitError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


class SparseMultiheadAttention(nn.Module):
    """Drop-in inference replacement of ``nn.MultiheadAttention`` (same call, same results)
    whose four projections are layers it calls: ``nn.Linear`` or sparsekit's ``SparseLinear``.
    ``bias_k`` / ``bias_v`` (``add_bias_kv``) are buffers, None without them."""

    def __init__(
        self,
        q_proj: nn.Module,
        k_proj: nn.Module,
        v_proj: nn.Module,
        out_proj: nn.Module,
        *,
        num_heads: int,
        batch_first: bool = False,
        add_zero_attn: bool = False,
        bias_k: torch.Tensor | None = None,
        bias_v: torch.Tensor | None = None,
    ):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
        self.num_heads = num_heads
        self.batch_first = (
            batch_first  # read by nn.TransformerDecoder, as of the module it replaces
        )
        self.add_zero_attn = add_zero_attn
        self.register_buffer("bias_k", bias_k)
        self.register_buffer("bias_v", bias_v)

    @classmethod
    def from_module(cls, attention: nn.MultiheadAttention) -> "SparseMultiheadAttention":
        """The twin of ``attention`` (its weights copied as they are now, masked or not; its
        ``out_proj`` module taken over) with dense ``nn.Linear`` projections."""
        if attention._qkv_same_embed_dim:
            weights = attention.in_proj_weight.chunk(3)
        else:
            weights = (attention.q_proj_weight, attention.k_proj_weight, attention.v_proj_weight)
        bias = attention.in_proj_bias
        biases = (None, None, None) if bias is None else bias.chunk(3)
        q_proj, k_proj, v_proj = (_linear(w, b) for w, b in zip(weights, biases))
        return cls(
            q_proj,
            k_proj,
            v_proj,
            attention.out_proj,
            num_heads=attention.num_heads,
            batch_first=attention.batch_first,
            add_zero_attn=attention.add_zero_attn,
            bias_k=None if attention.bias_k is None else attention.bias_k.detach().clone(),
            bias_v=None if attention.bias_v is None else attention.bias_v.detach().clone(),
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``nn.MultiheadAttention.forward`` in eval mode: (output, attention weights or
        None)."""
        attended = attend(
            self.q_proj(query),
            self.k_proj(key),
            self.v_proj(value),
            self.bias_k,
            self.bias_v,
            self.num_heads,
            self.batch_first,
            self.add_zero_attn,
            key_padding_mask,
            need_weights,
            attn_mask,
            average_attn_weights,
            is_causal,
        )
        return self.out_proj(attended[0]), attended[1]

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, batch_first={self.batch_first}, "
            f"add_bias_kv={self.bias_k is not None}, add_zero_attn={self.add_zero_attn}"
        )


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    linear = nn.utils.skip_init(
        nn.Linear,
        weight.shape[1],
        weight.shape[0],
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


# torch.fx records attend as one call: a model holding this module stays traceable (BatchNorm
# folding reads the graph), as it was with nn.MultiheadAttention, which fx keeps whole
torch.fx.wrap("attend")


def attend(
    q,
    k,
    v,
    bias_k,
    bias_v,
    num_heads: int,
    batch_first: bool,
    add_zero_attn: bool,
    key_padding_mask,
    need_weights: bool,
    attn_mask,
    average_attn_weights: bool,
    is_causal: bool,
):
    """``F.multi_head_attention_forward`` in eval mode between the projections: the heads'
    attention over the projected ``q``, ``k``, ``v`` (in the layout of the call's inputs),
    returned as (the heads concatenated in that layout, ready for ``out_proj``; the weights
    when ``need_weights``, else None). The same steps in the same order as torch's, in a
    batch-first layout: a [batch * heads, ...] tensor of torch's is a [batch, heads, ...] one
    here."""
    if q.is_nested or k.is_nested or v.is_nested:
        raise SparsekitError("SparseMultiheadAttention: nested tensor inputs are not supported")
    if k.shape != v.shape:
        raise SparsekitError(
            f"SparseMultiheadAttention: key {tuple(k.shape)} and value {tuple(v.shape)} "
            "projections differ in sequence or batch size"
        )
    batched = q.dim() == 3
    if not batched:
        q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    elif not batch_first:
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    batch, tgt_len, embed_dim = q.shape
    src_len = k.shape[1]
    if is_causal and attn_mask is None:
        raise SparsekitError(
            "SparseMultiheadAttention: is_causal needs attn_mask (as nn.MultiheadAttention: "
            "nn.Transformer.generate_square_subsequent_mask makes one)"
        )
    # as torch: the causal hint goes to scaled_dot_product_attention only when no other mask
    # joins it and no weights are returned; else attn_mask itself is applied
    causal = is_causal and key_padding_mask is None and not need_weights
    mask = None if causal else _additive(attn_mask, q.dtype, "attn_mask")
    if mask is not None:
        expected = (tgt_len, src_len) if mask.dim() == 2 else (batch * num_heads, tgt_len, src_len)
        if tuple(mask.shape) != expected:
            raise SparsekitError(
                f"SparseMultiheadAttention: attn_mask has shape {tuple(mask.shape)}, expected "
                f"{expected}"
            )
        mask = mask.view(-1, 1 if mask.dim() == 2 else num_heads, tgt_len, src_len)
    padding = _additive(key_padding_mask, q.dtype, "key_padding_mask")
    if padding is not None and tuple(padding.shape) != (batch, src_len):
        raise SparsekitError(
            f"SparseMultiheadAttention: key_padding_mask has shape {tuple(padding.shape)}, "
            f"expected {(batch, src_len)}"
        )
    if bias_k is not None:  # one more key and value, which no mask hides
        k = torch.cat([k, bias_k.reshape(1, 1, embed_dim).expand(batch, 1, embed_dim)], dim=1)
        v = torch.cat([v, bias_v.reshape(1, 1, embed_dim).expand(batch, 1, embed_dim)], dim=1)
        mask, padding = _one_more_key(mask), _one_more_key(padding)
    q, k, v = (t.unflatten(-1, (num_heads, -1)).transpose(1, 2) for t in (q, k, v))
    if add_zero_attn:  # a zero key and value, likewise
        zeros = k.new_zeros(batch, num_heads, 1, k.shape[-1])
        k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)
        mask, padding = _one_more_key(mask), _one_more_key(padding)
    if padding is not None:
        padding = padding.view(batch, 1, 1, -1)
        mask = padding if mask is None else mask + padding
    if need_weights:
        scores = (q * math.sqrt(1.0 / q.shape[-1])) @ k.transpose(-2, -1)
        weights = (scores if mask is None else scores + mask).softmax(dim=-1)
        out = weights @ v
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if not batched:
            weights = weights.squeeze(0)
    else:
        out, weights = F.scaled_dot_product_attention(q, k, v, mask, is_causal=causal), None
    # [batch, heads, target, head_dim] -> the inputs' layout, heads concatenated (contiguous)
    if not batched:
        return out.transpose(1, 2).flatten(2).squeeze(0), weights
    if batch_first:
        return out.transpose(1, 2).flatten(2), weights
    return out.permute(2, 0, 1, 3).flatten(2), weights


def _additive(mask, dtype, name: str):
    """A boolean mask (True: not attended) as the float mask torch adds to the scores."""
    if mask is None or torch.is_floating_point(mask):
        return mask
    if mask.dtype != torch.bool:
        raise SparsekitError(
            f"SparseMultiheadAttention: {name} must be bool or floating point, got {mask.dtype}"
        )
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))


def _one_more_key(mask):
    return None if mask is None else F.pad(mask, (0, 1))

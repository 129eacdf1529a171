"""IMP-Refill and Refill+ (Structure-LTH): turn an unstructured mask into whole output channels.

Training-time transform: it changes the function on purpose (channels are refilled where IMP
had pruned, and pruned elsewhere); compile() then packs the result exactly.
"""

import torch

from ..errors import SparsekitError
from ..masks import check_mask

CRITERIA = ("remain", "l1")


def refill(
    weight: torch.Tensor, mask: torch.Tensor, *, criterion: str = "remain", extra: float = 0.0
):
    """A channel mask (same shape and dtype as ``mask``) keeping the top output channels.

    ``extra=0`` (IMP-Refill) keeps ``round(kept / row_len)`` channels, the unstructured mask's
    parameter count in whole channels (at least one while anything is kept); ``extra`` in
    (0, 1] (IMP-Refill+) adds that fraction of the remaining channels. Channels are ranked by
    ``criterion``: ``"remain"`` (kept weights per channel) or ``"l1"`` (L1 norm of the kept
    weights); ties go to the larger L1 norm, then to the lower channel index, so the result is
    deterministic and purely channel-wise.
    """
    check_mask(weight, mask, "weight")
    if criterion not in CRITERIA:
        raise SparsekitError(f"criterion: {criterion!r} is not one of {', '.join(CRITERIA)}")
    if not 0.0 <= extra <= 1.0:
        raise SparsekitError(f"extra: {extra!r} must lie in [0, 1]")
    out = weight.shape[0]
    kept = mask.reshape(out, -1).bool()
    row_len = kept.shape[1]
    l1 = (weight.detach().reshape(out, -1).abs().double() * kept).sum(1)
    remain = kept.sum(1).double()
    channels = int(remain.sum().item()) / row_len
    count = round(channels + (out - channels) * extra)
    count = min(out, max(count, 1 if remain.sum() > 0 else 0))
    primary = remain if criterion == "remain" else l1
    order = torch.sort(l1, descending=True, stable=True).indices  # tie-break: L1, then index
    order = order[torch.sort(primary[order], descending=True, stable=True).indices]
    rows = torch.zeros(out, dtype=torch.bool)
    rows[order[:count]] = True
    return rows.view(-1, *([1] * (mask.dim() - 1))).expand_as(mask).to(mask.dtype).clone()


def refill_masks(model: torch.nn.Module, masks: dict, **kwargs) -> dict:
    """``refill`` over many layers: ``{param name: mask}`` -> the same keys, channel masks,
    ranked on the model's current (effective, also under prune hooks) weights."""
    result = {}
    for key, mask in masks.items():
        module_name, _, param = key.rpartition(".")
        try:
            weight = getattr(model.get_submodule(module_name), param)
        except AttributeError as error:
            raise SparsekitError(
                f"refill_masks: {key!r} names no parameter of the model"
            ) from error
        result[key] = refill(weight, mask, **kwargs)
    return result

"""SPDY's error database: each prunable layer's weight at each sparsity level (the level's mask
from ``levels.level_masks``, the kept weights optionally reconstructed by least squares on
calibration activations), and the model stitched from one level per layer.

Reconstruction (per output row, over the row's kept weights ``S``): ``w_S = argmin ||X_S w_S -
X w||^2 + damp ||w_S||^2`` where ``X`` holds the layer's calibration inputs as im2col rows and
``damp`` is 1% of the mean of ``diag(X^T X)``; the Gram matrix ``X^T X`` is accumulated in fp64 on
the model's device. It solves one system per row and level, of the row's kept size: meant for
small models (its cost grows with the cube of a row's kept weights).

BatchNorm recalibration (optional): each stitched model's BatchNorm statistics are re-estimated
on the calibration inputs, as the pruned layers change what each BatchNorm sees; one-shot
channel pruning loses far less accuracy so (without it a pruned channel still has its dense
mean subtracted, and its constant output shifts the next layer).
"""

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..compiler.recording import as_input_tuple, record_inputs
from ..compiler.reference import copy_model
from ..errors import SparsekitError
from ..zoo import calibrate_batchnorm
from .levels import level_masks

DAMP = 0.01


def gram(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[groups, K, K]``: ``X^T X`` of the layer's input ``x`` as the rows its weight rows
    multiply (im2col rows of a Conv2d per group, the last dimension of a Linear), fp64."""
    if isinstance(module, nn.Linear):
        rows = x.detach().double().reshape(-1, x.shape[-1])
        return (rows.T @ rows)[None]
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise SparsekitError(
            "reconstruct: only Conv2d layers with numeric zero padding are supported"
        )
    cols = F.unfold(
        x.detach().double(), module.kernel_size, module.dilation, module.padding, module.stride
    )
    groups = module.groups
    per_group = cols.shape[1] // groups
    cols = (
        cols.view(cols.shape[0], groups, per_group, -1)
        .permute(1, 0, 3, 2)
        .reshape(groups, -1, per_group)
    )
    return cols.transpose(1, 2) @ cols


def reconstructed(weight: torch.Tensor, mask: torch.Tensor, grams: torch.Tensor) -> torch.Tensor:
    """``weight`` with only ``mask``'s weights kept, each row's kept weights refitted to the
    dense row's output on the calibration inputs whose Gram matrices (per group) are ``grams``."""
    out = weight.shape[0]
    rows, kept = weight.detach().double().reshape(out, -1), mask.reshape(out, -1).bool()
    result = torch.zeros_like(rows)
    per_group = out // grams.shape[0]
    for r in range(out):
        support = kept[r].nonzero().flatten()
        if support.numel() == kept.shape[1]:
            result[r] = rows[r]
        elif support.numel():
            h = grams[r // per_group]
            damp = DAMP * h.diagonal().mean().clamp(min=1e-12)
            system = h[support][:, support] + damp * torch.eye(
                support.numel(), dtype=h.dtype, device=h.device
            )
            result[r, support] = torch.linalg.solve(system, h[support] @ rows[r])
    return result.view_as(weight).to(weight.dtype)


class ErrorDatabase:
    """Per layer and level, the pruned weight (``weight(layer, level)``) and its mask
    (``masks_of(choice)``); ``stitched(choice)`` is the model with each layer at its chosen
    level, a working copy updated in place (only the layers whose level changed), its BatchNorm
    statistics re-estimated on ``calib_inputs`` with ``recalibrate_batchnorm``."""

    def __init__(
        self,
        model: nn.Module,
        layers,
        levels,
        transform=None,
        *,
        calib_inputs=(),
        reconstruct: bool = False,
        recalibrate_batchnorm: bool = False,
        progress: bool = False,
    ):
        calib_inputs = list(calib_inputs)
        if (reconstruct or recalibrate_batchnorm) and not calib_inputs:
            raise SparsekitError(
                "reconstruct / recalibrate_batchnorm: calibration inputs are needed"
            )
        modules = dict(model.named_modules())
        self.layers, self.levels = list(layers), tuple(levels)
        self.masks = {
            name: [m.bool() for m in level_masks(modules[name].weight, self.levels, transform)]
            for name in self.layers
        }
        self.weights = {}  # [layer][level], only when reconstructed
        if reconstruct:
            grams = self._grams(model, calib_inputs)
            for name in tqdm(
                self.layers, desc="sparsekit.spdy reconstruct", unit="layer", disable=not progress
            ):
                weight = modules[name].weight
                self.weights[name] = [
                    reconstructed(weight, m, grams[name]) for m in self.masks[name]
                ]
        self._model = copy_model(model).eval()
        self._dense = {name: modules[name].weight.detach().clone() for name in self.layers}
        self._current = dict.fromkeys(self.layers)
        self._recalibration_batches = (
            [as_input_tuple(b) for b in calib_inputs] if recalibrate_batchnorm else None
        )

    def _grams(self, model, calib_inputs) -> dict:
        grams = {}
        modules = dict(model.named_modules())
        for batch in calib_inputs:
            seen = record_inputs(model, self.layers, as_input_tuple(batch))
            for name in self.layers:
                if name not in seen:
                    raise SparsekitError(
                        f"reconstruct: the calibration inputs never reach layer {name!r}"
                    )
                g = gram(modules[name], seen[name])
                grams[name] = g if name not in grams else grams[name] + g
        return grams

    def weight(self, layer: str, level: int) -> torch.Tensor:
        if layer in self.weights:
            return self.weights[layer][level]
        return self._dense[layer] * self.masks[layer][level].to(self._dense[layer].dtype)

    def masks_of(self, choice) -> dict:
        """``{param name: 0/1 float mask}`` of a choice of one level index per layer."""
        return {
            f"{name}.weight": self.masks[name][level].float()
            for name, level in zip(self.layers, choice)
        }

    def stitched(self, choice) -> nn.Module:
        """The model with each layer's weight at its level in ``choice`` (one index per layer)."""
        if len(choice) != len(self.layers):
            raise SparsekitError(f"stitched: {len(choice)} levels for {len(self.layers)} layers")
        changed = {
            name: level for name, level in zip(self.layers, choice) if self._current[name] != level
        }
        with torch.no_grad():
            for name, level in changed.items():
                self._model.get_submodule(name).weight.copy_(self.weight(name, level))
                self._current[name] = level
        if changed and self._recalibration_batches is not None:
            calibrate_batchnorm(self._model, self._recalibration_batches)
        return self._model

"""STR-BN: soft-threshold reparameterisation (STR) of BatchNorm's gamma, for channel pruning.

``gamma_s = sign(gamma) * relu(|gamma| - sigmoid(s))`` with one learnable ``s`` per layer, and
the bias multiplied by ``gamma_s``, so a channel whose gamma falls under the threshold outputs
exactly 0 and the conv filter feeding it can be removed (``bn_channel_mask``).
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SparsekitError
from ..graph import conv_bn_pairs


class STRBatchNorm2d(nn.BatchNorm2d):
    """Drop-in BatchNorm2d whose affine parameters are soft-thresholded (see module doc)."""

    def __init__(self, num_features: int, *, threshold_init: float = -10.0, **kwargs):
        super().__init__(num_features, affine=True, **kwargs)
        self.threshold = nn.Parameter(torch.tensor(float(threshold_init)))

    def affine_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (gamma_s, beta * gamma_s) actually applied."""
        gamma = torch.sign(self.weight) * F.relu(self.weight.abs() - torch.sigmoid(self.threshold))
        return gamma, self.bias * gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine_params()
        use_batch = self.training or self.running_mean is None
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative average, as BatchNorm2d keeps it
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(
            x, self.running_mean, self.running_var, gamma, beta, use_batch, momentum, self.eps
        )

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, threshold_init: float = -10.0) -> "STRBatchNorm2d":
        if not bn.affine:
            raise SparsekitError("STRBatchNorm2d: the BatchNorm2d must be affine")
        new = cls(
            bn.num_features,
            threshold_init=threshold_init,
            eps=bn.eps,
            momentum=bn.momentum,
            track_running_stats=bn.track_running_stats,
        )
        new.load_state_dict(bn.state_dict(), strict=False)
        return new.to(bn.weight.device).train(bn.training)


def convert_to_str_bn(model: nn.Module, threshold_init: float = -10.0) -> nn.Module:
    """Swap every BatchNorm2d of ``model`` (in place) for an STRBatchNorm2d; returns ``model``."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.BatchNorm2d:
            model.set_submodule(name, STRBatchNorm2d.from_batchnorm(module, threshold_init))
    return model


def bn_channel_mask(model: nn.Module) -> dict[str, torch.Tensor]:
    """{conv param name: mask} pruning the output channels whose following BatchNorm has a zero
    (thresholded) gamma; compile() accepts it. Convs without such channels are left out."""
    modules = dict(model.named_modules())
    masks = {}
    for conv_name, bn_name in conv_bn_pairs(model):
        bn = modules[bn_name]
        gamma = bn.affine_params()[0] if hasattr(bn, "affine_params") else bn.weight
        if gamma is None or bool(gamma.detach().ne(0).all()):
            continue
        weight = modules[conv_name].weight
        alive = gamma.detach().ne(0).to(weight.dtype)
        masks[f"{conv_name}.weight"] = (
            alive.view(-1, *([1] * (weight.dim() - 1))).expand_as(weight).clone()
        )
    return masks

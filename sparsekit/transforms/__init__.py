"""Mask transforms (training time): unstructured masks -> masks that the planners pack exactly.

They change the function on purpose (IMP-Refill and Refill+, IMP-Regroup, kernel masks, STR-BN
channel masks, IMP with rewinding); ``sparsekit.compile`` then packs whatever mask it is given.
"""

from .imp import (
    global_magnitude_masks,
    imp,
    layerwise_magnitude_masks,
    magnitude_mask,
    magnitude_order,
    prunable_convs,
)
from .kernel import acceleration_rate, kernel_magnitude_mask, kernel_mask
from .refill import refill, refill_masks
from .regroup import regroup
from .str_bn import STRBatchNorm2d, bn_channel_mask, convert_to_str_bn

__all__ = [
    "STRBatchNorm2d",
    "acceleration_rate",
    "bn_channel_mask",
    "convert_to_str_bn",
    "global_magnitude_masks",
    "imp",
    "kernel_magnitude_mask",
    "kernel_mask",
    "layerwise_magnitude_masks",
    "magnitude_mask",
    "magnitude_order",
    "prunable_convs",
    "refill",
    "refill_masks",
    "regroup",
]

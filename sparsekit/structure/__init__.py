"""Structure: mask transforms (training time) and the block planners that pack masks exactly."""

from .blocks import Block, BlockPlan
from .imp import global_magnitude_masks, imp, prunable_convs
from .kernel import acceleration_rate, kernel_mask
from .planners import PLANNERS, STRUCTURES, plan
from .refill import refill, refill_masks
from .regroup import regroup
from .str_bn import STRBatchNorm2d, bn_channel_mask, convert_to_str_bn

__all__ = [
    "Block", "BlockPlan", "PLANNERS", "STRBatchNorm2d", "STRUCTURES", "acceleration_rate",
    "bn_channel_mask", "convert_to_str_bn", "global_magnitude_masks", "imp", "kernel_mask",
    "plan", "prunable_convs", "refill", "refill_masks", "regroup",
]

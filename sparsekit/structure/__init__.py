"""Structure: mask transforms (training time) and the block planners that pack masks exactly."""

from .blocks import Block, BlockPlan
from .planners import PLANNERS, STRUCTURES, plan
from .refill import refill

__all__ = ["Block", "BlockPlan", "PLANNERS", "STRUCTURES", "plan", "refill"]

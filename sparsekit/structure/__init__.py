"""Structure: block planners that turn a layer's kept weights into dense blocks, exactly."""

from .blocks import Block, BlockPlan
from .planners import PLANNERS, STRUCTURES, plan

__all__ = ["Block", "BlockPlan", "PLANNERS", "STRUCTURES", "plan"]

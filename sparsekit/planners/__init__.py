"""Block planners (pack time): a layer's kept-weight pattern -> the dense blocks that cover it.

Every planner is an exact cover: each kept weight lies in exactly one block, none is dropped.
``plan`` runs the planner named by ``structure`` on every group of a layer (``"auto"``: the plan of
lowest estimated cost); ``cost`` holds the cost model that ranks plans nothing has measured.
Mask transforms, which change the function on purpose, live in ``sparsekit.transforms``.
"""

from .blocks import Block, BlockPlan
from .plan import PLANNERS, STRUCTURES, plan

__all__ = ["Block", "BlockPlan", "PLANNERS", "STRUCTURES", "plan"]

"""A block plan: which dense blocks (row set x column set) cover a layer's kept weights."""

from dataclasses import dataclass

import torch

from . import cost


@dataclass(frozen=True, eq=False)
class Block:
    """Output rows x weight columns (columns in ``weight.reshape(out, -1)`` order), both sorted."""

    rows: torch.Tensor
    cols: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows.numel(), self.cols.numel())


@dataclass(frozen=True, eq=False)
class BlockPlan:
    """The blocks one planner chose for a ``[out, cols]`` pattern with ``nnz`` kept weights.

    ``cols`` counts the columns of one group (``in/groups * kh * kw``); a block's rows always lie
    in one group and its columns index that group's slice of the input.
    """

    structure: str
    out: int
    cols: int
    groups: int
    blocks: tuple[Block, ...]
    nnz: int

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def stored(self) -> int:
        """Values stored in blocks, kept weights plus the zeros that fill the blocks."""
        return sum(r * c for r, c in (b.shape for b in self.blocks))

    @property
    def density(self) -> float:
        """Kept weights / stored values: 1.0 means the blocks hold no padding zeros."""
        return self.nnz / self.stored if self.stored else 1.0

    @property
    def flops_ratio(self) -> float:
        """Multiply-adds of the blocks relative to the dense layer."""
        return self.stored / (self.out * self.cols)

    @property
    def cost(self) -> float:
        """Estimated time relative to the dense layer, under the cost model of ``cost``."""
        if self.structure == "dense":
            return 1.0
        return cost.plan_cost(self.blocks) / cost.dense_cost(self.out, self.cols)

    def summary(self) -> dict:
        return {
            "structure": self.structure,
            "blocks": self.num_blocks,
            "nnz": self.nnz,
            "stored": self.stored,
            "density": self.density,
            "flops_ratio": self.flops_ratio,
            "cost": self.cost,
        }

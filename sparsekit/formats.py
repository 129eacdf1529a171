"""The one packed format: a layer's kept weights as a list of dense blocks.

Block ``b`` owns output rows ``row_idx[row_ptr[b]:row_ptr[b+1]]`` and weight columns
``col_idx[col_ptr[b]:col_ptr[b+1]]`` (``weight.reshape(out, -1)`` order, inside one group) and
stores the dense tile ``W[rows][:, cols]`` row-major at ``values[val_ptr[b]:val_ptr[b+1]]``.
``block_ptr`` stacks ``row_ptr``, ``col_ptr`` and ``val_ptr`` as one int64 ``[3, blocks + 1]``
tensor, the layout the ops take. Indices are int32; values keep the weight's dtype.
"""

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from . import masks
from .errors import SparsekitError
from .planners import plan as plan_blocks

INDEX_LIMIT = torch.iinfo(torch.int32).max


@dataclass(frozen=True, eq=False)
class PackedWeight:
    """A Linear or Conv2d weight packed as dense blocks; the layer keeps its bias itself."""

    weight_shape: tuple[int, ...]  # (out, in) or (out, in // groups, kh, kw)
    groups: int
    values: torch.Tensor
    row_idx: torch.Tensor
    col_idx: torch.Tensor
    block_ptr: torch.Tensor
    structure: str = "custom"  # the planner that chose the blocks

    @property
    def out_features(self) -> int:
        return self.weight_shape[0]

    @property
    def in_features(self) -> int:
        """Input channels (Conv2d) or features (Linear), all groups together."""
        return self.weight_shape[1] * self.groups

    @property
    def kernel_size(self) -> tuple[int, ...]:
        """``(kh, kw)`` for a Conv2d weight, ``()`` for a Linear one."""
        return tuple(self.weight_shape[2:])

    @property
    def num_blocks(self) -> int:
        return self.block_ptr.shape[1] - 1

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    def blocks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(rows, cols, tile)`` of every block, ``tile`` a ``[rows, cols]`` view of values."""
        rp, cp, vp = self.block_ptr.tolist()
        for b in range(self.num_blocks):
            rows = self.row_idx[rp[b] : rp[b + 1]]
            cols = self.col_idx[cp[b] : cp[b + 1]]
            yield rows, cols, self.values[vp[b] : vp[b + 1]].view(rows.numel(), cols.numel())

    def to(self, device) -> "PackedWeight":
        return dataclasses.replace(
            self,
            values=self.values.to(device),
            row_idx=self.row_idx.to(device),
            col_idx=self.col_idx.to(device),
            block_ptr=self.block_ptr.to(device),
        )

    def check(self, name: str = "weight") -> "PackedWeight":
        """This pack, after checking that its tensors form a valid index of its weight shape
        (dtypes, offsets, indices in range, each block inside one group): what every layout is
        built from, so that no kernel reads out of bounds. SparsekitError naming ``name`` if not."""
        problem = self._problem()
        if problem:
            raise SparsekitError(f"{name}: the packed tensors are malformed: {problem}")
        return self

    def _problem(self) -> str | None:
        if self.row_idx.dtype != torch.int32 or self.col_idx.dtype != torch.int32:
            return "row_idx and col_idx must be int32"
        if self.row_idx.dim() != 1 or self.col_idx.dim() != 1 or self.values.dim() != 1:
            return "values, row_idx and col_idx must be 1-D"
        if (
            self.block_ptr.dtype != torch.int64
            or self.block_ptr.dim() != 2
            or self.block_ptr.shape[0] != 3
        ):
            return "block_ptr must be int64 of shape [3, blocks + 1]"
        if self.block_ptr.shape[1] < 1 or self.groups < 1 or self.out_features % self.groups:
            return "block_ptr needs a first offset, and groups must divide the rows"
        ptr = self.block_ptr.cpu()
        rows, cols = ptr[0].diff(), ptr[1].diff()
        if bool(ptr[:, 0].any()) or bool((rows < 1).any()) or bool((cols < 1).any()):
            return "block offsets must start at 0 and every block hold a row and a column"
        if not torch.equal(ptr[2].diff(), rows * cols):
            return "block value offsets do not match rows x columns"
        if ptr[:, -1].tolist() != [self.row_idx.numel(), self.col_idx.numel(), self.values.numel()]:
            return "block offsets do not end at the lengths of row_idx, col_idx and values"
        row_idx, col_idx = self.row_idx.cpu().long(), self.col_idx.cpu().long()
        if row_idx.numel() and not (
            0 <= int(row_idx.min()) and int(row_idx.max()) < self.out_features
        ):
            return f"a row index lies outside [0, {self.out_features})"
        if col_idx.numel() and not (
            0 <= int(col_idx.min()) and int(col_idx.max()) < math.prod(self.weight_shape[1:])
        ):
            return f"a column index lies outside [0, {math.prod(self.weight_shape[1:])})"
        group = row_idx // (self.out_features // self.groups)
        first = group[ptr[0, :-1]].repeat_interleave(rows)
        if not torch.equal(group, first):
            return "a block's rows span several groups"
        return None

    def summary(self) -> dict:
        """Structure, blocks, kept weights (nnz), stored values, density (kept weights over the
        dense weight's), fill (kept weights over stored values: 1 when the blocks store no zero)
        and FLOPs relative to the dense layer."""
        cols = math.prod(self.weight_shape[1:])
        stored, nnz = self.values.numel(), int(torch.count_nonzero(self.values))
        return {
            "weight_shape": list(self.weight_shape),
            "groups": self.groups,
            "structure": self.structure,
            "blocks": self.num_blocks,
            "nnz": nnz,
            "stored": stored,
            "density": nnz / (self.out_features * cols),
            "fill": nnz / stored if stored else 1.0,
            "flops_ratio": stored / (self.out_features * cols),
        }

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"PackedWeight(shape={self.weight_shape}, groups={self.groups}, "
            f"structure={self.structure!r}, blocks={s['blocks']}, fill={s['fill']:.3f}, "
            f"flops_ratio={s['flops_ratio']:.3f}, dtype={self.dtype})"
        )


def pack(
    weight: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    structure: str = "auto",
    groups: int = 1,
    name: str = "weight",
) -> PackedWeight:
    """Pack ``weight * mask`` into dense blocks chosen by the planner named by ``structure``.

    ``weight`` is a Linear ``[out, in]`` or Conv2d ``[out, in/groups, kh, kw]`` weight; ``mask``
    holds 0/1 of the same shape (bool, int or float), ``None`` meaning the weight's own zeros.
    Every kept non-zero lands in exactly one block: ``unpack(pack(w, m))`` equals ``w * m``
    (bit for bit, but for the sign of zeros). Inputs are never modified. ``name`` labels errors.
    """
    masks.check_weight(weight, name)
    out, cols = weight.shape[0], weight[0].numel()
    if not isinstance(groups, int) or groups < 1 or out % groups:
        raise SparsekitError(
            f"groups: {groups!r} must be a positive divisor of {name}'s {out} rows"
        )
    if out > INDEX_LIMIT or cols > INDEX_LIMIT:
        raise SparsekitError(
            f"{name}: shape {tuple(weight.shape)} has more than 2**31 - 1 rows or columns, "
            "beyond the int32 indices of the packed format"
        )
    pattern = masks.layer_pattern(weight, mask, name).reshape(out, cols)
    kernel_area = weight[0, 0].numel()
    block_plan = plan_blocks(pattern, structure, groups=groups, kernel_area=kernel_area)
    dense = weight.detach().reshape(out, cols)
    return _from_plan(dense, pattern, block_plan, tuple(weight.shape), groups, name)


def _from_plan(dense, pattern, block_plan, shape, groups, name) -> PackedWeight:
    device = dense.device
    blocks = block_plan.blocks
    none = torch.zeros(0, dtype=torch.int64)
    rows = torch.cat([b.rows for b in blocks] or [none]).to(device)
    cols = torch.cat([b.cols for b in blocks] or [none]).to(device)
    sizes = torch.tensor([[b.rows.numel(), b.cols.numel()] for b in blocks], dtype=torch.int64)
    sizes = sizes.reshape(-1, 2)
    block_ptr = torch.zeros(3, len(blocks) + 1, dtype=torch.int64)
    block_ptr[:, 1:] = torch.stack([sizes[:, 0], sizes[:, 1], sizes.prod(1)]).cumsum(1)
    r, c = _block_positions(block_ptr, rows.long(), cols.long())
    # every kept weight covered exactly once, counted over all blocks at once
    covered = torch.zeros(pattern.numel(), dtype=torch.int32, device=device)
    covered.index_add_(0, r * pattern.shape[1] + c, torch.ones_like(r, dtype=torch.int32))
    if not bool((covered[pattern.flatten()] == 1).all()):
        raise SparsekitError(
            f"{name}: planner {block_plan.structure!r} did not cover every kept weight exactly once"
        )
    kept = torch.where(pattern, dense, torch.zeros((), dtype=dense.dtype, device=device))
    return PackedWeight(
        weight_shape=shape,
        groups=groups,
        values=kept[r, c],
        row_idx=rows.to(device=device, dtype=torch.int32),
        col_idx=cols.to(device=device, dtype=torch.int32),
        block_ptr=block_ptr.to(device),
        structure=block_plan.structure,
    )


def _block_positions(block_ptr, rows, cols) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every stored value, blocks in order, each block's tile row-major: the
    gather that packs the values and the scatter that unpacks them."""
    row_ptr, col_ptr, value_ptr = block_ptr.to(rows.device)
    widths = col_ptr.diff()
    block = torch.repeat_interleave(
        torch.arange(widths.numel(), device=rows.device), value_ptr.diff()
    )
    within = torch.arange(int(value_ptr[-1]), device=rows.device) - value_ptr[block]
    width = widths[block]
    return rows[row_ptr[block] + within // width], cols[col_ptr[block] + within % width]


def unpack(packed: PackedWeight) -> torch.Tensor:
    """The dense weight the blocks hold, of ``packed.weight_shape``; zeros outside the blocks.

    Blocks that share a position add up there, as they do in the ops.
    """
    cols = math.prod(packed.weight_shape[1:])
    dense = torch.zeros(packed.out_features, cols, dtype=packed.dtype, device=packed.device)
    positions = _block_positions(packed.block_ptr, packed.row_idx.long(), packed.col_idx.long())
    dense.index_put_(positions, packed.values, accumulate=True)
    return dense.reshape(packed.weight_shape)

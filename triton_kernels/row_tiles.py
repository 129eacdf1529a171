"""The Triton backend's prepacked layout of a pack: output rows in tiles of 32, 64 or 128, each
with the K-tiles of every block that touches its rows.

A K-tile is ``K_TILE`` columns of one block at one tap (``kh * KW + kw``): their input channels
(the group's first channel included, ``-1`` where the tile is padded) and the weights
``[K_TILE, rows]`` of the row tile's rows (zero for rows the block does not own). So a work item
(a tile of output positions x a row tile) reads, per K-tile, one row base per position plus
channel offsets, with one bounds mask per position, and sums every block touching its rows in
block order: rows shared by several blocks need no second pass and add up deterministically.

Rows are ordered by the first block that owns them, so a row tile mostly holds one block's rows;
rows no block owns come last, in tiles without K-tiles (the kernel writes their bias).
"""

from dataclasses import dataclass

import torch

K_TILE = 32  # columns per K-tile: two bf16/fp16 MMA k-steps, four tf32 ones
ROW_TILES = (32, 64, 128)
# the gathered input costs about twice an MMA column per element (a row tile re-reads it)
INPUT_COST = 2


@dataclass(frozen=True)
class RowTiles:
    rows: int  # rows per tile
    tile_rows: torch.Tensor  # int32 [tiles, rows]: output row of each slot, -1 pads
    tile_ptr: torch.Tensor  # int32 [tiles + 1]: K-tiles of tile t are tile_ptr[t]:tile_ptr[t + 1]
    # one K-tile more than the tiles hold, a sentinel at tap 0 with every channel -1: the
    # kernel prefetches the K-tile after each row tile's last
    taps: torch.Tensor  # int32 [ktiles + 1]
    channels: torch.Tensor  # int32 [ktiles + 1, K_TILE]: input channel, -1 pads
    weights: torch.Tensor  # [ktiles, K_TILE, rows], the pack's dtype
    # every K-tile reads K_TILE consecutive channels from a multiple of K_TILE: loads then
    # need no channel table and vectorise
    consecutive: bool

    @property
    def num_tiles(self) -> int:
        return self.tile_rows.shape[0]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The layout's tensors, as the ops take them (``of`` makes them a ``RowTiles`` again)."""
        return self.tile_rows, self.tile_ptr, self.taps, self.channels, self.weights

    @classmethod
    def of(cls, tensors, consecutive: bool) -> "RowTiles":
        tile_rows, tile_ptr, taps, channels, weights = tensors
        return cls(tile_rows.shape[1], tile_rows, tile_ptr, taps, channels, weights, consecutive)


NO_K_TILES = torch.zeros(0, K_TILE, dtype=torch.long)
SENTINEL = torch.full((1, K_TILE), -1, dtype=torch.long)


@dataclass(frozen=True)
class _Block:
    rows: torch.Tensor  # int64 output rows
    slot: dict[int, int]  # output row -> its index in rows
    padded: torch.Tensor  # [rows + 1, cols + 1] weights with a zero row and column appended
    taps: list[int]  # per K-tile
    channels: torch.Tensor  # int64 [ktiles, K_TILE], -1 pads
    columns: torch.Tensor  # int64 [ktiles, K_TILE]: column of the tile, cols (a zero column) pads


def _blocks(values, row_idx, col_idx, block_ptr, out_channels, in_channels, groups, kernel_area):
    rp, cp, vp = block_ptr.tolist()
    in_per_group, rows_per_group = in_channels // groups, out_channels // groups
    for b in range(len(rp) - 1):
        rows = row_idx[rp[b] : rp[b + 1]].long()
        cols = col_idx[cp[b] : cp[b + 1]].long()
        tile = values[vp[b] : vp[b + 1]].view(rows.numel(), cols.numel())
        first_channel = (int(rows[0]) // rows_per_group) * in_per_group if rows.numel() else 0
        tap, channel = cols % kernel_area, cols // kernel_area + first_channel
        order = torch.argsort(tap * in_channels + channel)
        taps, channels, columns = [], [], []
        for t in tap[order].unique_consecutive().tolist():
            run = order[tap[order] == t]
            for start in range(0, run.numel(), K_TILE):
                chunk = run[start : start + K_TILE]
                pad = K_TILE - chunk.numel()
                taps.append(t)
                channels.append(torch.nn.functional.pad(channel[chunk], (0, pad), value=-1))
                columns.append(torch.nn.functional.pad(chunk, (0, pad), value=cols.numel()))
        yield _Block(
            rows,
            {r: i for i, r in enumerate(rows.tolist())},
            torch.nn.functional.pad(tile, (0, 1, 0, 1)),
            taps,
            torch.stack(channels) if channels else NO_K_TILES,
            torch.stack(columns) if columns else NO_K_TILES,
        )


def _row_order(blocks: list[_Block], out_channels: int) -> list[list[int]]:
    """Output rows in runs: those whose first block is b (for every b in order), then the rows
    no block owns."""
    first = torch.full((out_channels,), len(blocks), dtype=torch.long)
    for b, block in enumerate(blocks):
        first[block.rows] = torch.minimum(first[block.rows], torch.tensor(b))
    return [(first == b).nonzero().flatten().tolist() for b in range(len(blocks) + 1)]


def _tiles(runs: list[list[int]], rows: int) -> list[list[int]]:
    return [run[i : i + rows] for run in runs for i in range(0, len(run), rows)]


def _choose_rows(blocks, runs, owners, heights) -> int:
    """The row-tile height of ``heights`` with the least work: per K-tile of a row tile,
    ``rows`` MMA columns and ``INPUT_COST * K_TILE`` for the input it gathers."""

    def work(rows):
        return sum(
            (rows + INPUT_COST * K_TILE) * sum(len(blocks[b].taps) for b in _owners(tile, owners))
            for tile in _tiles(runs, rows)
        )

    return min(heights, key=work)


def _owners(tile: list[int], owners: list[list[int]]) -> list[int]:
    return sorted({b for r in tile for b in owners[r]})


def _consecutive(channels: torch.Tensor) -> bool:
    starts = channels[:, 0]
    steps = channels == starts[:, None] + torch.arange(K_TILE)
    return bool(((starts % K_TILE == 0) & steps.all(1)).all())


def build(
    values,
    row_idx,
    col_idx,
    block_ptr,
    out_channels,
    in_channels,
    groups,
    kernel_area,
    fits=lambda rows, consecutive: True,
    rows=None,
) -> RowTiles:
    """The layout of a pack (the op's tensors and geometry). ``rows``: the tile height; by
    default the one of ``ROW_TILES`` with the least work among those ``fits(rows,
    consecutive)`` allows (the kernel's configs hold)."""
    device = values.device
    values, row_idx, col_idx, block_ptr = (t.cpu() for t in (values, row_idx, col_idx, block_ptr))
    blocks = list(
        _blocks(values, row_idx, col_idx, block_ptr, out_channels, in_channels, groups, kernel_area)
    )
    owners: list[list[int]] = [[] for _ in range(out_channels)]
    for b, block in enumerate(blocks):
        for r in block.rows.tolist():
            owners[r].append(b)
    runs = _row_order(blocks, out_channels)
    consecutive = _consecutive(torch.cat([b.channels for b in blocks] + [NO_K_TILES]))
    if rows is None:
        rows = _choose_rows(blocks, runs, owners, [r for r in ROW_TILES if fits(r, consecutive)])
    tile_rows, counts, taps, channels, weights = [], [], [], [], []
    for tile in _tiles(runs, rows):
        tile_rows.append(tile + [-1] * (rows - len(tile)))
        count = 0
        for b in _owners(tile, owners):
            block = blocks[b]
            # slot j of the tile -> the block's row index, or its zero row
            slots = torch.tensor([block.slot.get(r, block.rows.numel()) for r in tile_rows[-1]])
            # [rows, ktiles, K_TILE] -> [ktiles, K_TILE, rows]
            weights.append(block.padded[slots[:, None, None], block.columns[None]].permute(1, 2, 0))
            taps += block.taps
            channels.append(block.channels)
            count += len(block.taps)
        counts.append(count)
    return RowTiles(
        rows=rows,
        tile_rows=torch.tensor(tile_rows, dtype=torch.int32, device=device).view(-1, rows),
        tile_ptr=torch.tensor([0, *counts], dtype=torch.long).cumsum(0).to(device, torch.int32),
        taps=torch.tensor(taps + [0], dtype=torch.int32, device=device),
        channels=torch.cat(channels + [SENTINEL]).to(device, torch.int32),
        weights=(
            torch.cat(weights) if weights else torch.zeros(0, K_TILE, rows, dtype=values.dtype)
        ).to(device),
        consecutive=consecutive,
    )

"""Index conversion for the vertical-slash kernel: diagonals -> key tiles, columns -> lists.

The kernel works per query block of ``VS_BLOCK`` (64) rows. For query block ``qb`` (rows at
positions ``p0 .. p0 + 63``), diagonal ``o`` covers keys ``p0 - o .. p0 + 63 - o``: a range
of 64 keys. Walking the diagonals from the largest offset to the smallest (key ranges in
ascending order), a greedy pass covers the ranges with disjoint tiles of 64 keys that may
start anywhere (not only at multiples of 64): a range already covered up to ``covered`` is
skipped, otherwise a tile starts at ``max(range start, covered)``. Nearby diagonals share
tiles; an isolated diagonal costs one tile. This is MInference's block construction.

The tiles cover more pairs than the diagonals themselves. The kernel attends only the exact
pairs (``exact=True``, the default): inside a tile a pair ``(p, c)`` counts only if ``p - c``
is a chosen offset, read from a per-head membership table of offsets. The vertical columns
are attended in a second pass over the head's sorted column list (the columns a query block
can see causally); inside tiles those columns are masked out, so no pair is counted twice.
Attention then covers exactly the union of the columns and diagonals, as
:func:`~sparsa.ops.vertical_slash.reference.vertical_slash_attention_ref` does.

``exact=False`` attends every causal pair of the tiles (minus the vertical columns) plus the
columns: MInference's superset semantics; :func:`vertical_slash_superset_ref` is its
reference.

All tensors here live on the inputs' device; the conversion itself runs as a Triton kernel on
the Triton path (:func:`convert_vertical_slash` with ``use_triton=True``) and as a loop of
vectorised torch ops over the diagonals otherwise (the spec the kernel is tested against).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..dense.reference import masked_attention, query_positions

VS_BLOCK = 64


def _check_range(name: str, indices: torch.Tensor, kv_len: int) -> None:
    if indices.dtype not in (torch.int16, torch.int32, torch.int64):
        raise TypeError(f"{name}: dtype must be an integer type, got {indices.dtype}")
    if indices.numel() and (int(indices.min()) < -1 or int(indices.max()) >= kv_len):
        raise ValueError(f"{name}: entries must be -1 (unused) or in [0, {kv_len}), "
                         f"got range [{int(indices.min())}, {int(indices.max())}]")


def _sorted_unique(indices: torch.Tensor, descending: bool, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row, drop repeats and -1 entries; pad the tail with ``pad``.

    Returns (sorted int32 (B, Hx, max(1, N)), valid count int32 (B, Hx)).
    """
    x = indices.to(torch.int64)
    if x.shape[-1] == 0:
        x = torch.full((*x.shape[:-1], 1), -1, dtype=torch.int64, device=x.device)
    big = torch.iinfo(torch.int64).max
    # invalid entries go to the end of the order
    key = torch.where(x < 0, torch.full_like(x, -1 if descending else big), x)
    key, _ = key.sort(dim=-1, descending=descending)
    valid = (key >= 0) & (key != big)
    dup = torch.zeros_like(valid)
    dup[..., 1:] = key[..., 1:] == key[..., :-1]
    valid &= ~dup
    fill = -1 if descending else big
    key = torch.where(valid, key, torch.full_like(key, fill))
    key, _ = key.sort(dim=-1, descending=descending)
    count = valid.sum(-1, dtype=torch.int32)
    key = torch.where(torch.arange(key.shape[-1], device=key.device) < count[..., None], key,
                      torch.full_like(key, pad))
    return key.to(torch.int32).contiguous(), count


def _membership(indices: torch.Tensor, count: torch.Tensor, size: int) -> torch.Tensor:
    """(B, Hx, N) sorted indices with ``count`` valid entries -> (B, Hx, size) uint8 table."""
    b, hx, n = indices.shape
    table = torch.zeros(b, hx, size + 1, dtype=torch.uint8, device=indices.device)
    idx = indices.to(torch.int64)
    idx = torch.where(torch.arange(n, device=idx.device) < count[..., None].to(torch.int64), idx,
                      torch.full_like(idx, size))
    table.scatter_(-1, idx, 1)
    return table[..., :size].contiguous()


@dataclass
class VSLayout:
    """What the vertical-slash kernel reads (Hx = heads or kv_heads, NQ = ceil(q_len / 64)).

    slash: (B, Hx, NS) int32 offsets sorted descending, unique, -1 padded; slash_count (B, Hx).
    columns: (B, Hx, NV) int32 columns sorted ascending, unique, padded with kv_len;
        column_count (B, Hx); block_columns (B, Hx, NQ): columns each query block can see.
    tile_start: (B, Hx, NQ, max_tiles) int32 key positions of the 64-key tiles covering the
        diagonals (ascending, disjoint, -1 padded); tile_count (B, Hx, NQ).
    diag_table, column_table: (B, Hx, kv_len) uint8 membership of offsets and of columns.
    """

    q_len: int
    kv_len: int
    slash: torch.Tensor
    slash_count: torch.Tensor
    columns: torch.Tensor
    column_count: torch.Tensor
    block_columns: torch.Tensor
    tile_start: torch.Tensor
    tile_count: torch.Tensor
    diag_table: torch.Tensor
    column_table: torch.Tensor

    @property
    def n_query_blocks(self) -> int:
        return self.tile_count.shape[-1]


def slash_tiles_reference(slash: torch.Tensor, slash_count: torch.Tensor, q_len: int, kv_len: int,
                          block: int = VS_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tiles of the diagonals (the spec of the Triton conversion kernel).

    slash: (B, Hx, NS) offsets sorted descending (as from :func:`prepare_vertical_slash`).
    Returns (tile_start (B, Hx, NQ, max_tiles) int32, -1 padded; tile_count (B, Hx, NQ) int32)
    with ``max_tiles = max(1, min(NS, ceil(kv_len / block)))``. Loops over the diagonals in
    Python; vectorised over batch, heads and query blocks.
    """
    b, hx, ns = slash.shape
    nq = (q_len + block - 1) // block
    dev = slash.device
    width = max(1, min(ns, (kv_len + block - 1) // block))
    p0 = torch.arange(nq, device=dev, dtype=torch.int64) * block + (kv_len - q_len)
    end = torch.clamp(p0 + block, max=kv_len)
    covered = torch.zeros(b, hx, nq, dtype=torch.int64, device=dev)
    count = torch.zeros(b, hx, nq, dtype=torch.int64, device=dev)
    starts = torch.full((b, hx, nq, width + 1), -1, dtype=torch.int64, device=dev)
    sl = slash.to(torch.int64)
    for i in range(ns):
        o = sl[:, :, i, None]                                   # (B, Hx, 1)
        active = (i < slash_count.to(torch.int64))[..., None]
        e = end - o
        need = active & (e > covered)
        s = torch.maximum(torch.clamp(p0 - o, min=0), covered)
        slot = torch.where(need, count, torch.full_like(count, width))
        starts.scatter_(-1, slot[..., None], torch.where(need, s, torch.full_like(s, -1))[..., None])
        count += need.long()
        covered = torch.where(need, s + block, covered)
    return starts[..., :width].to(torch.int32).contiguous(), count.to(torch.int32)


def prepare_vertical_slash(vertical_indices: torch.Tensor, slash_indices: torch.Tensor, q_len: int,
                           kv_len: int, *, use_triton: bool, block: int = VS_BLOCK) -> VSLayout:
    """Validate and convert the index lists into the kernel's layout (all on the device).

    vertical_indices: (B, Hx, NV) absolute key columns; slash_indices: (B, Hx, NS) diagonal
    offsets; -1 marks unused slots, repeats are allowed. ``use_triton`` builds the tiles with
    the Triton kernel, else with :func:`slash_tiles_reference`.
    """
    _check_range("vertical_indices", vertical_indices, kv_len)
    _check_range("slash_indices", slash_indices, kv_len)
    slash, slash_count = _sorted_unique(slash_indices, descending=True, pad=-1)
    columns, column_count = _sorted_unique(vertical_indices, descending=False, pad=kv_len)
    nq = (q_len + block - 1) // block
    dev = columns.device
    p0 = torch.arange(nq, device=dev, dtype=torch.int64) * block + (kv_len - q_len)
    last = torch.clamp(p0 + block - 1, max=kv_len - 1).to(torch.int32)
    b, hx, _ = columns.shape
    block_columns = torch.searchsorted(columns, last.expand(b, hx, nq).contiguous(), right=True).to(torch.int32)
    if use_triton:
        from .triton import slash_tiles_triton
        tile_start, tile_count = slash_tiles_triton(slash, slash_count, q_len, kv_len, block=block)
    else:
        tile_start, tile_count = slash_tiles_reference(slash, slash_count, q_len, kv_len, block)
    return VSLayout(q_len, kv_len, slash, slash_count, columns, column_count, block_columns.contiguous(),
                    tile_start, tile_count, _membership(slash, slash_count, kv_len),
                    _membership(columns, column_count, kv_len))


def vertical_slash_pairs(layout: VSLayout, heads: int) -> torch.Tensor:
    """Causal pairs on the union of the columns and diagonals, float64 (B, heads).

    Exact count from the sorted lists: pairs on the diagonals + pairs on the columns - pairs
    on both (a column ``c`` and a diagonal ``o`` meet at row position ``c + o``).
    """
    lq, lk = layout.q_len, layout.kv_len
    off = lk - lq
    ns, nv = layout.slash.shape[-1], layout.columns.shape[-1]
    o = layout.slash.to(torch.int64)
    o_ok = torch.arange(ns, device=o.device) < layout.slash_count[..., None]
    c = layout.columns.to(torch.int64)
    c_ok = torch.arange(nv, device=c.device) < layout.column_count[..., None]
    zero = torch.zeros((), dtype=torch.int64, device=o.device)
    diag = torch.where(o_ok, lk - torch.clamp(o, min=off), zero).sum(-1)
    col = torch.where(c_ok, lk - torch.clamp(c, min=off), zero).sum(-1)
    # offsets ascending (the padding, flipped to the front, sorts below any searched value)
    asc = torch.where(o_ok, o, torch.full_like(o, -2 * lk - 1)).flip(-1).contiguous()
    lo = torch.searchsorted(asc, (off - c).contiguous(), right=False)
    hi = torch.searchsorted(asc, (lk - 1 - c).contiguous(), right=True)
    both = torch.where(c_ok, hi - lo, zero).sum(-1)
    total = (diag + col - both).to(torch.float64)
    hx = total.shape[1]
    if hx != heads:
        total = total.repeat_interleave(heads // hx, dim=1)
    return total


def tile_cover_mask(layout: VSLayout, block: int = VS_BLOCK) -> torch.Tensor:
    """Dense (B, Hx, q_len, kv_len) bool mask of the pairs inside tiles (no causality).

    Test helper for the superset semantics; memory O(q_len * kv_len).
    """
    b, hx, nq, width = layout.tile_start.shape
    lq, lk = layout.q_len, layout.kv_len
    dev = layout.tile_start.device
    cover = torch.zeros(b, hx, nq, lk + block + 1, dtype=torch.bool, device=dev)
    starts = layout.tile_start.to(torch.int64)
    keys = starts[..., None] + torch.arange(block, device=dev)                    # (B, Hx, NQ, W, block)
    keys = torch.where(starts[..., None] >= 0, keys, torch.full_like(keys, lk + block))
    cover.scatter_(-1, keys.flatten(-2), True)
    cover = cover[..., :lk]
    rows = torch.arange(lq, device=dev) // block
    return cover[:, :, rows]


def vertical_slash_superset_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: VSLayout, *,
                                scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of ``exact=False``: causal pairs inside the tiles or on the columns.

    Returns (out like q, pairs (batch, heads) float64). Memory O(q_len * kv_len): tests only.
    """
    lq, lk = layout.q_len, layout.kv_len
    cover = tile_cover_mask(layout)
    col_ok = layout.column_table.bool()
    cols = torch.arange(lk, device=q.device)

    def mask_fn(s: int, e: int) -> torch.Tensor:
        causal = cols[None, :] <= query_positions(lq, lk, s, e, q.device)[:, None]
        return (cover[:, :, s:e] | col_ok[:, :, None, :]) & causal

    return masked_attention(q, k, v, mask_fn, scale=scale)


__all__ = ["VSLayout", "VS_BLOCK", "prepare_vertical_slash", "slash_tiles_reference", "tile_cover_mask",
           "vertical_slash_pairs", "vertical_slash_superset_ref"]

"""The vertical-slash layout's tile constants and the runs of consecutive diagonals, shared by
the torch conversion (:mod:`.convert`) and its Triton kernel (:mod:`.convert_triton`)."""
from __future__ import annotations

import torch

VS_TILE = 64
GATHER_BIT = 1 << 30
START_MASK = GATHER_BIT - 1
DIAG_PAD = 256          # zero entries before offset 0 in the offset tables (>= block_q + tile)


def slash_runs(slash: torch.Tensor, slash_count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs of consecutive offsets in each head's descending, unique offset list.

    slash: (B, Hx, NS) int32 sorted descending, ``slash_count`` (B, Hx) valid leading entries.
    Returns (run_high, run_low (B, Hx, NS) int32: first (largest) and last (smallest) offset of
    each run, in the list's order, -1 padded; run_count (B, Hx) int32).
    """
    b, hx, ns = slash.shape
    s = slash.to(torch.int64)
    idx = torch.arange(ns, device=s.device)
    count = slash_count.to(torch.int64)[..., None]
    valid = idx < count
    sentinel = torch.full_like(s[..., :1], -3)
    prev = torch.cat([sentinel, s[..., :-1]], dim=-1)
    nxt = torch.cat([s[..., 1:], sentinel], dim=-1)
    first = valid & (prev - s != 1)
    last = valid & ((s - nxt != 1) | (idx == count - 1))
    run_id = first.long().cumsum(-1) - 1
    dump = torch.full_like(run_id, ns)
    high = torch.full((b, hx, ns + 1), -1, dtype=torch.int64, device=s.device)
    low = torch.full((b, hx, ns + 1), -1, dtype=torch.int64, device=s.device)
    high.scatter_(-1, torch.where(first, run_id, dump), s)
    low.scatter_(-1, torch.where(last, run_id, dump), s)
    return (high[..., :ns].to(torch.int32).contiguous(), low[..., :ns].to(torch.int32).contiguous(),
            first.sum(-1, dtype=torch.int32))


def tiles_width_runs(run_high: torch.Tensor, run_low: torch.Tensor, run_count: torch.Tensor, kv_len: int,
                     block_q: int) -> int:
    """Slots per tile-list row from the runs of consecutive diagonals (:func:`slash_runs`).

    A run ``o_lo..o_hi`` covers ``o_hi - o_lo + block_q`` keys of a query block, so the greedy
    pass emits at most ``ceil((o_hi - o_lo + block_q) / 64)`` tiles for it; the bound is the
    largest sum over a head's runs, capped by a dense row. Banded diagonals (a few long runs)
    then need about ``n_slash / 64`` slots instead of ``n_slash``: at 512K with 6,096 mostly
    contiguous diagonals that is ~100 slots per row instead of 6,096 (6.4 GB of int32 lists
    for 32 heads). Costs one device-to-host read of the maximum.
    """
    ns = run_high.shape[-1]
    valid = torch.arange(ns, device=run_high.device) < run_count.to(torch.int64)[..., None]
    span = run_high.to(torch.int64) - run_low.to(torch.int64) + block_q
    per_run = torch.where(valid, (span + VS_TILE - 1) // VS_TILE, torch.zeros_like(span))
    need = int(per_run.sum(-1).max()) if per_run.numel() else 0
    return max(1, min(need, (kv_len + VS_TILE - 1) // VS_TILE))


#: tile-list entries (int32) up to which a CUDA layout takes the host bound of its width
#: instead of reading the exact width back (512 MiB; 32 heads at 128K with block_q 64)
BOUND_WIDTH_ENTRIES = 1 << 27


def tiles_width_bound(n_slash: int, kv_len: int, block_q: int) -> int:
    """Host bound of :func:`tiles_width_runs` from the list width alone (no device read).

    A run of ``r`` diagonals needs at most ``ceil((r - 1 + block_q) / 64)`` tiles, so
    ``n_slash`` diagonals in any runs need at most ``n_slash * (block_q + 63) // 64``; capped
    by a dense row, as the exact width is.
    """
    return max(1, min(n_slash * (block_q + VS_TILE - 1) // VS_TILE, (kv_len + VS_TILE - 1) // VS_TILE))


def tiles_width(run_high: torch.Tensor, run_low: torch.Tensor, run_count: torch.Tensor, q_len: int, kv_len: int,
                block_q: int, exact_width: bool | None = None) -> int:
    """Slots per tile-list row: :func:`tiles_width_runs` (one device-to-host read) or, with
    ``exact_width=False``, :func:`tiles_width_bound` (none; any width >= the need gives the
    same tiles and the same attention). Default: the bound on CUDA while the tile lists stay
    within ``BOUND_WIDTH_ENTRIES``, the exact width otherwise.
    """
    b, hx, ns = run_high.shape
    bound = tiles_width_bound(ns, kv_len, block_q)
    if exact_width is None:
        nq = (q_len + block_q - 1) // block_q
        exact_width = not run_high.is_cuda or b * hx * nq * bound > BOUND_WIDTH_ENTRIES
    return tiles_width_runs(run_high, run_low, run_count, kv_len, block_q) if exact_width else bound


__all__ = ["BOUND_WIDTH_ENTRIES", "DIAG_PAD", "GATHER_BIT", "START_MASK", "VS_TILE", "slash_runs", "tiles_width",
           "tiles_width_bound", "tiles_width_runs"]

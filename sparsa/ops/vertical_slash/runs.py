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


__all__ = ["DIAG_PAD", "GATHER_BIT", "START_MASK", "VS_TILE", "slash_runs", "tiles_width_runs"]

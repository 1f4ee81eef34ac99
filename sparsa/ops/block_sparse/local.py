"""Token-level local patterns on top of block lists: sliding window, sink and global tokens.

A local mask keeps the causal pair (query at position ``p``, key ``j``, ``j <= p``) when

* ``p - j < window`` (the last ``window`` keys, the query's own included), or
* ``j < sink`` (attention sinks: the first tokens, seen by every query), or
* ``j`` or ``p`` is a global position (global tokens see and are seen by every token).

This covers Longformer's sliding window with global tokens and the A-shape of StreamingLLM
exactly, not rounded to blocks. The block-sparse kernel runs it by walking, per query block,
the key blocks that hold at least one kept pair: those whose every pair is kept ("clean")
first and unmasked, then the edge blocks with the element mask. This module holds the
normalised mask (:class:`LocalMask`), the block lists (:func:`local_block_lists`, built on the
tensors' device), the clean-first ordering shared with arbitrary lists
(:func:`order_clean_first`) and the exact pair count (:func:`local_pairs`).
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Sequence

import torch

from ..._validation import check_int
from .indices import num_blocks

GlobalPositions = Sequence[int] | torch.Tensor | None


def _global_list(global_positions: GlobalPositions, kv_len: int) -> list[int]:
    """Sorted distinct global positions as Python ints; raises naming ``global_positions``."""
    if global_positions is None:
        return []
    if isinstance(global_positions, torch.Tensor):
        if global_positions.dtype.is_floating_point or global_positions.dtype == torch.bool \
                or global_positions.is_complex():
            raise TypeError(f"global_positions: expected an integer tensor, got {global_positions.dtype}")
        if global_positions.ndim != 1:
            raise ValueError(f"global_positions: expected a 1-D tensor, got shape {tuple(global_positions.shape)}")
        values = [int(x) for x in global_positions.tolist()]
    elif isinstance(global_positions, (list, tuple)):
        values = []
        for g in global_positions:
            if isinstance(g, bool) or not isinstance(g, Integral):
                raise TypeError(f"global_positions: entries must be ints, got {type(g).__name__}")
            values.append(int(g))
    else:
        raise TypeError(f"global_positions: expected a sequence of ints or an integer tensor, "
                        f"got {type(global_positions).__name__}")
    if values and (min(values) < 0 or max(values) >= kv_len):
        raise ValueError(f"global_positions: entries must lie in [0, kv_len={kv_len}), "
                         f"got range [{min(values)}, {max(values)}]")
    return sorted(set(values))


@dataclass(frozen=True)
class LocalMask:
    """A local mask normalised for one ``kv_len``.

    ``window``: ``None`` when it covers every causal key (then the mask keeps all causal pairs
    and ``sink``/``globals`` are empty), else in [1, kv_len). ``sink``: leading positions seen
    by all, global positions that continue the sink prefix folded in. ``globals``: the other
    global positions, ascending, each ``>= sink``.
    """

    window: int | None
    sink: int
    globals: tuple[int, ...]

    @classmethod
    def build(cls, window: int | None, sink: int, global_positions: GlobalPositions, kv_len: int) -> "LocalMask":
        """Validate and normalise; errors name ``window``, ``sink`` or ``global_positions``."""
        if window is not None:
            check_int("window", window, minimum=1)
        check_int("sink", sink, minimum=0)
        glob = _global_list(global_positions, kv_len)
        if window is None or window >= kv_len:
            return cls(None, 0, ())
        s = min(sink, kv_len)
        taken = set(glob)
        while s in taken:
            s += 1
        return cls(window, s, tuple(g for g in glob if g >= s))

    @property
    def active(self) -> bool:
        """Whether the mask hides any causal pair."""
        return self.window is not None

    def global_flags(self, kv_len: int, device: torch.device | str | None = None) -> torch.Tensor | None:
        """int8 (kv_len,): 1 at the global positions beyond the sink; ``None`` when there are none."""
        if not self.globals:
            return None
        flags = torch.zeros(kv_len, dtype=torch.int8, device=device)
        flags[torch.tensor(self.globals, dtype=torch.int64, device=device)] = 1
        return flags

    def keep(self, pos: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Pairs kept, bool (len(pos), len(cols)), causality not included.

        pos: int64 query positions; cols: int64 key positions (same device).
        """
        if not self.active:
            return torch.ones(pos.shape[0], cols.shape[0], dtype=torch.bool, device=pos.device)
        near = (pos[:, None] - cols[None, :]) < self.window
        keep = near | (cols[None, :] < self.sink)
        if self.globals:
            g = torch.tensor(self.globals, dtype=torch.int64, device=pos.device)
            keep = keep | torch.isin(cols, g)[None, :] | torch.isin(pos, g)[:, None]
        return keep


def query_block_positions(q_len: int, kv_len: int, block_q: int,
                          device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the first and last valid row of each query block, int64 (n_q_blocks,) each."""
    nq = num_blocks(q_len, block_q)
    p0 = torch.arange(nq, device=device) * block_q + (kv_len - q_len)
    return p0, torch.clamp(p0 + block_q - 1, max=kv_len - 1)


def order_clean_first(cand: torch.Tensor, p0: torch.Tensor, p1: torch.Tensor, block_k: int, kv_len: int,
                      mask: LocalMask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reorder key-block lists for the kernel: clean blocks, then masked ones, then padding.

    cand: (..., n_q_blocks, width) key-block numbers, -1 unused, no repeats in a row (any
    order); p0, p1: (n_q_blocks,) first/last row positions. A listed block is *visible* when
    some row may see it causally (first key <= p1) and *clean* when every row of the block
    keeps every pair of it (the whole block causally before the first row, and inside every
    row's window or wholly sink). Clean blocks need no mask in the kernel.

    Returns (indices int32 like cand, n_clean int32 (..., n_q_blocks), n_visible int32 likewise).
    """
    nk = num_blocks(kv_len, block_k)
    kb = cand.to(torch.int64)
    k0 = kb * block_k
    k_last = k0 + block_k - 1           # unclamped: a partial last block is never clean
    first, last = p0[:, None], p1[:, None]
    visible = (kb >= 0) & (k0 <= last)
    clean = visible & (k_last <= first)
    if mask.active:
        clean = clean & ((k0 >= last - mask.window + 1) | (k_last < mask.sink))
    key = torch.where(clean, kb, torch.where(visible, kb + nk, torch.full_like(kb, 2 * nk)))
    key, _ = key.sort(dim=-1)
    idx = torch.where(key < 2 * nk, key % nk, torch.full_like(key, -1)).to(torch.int32)
    return idx, clean.sum(-1, dtype=torch.int32), visible.sum(-1, dtype=torch.int32)


def local_block_lists(mask: LocalMask, q_len: int, kv_len: int, block_q: int, block_k: int,
                      device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Key blocks holding a kept pair, per query block, ordered for the kernel.

    Every query block lists the key blocks of its rows' windows, the sink blocks and the
    blocks of global keys (all causally visible ones); a block with a global query row lists
    every causally visible key block. Built with a few tensor operations on ``device``.

    Returns (indices int32 (n_q_blocks, width), n_clean int32 (n_q_blocks,), n_visible int32
    (n_q_blocks,)): see :func:`order_clean_first`.
    """
    nk = num_blocks(kv_len, block_k)
    p0, p1 = query_block_positions(q_len, kv_len, block_q, device)
    nq = p0.shape[0]
    hi = p1 // block_k
    window = mask.window if mask.active else kv_len
    w_lo = (p0 - window + 1).clamp_min(0) // block_k
    # rows p0..p1 see keys from p0 - window + 1 to p1: at most this many key blocks
    n_win = min(nk, (window + block_q - 2) // block_k + 2)
    win = w_lo[:, None] + torch.arange(n_win, device=device)[None, :]
    parts = [torch.where(win <= hi[:, None], win, torch.full_like(win, -1))]
    n_sink = min(nk, num_blocks(mask.sink, block_k))
    if n_sink:
        sink = torch.arange(n_sink, device=device)[None, :].expand(nq, -1)
        parts.append(torch.where((sink < w_lo[:, None]) & (sink <= hi[:, None]), sink, torch.full_like(sink, -1)))
    g_blocks = sorted({g // block_k for g in mask.globals} - set(range(n_sink)))
    if g_blocks:
        gb = torch.tensor(g_blocks, dtype=torch.int64, device=device)[None, :].expand(nq, -1)
        parts.append(torch.where((gb < w_lo[:, None]) & (gb <= hi[:, None]), gb, torch.full_like(gb, -1)))
    cand = torch.cat(parts, dim=-1)
    offset = kv_len - q_len
    g_rows = sorted({(g - offset) // block_q for g in mask.globals if g >= offset})
    if g_rows:
        rows = torch.tensor(g_rows, dtype=torch.int64, device=device)
        width = max(cand.shape[1], int(hi[g_rows[-1]]) + 1)
        cand = torch.cat([cand, torch.full((nq, width - cand.shape[1]), -1, dtype=torch.int64, device=device)], -1)
        full = torch.arange(width, device=device)[None, :].expand(len(g_rows), -1)
        cand[rows] = torch.where(full <= hi[rows][:, None], full, torch.full_like(full, -1))
    return order_clean_first(cand, p0, p1, block_k, kv_len, mask)


def local_pairs(mask: LocalMask, q_len: int, kv_len: int, device: torch.device | str | None = None) -> int:
    """Causal pairs one head keeps under ``mask`` (exact, per-row count on ``device``)."""
    pos = torch.arange(kv_len - q_len, kv_len, device=device)
    if not mask.active:
        return int((pos + 1).sum())
    w = mask.window
    outside = pos - w + 1                      # keys j < outside lie outside the row's window
    count = torch.clamp(pos + 1, max=w) + torch.clamp(torch.clamp(outside, max=mask.sink), min=0)
    if mask.globals:
        g = torch.tensor(mask.globals, dtype=torch.int64, device=device)
        # globals lie at or after the sink, so none is counted twice
        count = count + torch.searchsorted(g, outside, right=False)
        count = torch.where(torch.isin(pos, g), pos + 1, count)
    return int(count.sum())


__all__ = ["LocalMask", "local_block_lists", "local_pairs", "order_clean_first", "query_block_positions"]

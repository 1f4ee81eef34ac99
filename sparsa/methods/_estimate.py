"""Last-queries estimation and column/diagonal selection shared by Vertical-Slash and FlexPrefill.

Both methods look at the causal softmax of the last few queries over all keys, sum it down
each key column ("vertical" lines) and along each diagonal ("slash" lines, offset
``o = query_position - key_position >= 0``), and keep the heaviest lines. This module holds
the pieces they share: the estimate, the selection order (forced lines first), turning a
prefix of that order into index lists, and the exact number of query-key pairs a set of
lines covers (so a compression target can be met on exact counts).

Shapes: B = batch, H = query heads, L = kv_len. Line scores, orders and ranks are (B, H, L):
index ``j`` of a vertical tensor is key column ``j``; index ``o`` of a slash tensor is
diagonal offset ``o``.
"""
from __future__ import annotations

import torch

# Score elements per estimation chunk (~128 MiB in fp32), as in the dense reference.
_CHUNK_ELEMENTS = 1 << 25


def last_q_line_mass(q: torch.Tensor, k: torch.Tensor, scale: float,
                     last_q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention mass per key column and per diagonal, estimated from the last queries.

    The last ``m = min(last_q, q_len)`` query rows (positions ``kv_len - m .. kv_len - 1``)
    attend causally over all keys, per query head; each row's softmax sums to one.

    Args:
        q: (B, H, q_len, D); k: (B, Hkv, L, D); ``scale`` multiplies q·k.
        last_q: number of query rows used for the estimate (>= 1).

    Returns:
        ``(vertical, slash)``, each (B, H, L), float32 (float64 for float64 inputs): the
        mean over the ``m`` rows of the probability on column ``j`` / on the keys at offset
        ``o`` from the row. Each sums to 1 over its last axis.
    """
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    g = h // hkv
    m = min(last_q, lq)
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    qs = q[:, :, lq - m:].to(ct).reshape(b, hkv, g, m, d)
    pos = torch.arange(lk - m, lk, device=q.device)                       # positions of the m rows
    cols = torch.arange(lk, device=q.device)
    causal = cols[None, :] <= pos[:, None]                                # (m, L)
    # slash gather: entry (i, o) reads column pos_i - o; negative columns do not exist
    diag_cols = pos[:, None] - cols[None, :]                              # (m, L) over offsets
    diag_ok = diag_cols >= 0
    diag_cols = diag_cols.clamp_min(0)

    vertical = torch.empty(b, hkv, g, lk, dtype=ct, device=q.device)
    slash = torch.empty(b, hkv, g, lk, dtype=ct, device=q.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, b * g * m * lk))
    for s in range(0, hkv, step):
        e = min(hkv, s + step)
        scores = torch.einsum("bkgmd,bknd->bkgmn", qs[:, s:e], k[:, s:e].to(ct)) * scale
        probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        vertical[:, s:e] = probs.sum(-2) / m
        on_diag = probs.gather(-1, diag_cols.expand(*probs.shape[:3], m, lk))
        slash[:, s:e] = torch.where(diag_ok, on_diag, torch.zeros_like(on_diag)).sum(-2) / m
    return vertical.reshape(b, h, lk), slash.reshape(b, h, lk)


def selection_order(scores: torch.Tensor, forced: int) -> torch.Tensor:
    """Order in which lines are taken: the first ``forced`` lines, then by descending score.

    Columns ``0..forced-1`` (first tokens) or offsets ``0..forced-1`` (most recent diagonals)
    are the forced lines. Ties go to the lower index. Returns int64 (B, H, L).
    """
    keyed = scores.clone()
    keyed[..., :forced] = float("inf")
    return torch.sort(keyed, dim=-1, descending=True, stable=True).indices


def ranks(order: torch.Tensor) -> torch.Tensor:
    """Inverse permutation of ``order``: ``rank[..., order[..., r]] = r``. int64 (B, H, L)."""
    ar = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ar)


def take_prefix(order: torch.Tensor, counts: torch.Tensor | int) -> torch.Tensor:
    """Index lists of the first ``counts`` lines of ``order``.

    ``counts`` is an int or a (B, H) tensor. Returns int32 (B, H, max count): each row
    sorted ascending, padded with -1 at the end (the format of ``sparsa.ops.vertical_slash``).
    """
    b, h, n = order.shape
    counts = torch.as_tensor(counts, device=order.device).expand(b, h)
    width = max(1, int(counts.max()))
    head = order[..., :width]
    unused = torch.arange(width, device=order.device) >= counts[..., None]
    head = torch.where(unused, torch.full_like(head, n), head).sort(dim=-1).values
    return torch.where(head == n, torch.full_like(head, -1), head).to(torch.int32)


def line_pairs(vertical: torch.Tensor, slash: torch.Tensor, q_len: int, kv_len: int) -> torch.Tensor:
    """Exact query-key pairs covered by chosen columns and diagonals (causal), per (B, H).

    ``vertical`` / ``slash``: (B, H, L) bool membership of each column / diagonal offset.
    Query rows sit at positions ``P0 = kv_len - q_len .. kv_len - 1``. Column ``j`` covers
    the rows at positions ``>= max(j, P0)``, diagonal ``o`` those at ``>= max(o, P0)``, and
    column ``j`` meets the chosen diagonals with ``P0 - j <= o <= kv_len - 1 - j`` once each;
    those cells are counted once. Returns float64 (B, H).
    """
    dev = vertical.device
    p0 = kv_len - q_len
    lines = torch.arange(kv_len, device=dev)
    cover = (kv_len - lines.clamp_min(p0)).double()                      # rows a line covers
    covered = (vertical.double() * cover).sum(-1) + (slash.double() * cover).sum(-1)
    # chosen offsets below x: prefix[..., x]
    prefix = torch.nn.functional.pad(slash.long().cumsum(-1), (1, 0))
    hi = kv_len - 1 - lines + 1
    lo = (p0 - lines).clamp_min(0)
    meets = prefix[..., hi] - prefix[..., lo]                              # (B, H, L) per column
    return covered - (vertical.long() * meets).sum(-1).double()

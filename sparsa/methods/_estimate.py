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

from typing import Callable

import torch

from ..ops.vertical_slash.estimate import line_mass


def last_q_line_mass(q: torch.Tensor, k: torch.Tensor, scale: float, last_q: int, *,
                     backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention mass per key column and per diagonal, estimated from the last queries.

    The last ``m = min(last_q, q_len)`` query rows (positions ``kv_len - m .. kv_len - 1``)
    attend causally over all keys, per query head; each row's softmax sums to one.

    Args:
        q: (B, H, q_len, D); k: (B, Hkv, L, D); ``scale`` multiplies q·k.
        last_q: number of query rows used for the estimate (>= 1).
        backend: as for the ops; on CUDA the Triton kernels of
            :mod:`sparsa.ops.vertical_slash.estimate` run (bf16/fp16 products with float32
            accumulation), else torch in float32.

    Returns:
        ``(vertical, slash)``, each (B, H, L), float32 (float64 for float64 inputs): the
        mean over the ``m`` rows of the probability on column ``j`` / on the keys at offset
        ``o`` from the row. Each sums to 1 over its last axis.
    """
    return line_mass(q, k, scale, last_q, backend=backend)


def top_lines(scores: torch.Tensor, forced: int, count: int) -> torch.Tensor:
    """``take_prefix(selection_order(scores, forced), count)`` without sorting whole rows.

    scores: (B, H, L) non-negative float32 line masses (other dtypes take the sorting path).
    The order is the same: the first ``forced`` lines, then descending score, ties to the lower
    index. Each line gets a unique int64 key (the score's bits, which order like the score for
    non-negative floats, above the complement of the index), so one ``topk`` picks exactly
    the first ``count`` lines of that order. Returns int32 (B, H, count), rows ascending.
    """
    b, h, n = scores.shape
    count = min(count, n)
    if count <= 0 or scores.dtype != torch.float32:
        return take_prefix(selection_order(scores, forced), count)
    x = torch.where(scores > 0, scores, torch.zeros_like(scores))      # -0.0 and NaN-free keys
    bits = x.view(torch.int32).to(torch.int64)
    bits[..., :forced] = 0x7F800000                                       # +inf: forced lines first
    idx = torch.arange(n, device=scores.device, dtype=torch.int64)
    key = (bits << 32) | ((1 << 32) - 1 - idx)
    chosen = key.topk(count, dim=-1, sorted=False).indices
    return chosen.sort(dim=-1).values.to(torch.int32)


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


def take_prefix(order: torch.Tensor, counts: torch.Tensor | int, width: int | None = None) -> torch.Tensor:
    """Index lists of the first ``counts`` lines of ``order``.

    ``counts`` is an int or a tensor broadcastable to (B, H). Returns int32 (B, H, width):
    each row sorted ascending, padded with -1 at the end (the format of
    ``sparsa.ops.vertical_slash``). ``width`` (an upper bound of ``counts``, known on the
    host) fixes the last dimension so a tensor ``counts`` is never read back; by default it
    is the largest count (for a tensor, one device-to-host read).
    """
    b, h, n = order.shape
    if isinstance(counts, int):
        width = max(1, min(counts if width is None else width, n))
        unused = torch.arange(width, device=order.device) >= counts
    else:
        counts = counts.to(order.device).expand(b, h)
        width = max(1, min(n, int(counts.max()) if width is None else width))
        unused = torch.arange(width, device=order.device) >= counts[..., None]
    head = order[..., :width]
    head = torch.where(unused, torch.full_like(head, n), head).sort(dim=-1).values
    return torch.where(head == n, torch.full_like(head, -1), head).to(torch.int32)


def line_pairs(vertical: torch.Tensor, slash: torch.Tensor, q_len: int, kv_len: int) -> torch.Tensor:
    """Exact query-key pairs covered by chosen columns and diagonals (causal), per (B, H).

    ``vertical`` / ``slash``: (..., L) bool membership of each column / diagonal offset (any
    leading dims, e.g. (K, B, H, L) for K candidate budgets at once).
    Query rows sit at positions ``P0 = kv_len - q_len .. kv_len - 1``. Column ``j`` covers
    the rows at positions ``>= max(j, P0)``, diagonal ``o`` those at ``>= max(o, P0)``, and
    column ``j`` meets the chosen diagonals with ``P0 - j <= o <= kv_len - 1 - j`` once each;
    those cells are counted once. Returns float64 (...) (the leading dims), exact integers.
    """
    dev = vertical.device
    p0 = kv_len - q_len
    lines = torch.arange(kv_len, device=dev)
    cover = (kv_len - lines.clamp_min(p0)).double()                      # rows a line covers
    covered = (vertical.double() * cover).sum(-1) + (slash.double() * cover).sum(-1)
    # chosen offsets below x: prefix[..., x]; counts fit int32, whose scan is cheaper than int64's
    prefix = torch.nn.functional.pad(slash.to(torch.int32).cumsum(-1, dtype=torch.int32), (1, 0))
    hi = kv_len - 1 - lines + 1
    lo = (p0 - lines).clamp_min(0)
    meets = prefix.index_select(-1, hi) - prefix.index_select(-1, lo)     # (..., L) per column
    meets = torch.where(vertical, meets, torch.zeros_like(meets))
    return covered - meets.sum(-1, dtype=torch.int64).double()


def candidate_ways(elements: int, budget: int = 1 << 24, most: int = 16) -> int:
    """Candidates a device search evaluates per round so that ``ways * elements`` stays near
    ``budget`` (2 to ``most``); ``elements`` is the size of one candidate's (B, H, L) tensors."""
    return max(2, min(most, budget // max(1, elements)))


def solve_budget_tensor(count: Callable[[torch.Tensor], torch.Tensor], target: float, lo: int, hi: int, *,
                        ways: int, device: torch.device | str) -> torch.Tensor:
    """:func:`sparsa.methods.base.solve_budget` on the device: the same integer, no host read.

    ``count`` maps a (K,) int64 tensor of candidates to their (K,) counts (non-decreasing in
    the candidate). Each round evaluates ``ways - 1`` candidates at once and keeps the part of
    the interval that holds the first candidate whose count reaches ``target`` (``hi`` when
    none does), so the rounds are ``log_ways(hi - lo)``, their number known on the host; the
    closer of that candidate and the one before it to ``target`` is returned, as
    ``solve_budget`` does. Returns a 0-dim int64 tensor on ``device``.
    """
    if hi <= lo:
        return torch.tensor(lo, dtype=torch.int64, device=device)
    a = torch.tensor(lo, dtype=torch.int64, device=device)
    b = torch.tensor(hi, dtype=torch.int64, device=device)
    steps = torch.arange(1, ways, dtype=torch.int64, device=device)
    n = hi - lo
    while n > 0:
        c = a + (b - a) * steps // ways
        reached = count(c) >= target
        b = torch.minimum(b, torch.where(reached, c, b).amin())
        a = torch.minimum(torch.maximum(a, torch.where(reached, a, c + 1).amax()), b)
        n //= ways
    ends = count(torch.stack([(a - 1).clamp_min(lo), a]))
    gap = (ends - target).abs()
    return torch.where((a > lo) & (gap[0] < gap[1]), a - 1, a)


def bisect_fraction_tensor(count: Callable[[torch.Tensor], torch.Tensor], target: float, steps: int, *,
                           ways: int, device: torch.device | str) -> torch.Tensor:
    """``steps`` bisection steps over x in [0, 1] for the count closest to ``target``, on the device.

    ``count`` maps a (K,) float64 tensor of x values to their (K,) counts (non-decreasing in x).
    Equal to the host loop: ``1.0`` if ``count(1) <= target``; else bisect ``[lo, hi] = [0, 1]``
    ``steps`` times (``lo = mid`` while ``count(mid) < target``) and return the closer end
    (``lo`` on ties going to ``hi``). ``ways`` (a power of two) candidates per round settle
    ``log2(ways)`` steps at once; the points are dyadic, so they are the bisection's exactly.
    Returns a 0-dim float64 tensor.
    """
    bits = max(1, ways.bit_length() - 1)
    lo = torch.zeros((), dtype=torch.float64, device=device)
    hi = torch.ones((), dtype=torch.float64, device=device)
    done = 0
    while done < steps:
        r = min(bits, steps - done)
        k = 1 << r
        frac = torch.arange(1, k, dtype=torch.float64, device=device) / k
        mid = lo + (hi - lo) * frac
        below = count(mid) < target
        lo = torch.maximum(lo, torch.where(below, mid, lo).amax())
        hi = torch.minimum(hi, torch.where(below, hi, mid).amin())
        done += r
    ends = count(torch.stack([lo, hi, torch.ones_like(lo)]))
    gap = (ends[:2] - target).abs()
    best = torch.where(gap[0] < gap[1], lo, hi)
    return torch.where(ends[2] <= target, torch.ones_like(best), best)

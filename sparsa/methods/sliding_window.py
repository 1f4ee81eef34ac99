"""Sliding window with global tokens (Longformer, causal form)."""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import torch

from .._validation import check_int
from ..ops.block_sparse import local_attention
from ..ops.dense.reference import causal_pairs
from .base import AttentionStats, Method, prefill_stats, solve_budget
from .registry import register


def window_pairs(window: int, q_len: int, kv_len: int) -> int:
    """Causal pairs of a pure sliding window of ``window`` keys (the query's own key included)."""
    first = kv_len - q_len
    total = 0
    # rows at positions p see min(p + 1, window) keys
    full_from = max(first, window - 1)
    ramp_end = min(kv_len, window - 1)  # positions first..ramp_end-1 see p+1 keys
    if ramp_end > first:
        total += causal_pairs(ramp_end - first, ramp_end)
    total += max(0, kv_len - full_from) * window
    return total


@register
@dataclass
class SlidingWindow(Method):
    """Each query sees its last ``window`` keys (itself included) plus ``global_positions``.

    Global tokens see and are seen by every token (within causality). With ``compression``
    and no explicit ``window`` the window is sized so the achieved compression hits the target.
    Runs :func:`~sparsa.ops.block_sparse.local_attention`: the block-sparse Triton kernel with
    an element mask on CUDA, the reference elsewhere (same pairs on both).
    """

    name = "sliding_window"
    paper = "Beltagy et al., Longformer, 2020"
    fast_masks = True

    window: int | None = None
    global_positions: tuple[int, ...] = ()

    def validate(self) -> None:
        if self.window is not None:
            check_int("window", self.window, minimum=1)
        if not isinstance(self.global_positions, (tuple, list)):
            raise TypeError(f"global_positions: expected a tuple of ints, got {type(self.global_positions).__name__}")
        # numpy integers are accepted; floats are refused rather than truncated
        self.global_positions = tuple(
            check_int("global_positions", int(g) if isinstance(g, Integral) and not isinstance(g, bool) else g, 0)
            for g in self.global_positions)

    def target(self) -> float | None:
        return None if self.window is not None else self.compression

    def resolve_window(self, q_len: int, kv_len: int) -> int:
        if self.window is not None:
            return self.window
        if self.compression is None:
            return 512
        target = causal_pairs(q_len, kv_len) / self.compression
        return solve_budget(lambda w: window_pairs(w, q_len, kv_len), target, 1, kv_len)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                backend: str | None) -> tuple[torch.Tensor, AttentionStats]:
        lq, lk = q.shape[2], k.shape[2]
        window = self.resolve_window(lq, lk)
        glob = [g for g in self.global_positions if g < lk]
        out, pairs = local_attention(q, k, v, window=window, global_positions=glob, scale=scale, backend=backend)
        return out, prefill_stats(self.name, pairs, lq, lk, window=window, dense_fallback=False)

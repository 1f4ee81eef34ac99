"""Shared running of the methods that attend to chosen key columns and diagonals."""
from __future__ import annotations

from typing import Any

import torch

from .._validation import check_qkv, check_scale
from ..ops.dense.reference import causal_pairs
from ..ops.vertical_slash import vertical_slash_attention
from .base import AttentionStats, Method, prefill_stats


def _trim(indices: torch.Tensor) -> torch.Tensor:
    """Drop the trailing columns that are -1 in every row (planners pad to a host-known bound)."""
    width = max(1, int((indices >= 0).sum(-1).max())) if indices.numel() else indices.shape[-1]
    return indices[..., :width]


class LinePattern(Method):
    """A method whose plan is a set of key columns and diagonals per query head.

    Subclasses implement ``_plan(q, k, scale, backend) -> (vertical_indices, slash_indices,
    info)``. ``exact`` and ``block_q`` (fields of subclasses that offer the choice; exact
    semantics and the op's default block here) are passed to
    :func:`~sparsa.ops.vertical_slash.vertical_slash_attention`.

    ``stats.info["dense_fallback"]`` is True when the call ran dense causal attention instead
    of the lines: with superset semantics (``exact=False``) the op routes to dense attention
    when the tiles would compute most of a dense pass, and those pairs are what the stats count
    (compression 1 for every head).
    """

    fast_masks = True
    exact = True
    block_q = None

    def _plan(self, q: torch.Tensor, k: torch.Tensor, scale: float,
              backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def plan(self, q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Choose the lines of every query head.

        q: (B, H, q_len, D); k: (B, Hkv, kv_len, D). Returns ``(vertical_indices,
        slash_indices)``, int32 (B, H, n_vertical) absolute key columns and (B, H, n_slash)
        diagonal offsets (the widest head's counts when heads have different budgets), each
        row sorted ascending with -1 padding at the end.
        """
        check_qkv(q, k, k)
        vi, si, _ = self._plan(q, k, check_scale(scale, q.shape[-1]))
        return _trim(vi), _trim(si)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                backend: str | None) -> tuple[torch.Tensor, AttentionStats]:
        vi, si, info = self._plan(q, k, scale, backend)
        layout = info.pop("layout", None)      # a superset planner's layout of these lines, if it built one
        # the planner's lists are in range: no host read-back to check them
        out, pairs = vertical_slash_attention(q, k, v, vi, si, scale=scale, backend=backend, exact=self.exact,
                                              block_q=self.block_q, check_indices=False, layout=layout)
        lq, lk = q.shape[2], k.shape[2]
        # the superset route is all-or-nothing per call and counts every causal pair
        info["dense_fallback"] = not self.exact and bool((pairs == float(causal_pairs(lq, lk))).all())
        return out, prefill_stats(self.name, pairs, lq, lk, **info)

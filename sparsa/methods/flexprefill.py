"""FlexPrefill (Lai et al., ICLR 2025): vertical-slash lines with per-head adaptive budgets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .._validation import check_float, check_int
from ..ops.dense.reference import causal_pairs
from ._estimate import (bisect_fraction_tensor, candidate_ways, last_q_line_mass, line_pairs, ranks,
                        selection_order, take_prefix)
from ._lines import LinePattern
from .registry import register

MIN_BUDGET_DEFAULT = 1024
_ALPHA_STEPS = 40  # bisection steps over alpha in [0, 1]


@register
@dataclass
class FlexPrefill(LinePattern):
    """Vertical-Slash whose budgets follow each head's estimated attention mass.

    Estimation as in :class:`~sparsa.methods.vertical_slash.VerticalSlash`: the last
    ``last_q`` queries attend causally over all keys, per query head, and the probabilities
    are averaged down each key column and along each diagonal, giving two distributions that
    each sum to one. Lines are taken in the order forced first (the first ``init_tokens``
    columns, the ``local_diagonals`` nearest diagonals), then heaviest first; each head keeps
    the shortest prefix whose cumulative mass reaches ``alpha`` (the paper's gamma), separately
    for columns and diagonals, then at least ``min_budget`` and at most ``max_budget`` lines of
    each kind (clamped to ``kv_len``). Concentrated heads so get small budgets, diffuse heads
    large ones. Attention covers exactly the chosen columns and diagonals (causally).

    Defaults are the paper's: ``alpha=0.9``, ``min_budget=1024`` tokens, ``last_q=128`` (its
    last query block). The paper selects 128-wide blocks of lines and switches some heads to a
    query-aware block pattern (its ``tau``); this definition selects single lines and always
    uses the vertical-slash pattern. Forced lines follow MInference (30 columns, 100 diagonals).

    ``compression``: when set and ``alpha`` is unset, ``alpha`` is searched in [0, 1] by
    bisection on the exact pair count of the chosen lines (summed over batch and heads), so
    the achieved compression is the closest reachable to the target while heads keep their
    relative budgets. In that mode an unset ``min_budget`` means no floor beyond the forced
    lines (1024 columns and 1024 diagonals alone cap compression near 2.3 at 4K tokens). At ``kv_len``
    4096 the forced lines alone give compression about 16, so higher targets saturate there.
    ``compression=1`` keeps every line (dense attention).

    ``stats.info`` holds ``alpha`` (the one used), ``vertical_budget`` and ``slash_budget``
    ((batch, heads) int tensors, forced lines included) and ``last_q``.
    """

    name = "flexprefill"
    paper = "Lai et al., FlexPrefill, ICLR 2025"

    alpha: float | None = None
    min_budget: int | None = None
    max_budget: int | None = None
    last_q: int = 128
    init_tokens: int = 30
    local_diagonals: int = 100

    def validate(self) -> None:
        if self.alpha is not None:
            check_float("alpha", self.alpha, 0.0, 1.0, low_open=True)
        check_int("last_q", self.last_q, minimum=1)
        check_int("init_tokens", self.init_tokens, minimum=0)
        check_int("local_diagonals", self.local_diagonals, minimum=1)
        if self.min_budget is not None:
            check_int("min_budget", self.min_budget, minimum=0)
        if self.max_budget is not None:
            check_int("max_budget", self.max_budget, minimum=0)
            forced = max(self.init_tokens, self.local_diagonals)
            if self.max_budget < forced:
                raise ValueError(f"max_budget: must be >= the forced lines (init_tokens={self.init_tokens}, "
                                 f"local_diagonals={self.local_diagonals}), got {self.max_budget}")
            if self.min_budget is not None and self.max_budget < self.min_budget:
                raise ValueError(f"max_budget: must be >= min_budget ({self.min_budget}), got {self.max_budget}")

    def target(self) -> float | None:
        return None if self.alpha is not None else self.compression

    def _floor(self) -> int:
        if self.min_budget is not None:
            return self.min_budget
        return 0 if self.compression is not None else MIN_BUDGET_DEFAULT

    def _plan(self, q: torch.Tensor, k: torch.Tensor, scale: float,
              backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        b, h, lq = q.shape[:3]
        lk = k.shape[2]
        col_mass, diag_mass = last_q_line_mass(q, k, scale, self.last_q, backend=backend)
        init, local = min(self.init_tokens, lk), min(self.local_diagonals, lk)
        v_order = selection_order(col_mass, init)
        s_order = selection_order(diag_mass, local)
        cap = lk if self.max_budget is None else min(self.max_budget, lk)
        floor = min(self._floor(), cap)
        # cumulative mass in selection order, normalised so the last entry is exactly 1
        v_cum = col_mass.gather(-1, v_order).cumsum(-1)
        s_cum = diag_mass.gather(-1, s_order).cumsum(-1)
        v_cum, s_cum = v_cum / v_cum[..., -1:], s_cum / s_cum[..., -1:]

        def budgets(alpha: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # shortest prefix reaching alpha = entries strictly below alpha, plus one; alpha may be
            # a (K, 1, 1, 1) tensor of candidates, giving (K, B, H) budgets; compared in the masses'
            # dtype, as a Python float is
            if isinstance(alpha, torch.Tensor):
                alpha = alpha.to(v_cum.dtype)
            nv = (v_cum < alpha).sum(-1) + 1
            ns = (s_cum < alpha).sum(-1) + 1
            nv = nv.clamp(min=max(floor, init), max=cap).clamp(max=lk)
            ns = ns.clamp(min=max(floor, local), max=cap).clamp(max=lk)
            return nv, ns

        alpha = self.alpha
        if alpha is None and self.compression == 1.0:
            nv = torch.full((b, h), lk, dtype=torch.long, device=q.device)
            ns = nv.clone()
            alpha = 1.0
        else:
            if alpha is None and self.compression is not None:
                alpha = self._search_alpha(budgets, ranks(v_order), ranks(s_order), lq, lk)
            elif alpha is None:
                alpha = 0.9
            nv, ns = budgets(alpha)
        # alpha and the budgets stay on the device until the stats are read; the lists take the cap
        info = {"alpha": alpha, "vertical_budget": nv, "slash_budget": ns, "last_q": min(self.last_q, lq)}
        return take_prefix(v_order, nv, cap), take_prefix(s_order, ns, cap), info

    def _search_alpha(self, budgets: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                      v_rank: torch.Tensor, s_rank: torch.Tensor, q_len: int, kv_len: int) -> torch.Tensor:
        """Alpha whose total pair count is closest to the compression target (0-dim float64
        tensor): ``_ALPHA_STEPS`` bisection steps over [0, 1], run on the device."""
        target = causal_pairs(q_len, kv_len) * v_rank.shape[0] * v_rank.shape[1] / self.compression

        def count(alpha: torch.Tensor) -> torch.Tensor:
            nv, ns = budgets(alpha.view(-1, 1, 1, 1))                     # (K, B, H)
            return line_pairs(v_rank < nv[..., None], s_rank < ns[..., None], q_len, kv_len).flatten(1).sum(1)

        ways = 1 << (candidate_ways(v_rank.numel()).bit_length() - 1)    # a power of two
        return bisect_fraction_tensor(count, target, _ALPHA_STEPS, ways=ways, device=v_rank.device)

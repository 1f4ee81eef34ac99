"""MInference's Vertical-Slash prefill pattern (Jiang et al., 2024)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .._validation import check_int
from ..ops.dense.reference import causal_pairs
from ..backend import use_kernel
from ..ops.vertical_slash.convert import BLOCK_Q_CHOICES, prepare_vertical_slash, superset_pairs
from ._estimate import (candidate_ways, last_q_line_mass, line_pairs, ranks, selection_order, solve_budget_tensor,
                        take_prefix, top_lines)
from ._lines import LinePattern
from .registry import register

VERTICAL_DEFAULT = 1000
SLASH_DEFAULT = 6096
SUPERSET_ROUNDS = 8          # line searches at most, superset semantics with a compression target
SUPERSET_TOLERANCE = 0.03    # stop once the attended pairs' compression is this close to the target


@register
@dataclass
class VerticalSlash(LinePattern):
    """Each head attends to a few key columns ("vertical") and a few diagonals ("slash").

    Planning, per query head: the last ``last_q`` queries attend causally over all keys;
    summing those probabilities down each key column ranks the columns, summing along each
    diagonal (offset = query position - key position) ranks the diagonals. The first
    ``init_tokens`` columns and the ``local_diagonals`` nearest diagonals (offset 0 = the
    query itself) are always kept and count toward the budgets; the heaviest other lines fill
    ``vertical`` columns and ``slash`` diagonals. Attention then covers exactly the union of
    those columns and diagonals (causally). Budgets are clamped to ``kv_len``.

    Defaults are MInference's: ``vertical=1000``, ``slash=6096``, ``last_q=64``; its
    planner always keeps the first 30 columns and the last 100 diagonals.

    ``compression``: when set and ``vertical``/``slash`` are unset, both budgets scale
    together at the 1000:6096 ratio (never below the forced lines) and the scale is searched
    on the exact pair count of the chosen lines, summed over batch and heads, so the achieved
    compression is the closest reachable to the target. An explicit budget stays fixed and
    only the other one is searched. With the forced lines alone at ``kv_len`` 4096 the
    compression is about 16, so higher targets saturate there at short contexts.
    ``compression=1`` keeps every line (dense attention). The search runs on the device with
    no host read (a few rounds of candidate budgets evaluated at once); its index lists are
    padded with -1 to the largest reachable budget.

    ``exact`` (default True): attention covers exactly the chosen lines. ``exact=False``
    uses MInference's superset semantics: every causal pair of the 64-key tiles that cover
    the diagonals (per block of ``block_q`` query rows) is attended too, and when those tiles
    would compute at least 70% of a dense causal pass, dense causal attention runs instead
    (see :mod:`sparsa.ops.vertical_slash.convert`); the reported compression counts the
    pairs actually attended. With a ``compression`` target the search aims at those attended
    pairs too: the tiles add pairs the lines do not hold (on SmolLM2 at 8K a line search for 10
    attends a 2.8th), so the line target is raised by the inflation the tiles showed and
    searched again, up to ``SUPERSET_ROUNDS`` times, keeping the closest result (each round
    builds the tile layout once more; the host reads one number per round). ``block_q`` (64 or
    128; default: the op's choice for the semantics) sets the tile geometry, so with
    ``exact=False`` it is part of the result.

    Planning with fixed budgets picks the lines with one ``topk`` per head; the chosen lines
    equal the full sort's except where float rounding of the estimate reorders near-equal
    masses (the CUDA estimate multiplies in bf16/fp16 with float32 accumulation, the CPU one
    in float32).

    ``stats.info`` holds ``vertical`` and ``slash`` (the budgets used, forced lines
    included), ``last_q`` (estimate rows used) and the forced counts; with ``exact=False`` and
    a target, ``superset_planned``: the compression of the attended pairs the search settled on.
    """

    name = "vertical_slash"
    paper = "Jiang et al., MInference 1.0, NeurIPS 2024"

    vertical: int | None = None
    slash: int | None = None
    last_q: int = 64
    init_tokens: int = 30
    local_diagonals: int = 100
    exact: bool = True
    block_q: int | None = None

    def validate(self) -> None:
        if not isinstance(self.exact, bool):
            raise TypeError(f"exact: expected a bool, got {type(self.exact).__name__}")
        if self.block_q is not None and (isinstance(self.block_q, bool) or self.block_q not in BLOCK_Q_CHOICES):
            raise ValueError(f"block_q: must be None or one of {BLOCK_Q_CHOICES}, got {self.block_q!r}")
        check_int("last_q", self.last_q, minimum=1)
        check_int("init_tokens", self.init_tokens, minimum=0)
        check_int("local_diagonals", self.local_diagonals, minimum=1)
        if self.vertical is not None:
            check_int("vertical", self.vertical, minimum=0)
            if self.vertical < self.init_tokens:
                raise ValueError(f"vertical: must be >= init_tokens ({self.init_tokens}), the always-kept "
                                 f"first columns count toward it; got {self.vertical}")
        if self.slash is not None:
            check_int("slash", self.slash, minimum=0)
            if self.slash < self.local_diagonals:
                raise ValueError(f"slash: must be >= local_diagonals ({self.local_diagonals}), the always-kept "
                                 f"recent diagonals count toward it; got {self.slash}")

    def target(self) -> float | None:
        return None if self.vertical is not None and self.slash is not None else self.compression

    def _fixed_budgets(self, kv_len: int) -> tuple[int, int] | None:
        """(vertical, slash) budgets when no compression search is needed, else None."""
        fixed_v = None if self.vertical is None else min(self.vertical, kv_len)
        fixed_s = None if self.slash is None else min(self.slash, kv_len)
        if self.compression is None or (fixed_v is not None and fixed_s is not None):
            return (min(VERTICAL_DEFAULT, kv_len) if fixed_v is None else fixed_v,
                    min(SLASH_DEFAULT, kv_len) if fixed_s is None else fixed_s)
        if self.compression == 1.0 and fixed_v is None and fixed_s is None:
            return kv_len, kv_len
        return None

    def _budgets(self, v_order: torch.Tensor, s_order: torch.Tensor, q_len: int,
                 kv_len: int, compression: float | None = None) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """(vertical, slash) budgets for a compression target (default ``self.compression``) of
        the lines' exact pairs, forced lines included.

        The search runs on the device (:func:`solve_budget_tensor`, no host read). Returns the
        budgets as 0-dim int64 tensors and their host-known upper bounds (each <= kv_len).
        """
        init = min(self.init_tokens, kv_len)
        local = min(self.local_diagonals, kv_len)
        fixed_v = None if self.vertical is None else min(self.vertical, kv_len)
        fixed_s = None if self.slash is None else min(self.slash, kv_len)

        def budgets(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # Python's round(t * V / S): the same float64 quotient, rounded half to even
            nv = (torch.full_like(t, fixed_v) if fixed_v is not None else
                  torch.round((t * VERTICAL_DEFAULT).double() / SLASH_DEFAULT).long().clamp(min=init, max=kv_len))
            ns = torch.full_like(t, fixed_s) if fixed_s is not None else t.clamp(min=local, max=kv_len)
            return nv, ns

        v_rank, s_rank = ranks(v_order), ranks(s_order)

        def count(t: torch.Tensor) -> torch.Tensor:
            nv, ns = budgets(t)
            shape = (-1,) + (1,) * v_rank.dim()
            return line_pairs(v_rank < nv.view(shape), s_rank < ns.view(shape), q_len, kv_len).flatten(1).sum(1)

        compression = self.compression if compression is None else compression
        target = causal_pairs(q_len, kv_len) * v_order.shape[0] * v_order.shape[1] / compression
        # t is the slash budget; its range lets the vertical budget alone reach kv_len too
        hi = math.ceil(kv_len * SLASH_DEFAULT / VERTICAL_DEFAULT)
        t = solve_budget_tensor(count, target, 0, hi, ways=candidate_ways(v_rank.numel()), device=v_order.device)
        nv, ns = budgets(t)
        return nv, ns, kv_len if fixed_v is None else fixed_v, kv_len if fixed_s is None else fixed_s

    def _plan(self, q: torch.Tensor, k: torch.Tensor, scale: float,
              backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        lq, lk = q.shape[2], k.shape[2]
        col_mass, diag_mass = last_q_line_mass(q, k, scale, self.last_q, backend=backend)
        init = min(self.init_tokens, lk)
        local = min(self.local_diagonals, lk)
        info = {"last_q": min(self.last_q, lq), "init_tokens": init, "local_diagonals": local}
        fixed = self._fixed_budgets(lk)
        if fixed is not None:
            # no host synchronisation on this path: budgets are known, one topk per head
            nv, ns = fixed
            info.update(vertical=nv, slash=ns)
            return top_lines(col_mass, init, nv), top_lines(diag_mass, local, ns), info
        v_order = selection_order(col_mass, init)
        s_order = selection_order(diag_mass, local)
        if not self.exact:
            return self._superset_lines(v_order, s_order, lq, lk, backend, info)
        nv, ns, v_width, s_width = self._budgets(v_order, s_order, lq, lk)
        # budgets stay on the device (the stats read them when read); the lists take the host bounds
        info.update(vertical=nv, slash=ns)
        return take_prefix(v_order, nv, v_width), take_prefix(s_order, ns, s_width), info

    def _superset_lines(self, v_order: torch.Tensor, s_order: torch.Tensor, lq: int, lk: int,
                        backend: str | None, info: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Lines whose superset layout attends the pairs closest to the compression target."""
        assert self.compression is not None
        b, h = v_order.shape[:2]
        dense = float(causal_pairs(lq, lk)) * b * h
        use_triton = use_kernel(backend, v_order.device, lambda: None)
        goal, line_target, best = self.compression, self.compression, None
        below = above = None                 # line targets known to attend fewer / enough pairs' worth
        for _ in range(SUPERSET_ROUNDS):
            nv, ns, v_width, s_width = self._budgets(v_order, s_order, lq, lk, line_target)
            vi, si = take_prefix(v_order, nv, v_width), take_prefix(s_order, ns, s_width)
            layout = prepare_vertical_slash(vi, si, lq, lk, use_triton=use_triton, block_q=self.block_q, exact=False,
                                            check_indices=False)
            attended = dense / max(float(superset_pairs(layout, h).sum()), 1.0)
            miss = abs(math.log(attended / goal))
            if best is None or miss < best[0]:
                best = (miss, vi, si, nv, ns, attended, layout)
            if miss <= math.log1p(SUPERSET_TOLERANCE):
                break
            if attended < goal:
                below = line_target
            else:
                above = line_target
            if below is not None and above is not None:
                line_target = math.sqrt(below * above)        # bisect the bracket, geometrically
            else:
                # the line target that would give the goal, were the tiles to inflate the pairs alike
                line_target = line_target * goal / attended
            line_target = min(max(line_target, 1.0), float(causal_pairs(lq, lk)))
        _, vi, si, nv, ns, attended, layout = best
        # the layout goes to the op with the lines (LinePattern.forward), which then need not build it again
        info.update(vertical=nv, slash=ns, superset_planned=attended, layout=layout)
        return vi, si, info

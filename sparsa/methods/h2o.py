"""H2O: heavy-hitter oracle KV-cache eviction (Zhang et al., 2023)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._validation import check_int, check_qkv, check_scale, check_tensor
from ..cache.varlen import VarlenKVCache
from ..ops.kv_quant import QuantSpec
from ..ops.dense.reference import causal_mask_fn, masked_attention, query_positions
from ..ops.sparse_decode import sparse_decode_ref
from ._scores import (attention_column_sums, count_positions, gathered_probs, group_causal_probs,
                      per_query_head)
from .base import AttentionStats, DecodeMethod, decode_stats
from .decoder import (EVICT_RESERVE, VarlenDecoder, per_row, per_sequence, random_kept_positions,
                      stack_positions)
from .registry import register

_UNLIMITED = -1


@dataclass
class H2OState:
    """Decode state: the cached tokens and their accumulated attention.

    ``positions`` (B, Hkv, n) int64, ascending with -1 padding at the end, are the tokens kept
    for the next step (at most ``heavy + recent - 1`` of them; the next token makes the budget
    full). ``scores`` (B, Hkv, n) is the attention each of them has received so far, summed over
    the KV head's query group. ``heavy`` / ``recent`` are the resolved budgets (None = unlimited).
    """

    positions: torch.Tensor
    scores: torch.Tensor
    heavy: int | None
    recent: int | None


def _check_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: object) -> None:
    """ValueError / TypeError naming the argument when a decode step's inputs do not fit together."""
    if not isinstance(state, H2OState):
        raise TypeError(f"state: expected the H2OState that init_decode or decode_step returned, "
                        f"got {type(state).__name__}")
    check_tensor("q", q, ndim=3)
    if q.dtype != k.dtype:  # check_qkv checks k and v
        raise TypeError(f"q: dtype {q.dtype} must match k's ({k.dtype})")
    check_qkv(q[:, :, None], k, v)
    b, hkv, s = k.shape[:3]
    if tuple(state.positions.shape[:2]) != (b, hkv):
        raise ValueError(f"state: holds (batch, kv_heads) = {tuple(state.positions.shape[:2])}, but k has "
                         f"{(b, hkv)}; pass the state of this cache")
    # shapes only: reading positions' values would cost a device sync per step
    if state.positions.shape[2] > s - 1:
        raise ValueError(f"k: {s} tokens, but the state keeps {state.positions.shape[2]} earlier ones; "
                         "k and v must hold every token so far and end with the new one")


def evict(positions: torch.Tensor, scores: torch.Tensor, next_pos: int, heavy: int | None,
          recent: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep what a step at ``next_pos`` may read: (next_pos - recent, next_pos) plus the
    ``heavy`` highest-scored tokens at or before ``next_pos - recent``.

    positions, scores: (B, Hkv, n), -1 / anything at unused slots. Returns both compacted
    (kept entries first, original order preserved, -1 / 0 padding).
    """
    valid = positions >= 0
    if heavy is None or recent is None:
        keep = valid
    else:
        in_window = valid & (positions > next_pos - recent)
        cand = valid & ~in_window
        ranked = scores.masked_fill(~cand, float("-inf"))
        kk = min(heavy, ranked.shape[-1])
        top = torch.zeros_like(cand)
        if kk > 0:
            top.scatter_(-1, ranked.topk(kk, dim=-1).indices, True)
        keep = in_window | (top & cand)
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)
    n = int(keep.sum(-1).max()) if keep.numel() else 0
    order = order[..., :n]
    kept = keep.gather(-1, order)
    pos = torch.where(kept, positions.gather(-1, order), torch.full_like(order, -1))
    sc = torch.where(kept, scores.gather(-1, order), torch.zeros((), dtype=scores.dtype, device=scores.device))
    return pos, sc


class H2ODecoder(VarlenDecoder):
    """H2O on a :class:`~sparsa.cache.VarlenKVCache` that tracks accumulated attention: each
    step adds its attention to the scores and evicts one token per head down to the budget.

    heavy, recent: (B,) int64 on the store's device, the resolved budgets (heavy < 0: unlimited).
    """

    wants_scores = True
    rewindable = False

    def __init__(self, method: Any, cache: VarlenKVCache, heads: int, scale: float, backend: str | None,
                 heavy: torch.Tensor, recent: torch.Tensor) -> None:
        super().__init__(method, cache, heads, scale, backend)
        self.heavy, self.recent = heavy, recent

    def evict(self, aux: Any) -> None:
        self.cache.evict_heavy_recent(aux, self.heavy, self.recent)


@register
@dataclass
class H2O(DecodeMethod):
    """Heavy hitters plus a recent window; evicts again at every decode step.

    A step at position ``p`` reads the ``recent`` newest tokens ``(p - recent, p]`` (itself
    included) and the ``heavy`` tokens at or before ``p - recent`` with the largest accumulated
    attention, summed over the KV head's query group: ``heavy + recent`` tokens once the
    context is longer than that.

    Budgets: explicit ``heavy`` / ``recent`` counts win. Otherwise the paper's setting applies,
    a cache of 20% of the context split evenly (``heavy = recent = 10%`` of the context the
    method is called on: ``kv_len`` in :meth:`forward`, the prompt length in
    :meth:`init_decode`). ``compression = c`` instead sizes the budget to ``context / c`` tokens
    (split evenly, or the remainder next to an explicit field); ``compression=1`` means no
    eviction (dense attention).

    Simulation (:meth:`forward`): row ``p`` ranks tokens by the dense causal attention they
    received from all query rows ``r <= p`` of the call. Real decode (:meth:`decode_step`):
    scores accumulate the attention actually computed over the kept tokens (prompt rows
    dense), and the step's read set is fixed by the previous step's eviction.
    """

    name = "h2o"
    paper = "Zhang et al., H2O: Heavy-Hitter Oracle, NeurIPS 2023"
    compacts = True
    heavy_ratio: ClassVar[float] = 0.1
    recent_ratio: ClassVar[float] = 0.1

    heavy: int | None = None
    recent: int | None = None

    def validate(self) -> None:
        if self.heavy is not None:
            check_int("heavy", self.heavy, minimum=0)
        if self.recent is not None:
            check_int("recent", self.recent, minimum=1)

    def budgets(self, context_len: int) -> tuple[int | None, int | None]:
        """(heavy, recent) for a context of ``context_len`` tokens; None = unlimited."""
        heavy, recent = self.heavy, self.recent
        if heavy is not None and recent is not None:
            return heavy, recent
        c = self.compression
        if c == 1.0:
            return heavy, recent  # the unset one stays unlimited: nothing is evicted
        if c is None:
            h = max(0, round(self.heavy_ratio * context_len)) if heavy is None else heavy
            r = max(1, round(self.recent_ratio * context_len)) if recent is None else recent
            return h, r
        total = max(1, round(context_len / c))
        if heavy is not None:
            return heavy, max(1, total - heavy)
        if recent is not None:
            return max(0, total - recent), recent
        r = max(1, (total + 1) // 2)
        return total - r, r

    def decode_tokens(self, context_len: int) -> int:
        heavy, recent = self.budgets(context_len)
        if heavy is None or recent is None:
            return context_len
        return min(context_len, heavy + recent)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                backend: str | None) -> tuple[torch.Tensor, AttentionStats]:
        b, h, lq, _ = q.shape
        hkv, lk = k.shape[1], k.shape[2]
        heavy, recent = self.budgets(lk)
        last: dict[str, torch.Tensor] = {}
        if heavy is None or recent is None or heavy + recent >= lk:
            out, _ = masked_attention(q, k, v, causal_mask_fn(lq, lk, q.device), scale=scale)
            read = torch.full((b, hkv), float(lk), dtype=torch.float64)
        else:
            cols = torch.arange(lk, device=q.device)
            run = {"next": 0, "acc": torch.zeros(b, hkv, lk, dtype=torch.float64 if q.dtype == torch.float64
                                                 else torch.float32, device=q.device)}

            def mask_fn(s: int, e: int) -> torch.Tensor:
                if run["next"] != s:  # chunks arrive in order; recompute only if they do not
                    run["acc"] = attention_column_sums(q, k, scale, 0, s)
                pos = query_positions(lq, lk, s, e, q.device)
                probs = group_causal_probs(q[:, :, s:e], k, pos, scale)        # (B, Hkv, cq, Lk)
                acc = run["acc"][:, :, None, :] + probs.cumsum(2)             # rows r <= p included
                run["acc"], run["next"] = acc[:, :, -1], e
                in_window = (cols[None, :] <= pos[:, None]) & (cols[None, :] > pos[:, None] - recent)
                cand = cols[None, :] <= pos[:, None] - recent
                m = in_window[None, None].expand(b, hkv, -1, -1).clone()
                if heavy > 0:
                    ranked = acc.masked_fill(~cand[None, None], float("-inf"))
                    top = torch.zeros_like(m)
                    top.scatter_(-1, ranked.topk(min(heavy, lk), dim=-1).indices, True)
                    m |= top & cand[None, None]
                if e == lq:
                    last["read"] = m[:, :, -1].sum(-1).double().cpu()
                return m

            out, _ = masked_attention(q, k, v, mask_fn, scale=scale)
            read = last["read"]
        stats = decode_stats(self.name, per_query_head(read, h), lk, heavy=heavy, recent=recent)
        return out, stats

    def init_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                    scale: float | None = None) -> H2OState:
        """Accumulate the prompt's dense attention and evict down to the budget.

        q: (B, H, Lq, D), the last Lq prompt positions; k, v: (B, Hkv, P, D).
        """
        check_qkv(q, k, v)
        p = k.shape[2]
        heavy, recent = self.budgets(p)
        acc = attention_column_sums(q, k, check_scale(scale, q.shape[-1]))
        positions = torch.arange(p, device=k.device).expand(k.shape[0], k.shape[1], p)
        pos, sc = evict(positions, acc, p, heavy, recent)
        return H2OState(pos, sc, heavy, recent)

    def select(self, q: torch.Tensor, k: torch.Tensor, state: H2OState) -> torch.Tensor:
        new = torch.full((*state.positions.shape[:2], 1), k.shape[2] - 1, dtype=torch.int64, device=k.device)
        return torch.cat([state.positions, new], dim=-1)

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: H2OState, *,
                    scale: float | None = None) -> tuple[torch.Tensor, H2OState, torch.Tensor]:
        """q: (B, H, D); k, v: (B, Hkv, S, D) whose last entry is the new token; ``state`` from
        :meth:`init_decode` or the previous step."""
        _check_step(q, k, v, state)
        scale = check_scale(scale, q.shape[-1])
        idx = self.select(q, k, state)
        out = sparse_decode_ref(q, k, v, idx, scale=scale)
        probs = gathered_probs(q, k, idx, scale)
        scores = torch.cat([state.scores, torch.zeros_like(state.scores[..., :1])], -1).to(probs.dtype) + probs
        pos, sc = evict(idx, scores, k.shape[2], state.heavy, state.recent)
        read = per_query_head(count_positions(idx), q.shape[1])
        return out, H2OState(pos, sc, state.heavy, state.recent), read

    def make_decoder(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, lengths: torch.Tensor | None,
                     scale: float, quant: QuantSpec | None, backend: str | None, reserve: int | None,
                     **options: Any) -> H2ODecoder:
        """The kept prompt tokens (:meth:`init_decode`, per sequence) and their scores in a
        score-tracking store; the decoder evicts one token per head and step."""
        self.reject_options(options)
        b = k.shape[0]
        states = per_sequence(lambda qq, kk, vv: self.init_decode(qq, kk, vv, scale=scale), q, k, v, lengths)
        pos = stack_positions([s.positions for s in states])
        scores = stack_positions([s.scores for s in states], 0.0)
        cache = VarlenKVCache.from_dense(k, v, pos, lengths=lengths, quant=quant, scores=scores,
                                         reserve=EVICT_RESERVE if reserve is None else reserve, track_scores=True)
        unlimited = [s.heavy is None or s.recent is None for s in states]
        heavy = torch.tensor(per_row([_UNLIMITED if u else s.heavy for s, u in zip(states, unlimited)], b),
                             dtype=torch.int64, device=k.device)
        recent = torch.tensor(per_row([0 if u else s.recent for s, u in zip(states, unlimited)], b),
                              dtype=torch.int64, device=k.device)
        return H2ODecoder(self, cache, q.shape[1], scale, backend, heavy, recent)

    def random_decoder(self, k: torch.Tensor, v: torch.Tensor, *, heads: int, quant: QuantSpec | str | None,
                       generator: torch.Generator) -> H2ODecoder:
        """The budget's heavy tokens drawn at random with random scores, plus the recent window."""
        b, hkv, length, d = k.shape
        dev = k.device
        heavy, recent = self.budgets(length)
        counts = torch.full((b, hkv), heavy, device=dev)
        pos = random_kept_positions(b, hkv, length, counts, recent - 1, generator, dev)
        cache = VarlenKVCache.from_dense(k, v, pos, quant=quant, reserve=EVICT_RESERVE, track_scores=True,
                                         scores=torch.rand(pos.shape, generator=generator, device=dev))
        a = torch.full((b,), heavy, dtype=torch.int64, device=dev)
        r = torch.full((b,), recent, dtype=torch.int64, device=dev)
        return H2ODecoder(self, cache, heads, check_scale(None, d), None, a, r)

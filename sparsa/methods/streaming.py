"""A-shape / StreamingLLM: attention sinks plus a local window, in prefill and decode."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import torch

from .._validation import check_int, check_scale
from ..cache.varlen import VarlenKVCache
from ..ops.kv_quant import QuantSpec
from ..ops.block_sparse import local_attention
from ..ops.dense.reference import causal_pairs, query_positions
from ..ops.sparse_decode import sparse_decode_ref
from .base import AttentionStats, DecodeMethod, decode_stats, prefill_stats, solve_budget
from .decoder import EVICT_RESERVE, VarlenDecoder, growing_reserve, per_row, per_sequence, stack_positions
from .registry import register

MODES = ("decode", "prefill")


#: window of compression 1: larger than any context, so nothing is ever evicted
UNBOUNDED = 1 << 62


def visible_tokens(positions: torch.Tensor, sink: int, window: int) -> torch.Tensor:
    """Tokens a query at each position reads: |[0, sink) ∪ (p - window, p]|, int64 like ``positions``."""
    seen = positions + 1
    sinks = seen.clamp(max=sink)
    recent = seen.clamp(max=window)
    # sinks that also fall inside the window are counted once
    overlap = (sinks - (positions - window + 1).clamp_min(0)).clamp_min(0)
    return sinks + recent - overlap


@functools.lru_cache(maxsize=256)
def _prefill_window(sink: int, compression: float, q_len: int, context_len: int) -> int:
    """Window whose pair count over ``q_len`` query rows is closest to the target; cached per shape."""
    target = causal_pairs(q_len, context_len) / compression
    rows = query_positions(q_len, context_len)
    return solve_budget(lambda w: float(visible_tokens(rows, sink, w).sum()), target, 1, context_len)


@dataclass
class StreamingState:
    """Decode state: what the cache keeps for the next step.

    ``positions`` (batch, kv_heads, n) int64: kept token positions, ascending, -1 padded;
    ``length``: tokens written so far (the next token lands at this position);
    ``sink``/``window``: the budget resolved when the prompt was seen.
    """

    positions: torch.Tensor
    length: int
    sink: int
    window: int


class StreamingDecoder(VarlenDecoder):
    """StreamingLLM on a :class:`~sparsa.cache.VarlenKVCache`: after each step the token that left
    the window is evicted, per head. sink, window: (B,) int64 on the store's device."""

    rewindable = False

    def __init__(self, method: Any, cache: VarlenKVCache, heads: int, scale: float, backend: str | None,
                 sink: torch.Tensor, window: torch.Tensor) -> None:
        super().__init__(method, cache, heads, scale, backend)
        self.sink, self.window = sink, window

    def evict(self, aux: Any) -> None:
        self.cache.evict_sink_window(self.sink, self.window, backend=self.backend)


@register
@dataclass
class Streaming(DecodeMethod):
    """Each query at position ``p`` reads the first ``sink`` tokens and ``(p - window, p]``.

    In decode the cache keeps exactly those tokens (``sink + window - 1`` plus the new one)
    and evicts the rest. ``window`` counts the query's own token, so the default (4, 1020)
    is a 1024-token cache.

    ``mode`` says how ``compression`` is read and which stats :meth:`forward` reports:

    * ``"decode"`` (default): forward simulates decode steps, one per query row; the target is
      context / tokens read by one step, so ``sink + window = kv_len / compression`` and the
      stats describe the last row (:func:`decode_stats`);
    * ``"prefill"``: the target is dense causal pairs / pairs computed over all rows; the window
      is solved for it and the stats count pairs (:func:`prefill_stats`).

    The decode API (``init_decode``/``decode_step``) always uses the decode reading, resolved
    against the prompt length. A prompt run as a prefill method (``sparsa.apply``'s prefill
    calls, per-head patterns) goes through :meth:`for_prefill`: the prefill reading, so the
    window is solved on the exact causal pairs of sinks plus window and the stats count them. :meth:`forward` runs
    :func:`~sparsa.ops.block_sparse.local_attention` (sinks + window): the block-sparse Triton
    kernel with an element mask on CUDA, the reference elsewhere.
    """

    name = "streaming"
    phase = "both"
    paper = "Xiao et al., Efficient Streaming Language Models with Attention Sinks, 2023"
    fast_masks = True
    compacts = True

    sink: int = 4
    window: int | None = None
    mode: str = "decode"

    def validate(self) -> None:
        check_int("sink", self.sink, minimum=0)
        if self.window is not None:
            # the query's own token is always read
            check_int("window", self.window, minimum=1)
        if self.mode not in MODES:
            raise ValueError(f"mode: must be one of {MODES}, got {self.mode!r}")

    # ------------------------------------------------------------------ budget

    def target(self) -> float | None:
        return None if self.window is not None else self.compression

    def for_prefill(self) -> "Streaming":
        """This method with the prefill reading of ``compression`` and pair-counting stats."""
        return self if self.mode == "prefill" else dataclasses.replace(self, mode="prefill")

    def resolve_window(self, context_len: int, q_len: int | None = None) -> int:
        """Window used for a context of ``context_len`` tokens.

        ``q_len`` (prefill mode only) is the number of query rows the pairs are counted over.
        """
        if self.window is not None:
            return self.window
        if self.compression is None:
            return 1020
        if self.compression == 1.0:
            return UNBOUNDED  # dense: nothing ever leaves the window, however long decoding runs
        if self.mode == "prefill" and q_len is not None:
            return _prefill_window(self.sink, self.compression, q_len, context_len)
        return max(1, round(context_len / self.compression) - self.sink)

    def decode_tokens(self, context_len: int) -> int:
        """Tokens one decode step reads when the context (new token included) is ``context_len``."""
        return min(context_len, self.sink + self.resolve_window(context_len))

    # ------------------------------------------------------------------ prefill / simulation

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                backend: str | None) -> tuple[torch.Tensor, AttentionStats]:
        lq, lk = q.shape[2], k.shape[2]
        window = self.resolve_window(lk, lq)
        sink = self.sink
        out, pairs = local_attention(q, k, v, window=min(window, lk), sink=sink, scale=scale, backend=backend)
        if self.mode == "prefill":
            return out, prefill_stats(self.name, pairs, lq, lk, sink=sink, window=window, dense_fallback=False)
        read = visible_tokens(torch.tensor(lk - 1), sink, window).item()
        tokens = torch.full(pairs.shape, float(read), dtype=torch.float64)
        return out, decode_stats(self.name, tokens, lk, sink=sink, window=window)

    # ------------------------------------------------------------------ decode API

    @staticmethod
    def _kept(length: int, sink: int, window: int, batch: int, kv_heads: int,
              device: torch.device | str) -> torch.Tensor:
        """Positions kept after ``length`` tokens: sinks and the last ``window - 1`` tokens."""
        tail_start = max(min(sink, length), length - (window - 1))
        pos = torch.cat([torch.arange(min(sink, length), device=device),
                         torch.arange(tail_start, length, device=device)])
        return pos.expand(batch, kv_heads, -1).clone()

    def init_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> StreamingState:
        """Prompt q (B, H, P, D), k/v (B, Hkv, P, D) -> state; the budget is resolved against P."""
        b, hkv, p = k.shape[0], k.shape[1], k.shape[2]
        window = self.resolve_window(p)
        return StreamingState(self._kept(p, self.sink, window, b, hkv, k.device), p, self.sink, window)

    def select(self, q: torch.Tensor, k: torch.Tensor, state: StreamingState) -> torch.Tensor:
        """Positions (B, Hkv, n) read by the step whose new token is ``k``'s last entry."""
        length = k.shape[2]
        if length != state.length + 1:
            raise ValueError(f"k: the cache must hold the {state.length} tokens seen so far plus the new one, "
                             f"got {length}")
        new = torch.full((*state.positions.shape[:2], 1), length - 1, dtype=torch.int64, device=k.device)
        return torch.cat([state.positions.to(k.device), new], dim=-1)

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: StreamingState, *,
                    scale: float | None = None) -> tuple[torch.Tensor, StreamingState, torch.Tensor]:
        """One step: q (B, H, D), k/v (B, Hkv, S, D) with the new token last.

        Returns (out (B, H, D), state after evicting the token that left the window,
        tokens read (B, H) float64).
        """
        positions = self.select(q, k, state)
        out = sparse_decode_ref(q, k, v, positions, scale=check_scale(scale, q.shape[-1]))
        length = k.shape[2]
        # keep sinks and the tokens still inside the next step's window
        keep = (positions >= 0) & ((positions < state.sink) | (positions > length - state.window))
        width = int(keep.sum(-1).max())
        key = torch.where(keep, positions, torch.full_like(positions, length))
        kept, _ = key.sort(dim=-1)
        kept = kept[..., :width]
        kept = torch.where(kept == length, torch.full_like(kept, -1), kept)
        read = (positions >= 0).sum(-1).double()
        group = q.shape[1] // k.shape[1]
        return out, StreamingState(kept, length, state.sink, state.window), read.repeat_interleave(group, dim=1)

    def make_decoder(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, lengths: torch.Tensor | None,
                     scale: float, quant: QuantSpec | None, backend: str | None, reserve: int | None,
                     **options: Any) -> VarlenDecoder:
        """The sinks and the window of each sequence's prompt in a per-head store; each step
        evicts the token leaving the window."""
        self.reject_options(options)
        if self.compression == 1.0 and self.window is None:
            # full budget: nothing is evicted, as for H2O at compression 1 (the window would
            # otherwise stay at the prompt's length and drop tokens as the sequence grows)
            res = growing_reserve(k.shape[2]) if reserve is None else reserve
            cache = VarlenKVCache.from_dense(k, v, None, lengths=lengths, quant=quant, reserve=res)
            return VarlenDecoder(self, cache, q.shape[1], scale, backend)
        b = k.shape[0]
        states = per_sequence(lambda qq, kk, vv: self.init_decode(qq, kk, vv), q, k, v, lengths)
        pos = stack_positions([s.positions for s in states])
        cache = VarlenKVCache.from_dense(k, v, pos, lengths=lengths, quant=quant,
                                         reserve=EVICT_RESERVE if reserve is None else reserve)
        sink = torch.tensor(per_row([s.sink for s in states], b), dtype=torch.int64, device=k.device)
        window = torch.tensor(per_row([s.window for s in states], b), dtype=torch.int64, device=k.device)
        return StreamingDecoder(self, cache, q.shape[1], scale, backend, sink, window)

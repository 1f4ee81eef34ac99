"""SnapKV: prompt KV-cache compression from an observation window (Li et al., 2024)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._validation import check_int, check_qkv, check_scale
from ..cache.varlen import VarlenKVCache
from ..ops.kv_quant import QuantSpec
from ..ops.dense.reference import masked_attention, query_positions
from ..ops.sparse_decode import sparse_decode_ref
from ._scores import (count_positions, group_causal_probs, mask_to_positions, max_pool_same, per_query_head,
                      stable_topk_mask)
from .base import AttentionStats, DecodeMethod, decode_stats
from .decoder import VarlenDecoder, growing_reserve, per_sequence, random_kept_positions, stack_positions
from .registry import register

CAPACITY_DEFAULT = 1024


@dataclass
class KeptTokens:
    """Decode state of the prompt-compressing methods.

    ``positions`` (B, Hkv, n) int64: the cached tokens of each KV head (the kept prompt tokens,
    then every generated token), -1 at unused slots. Heads may keep different numbers.
    """

    positions: torch.Tensor


def observation_scores(q: torch.Tensor, k: torch.Tensor, window: int, kernel: int, scale: float) -> torch.Tensor:
    """SnapKV's key scores: the attention the observation window pays to the prompt prefix.

    The window is the last ``min(window, Lq)`` query rows of q (B, H, Lq, D) (the last
    positions of k's (B, Hkv, L, D)); each row's dense causal softmax over all keys is summed,
    over the window rows and the KV head's query group, on the keys ``[0, L - window)``, then
    max-pooled with size ``kernel``. Returns (B, Hkv, max(0, L - window)).
    """
    lq, lk = q.shape[2], k.shape[2]
    rows = min(window, lq)
    n_cand = max(0, lk - window)
    pos = query_positions(lq, lk, lq - rows, lq, q.device)
    probs = group_causal_probs(q[:, :, lq - rows:], k, pos, scale)      # (B, Hkv, rows, L)
    return max_pool_same(probs[..., :n_cand].sum(2), kernel)


def kept_mask(selected: torch.Tensor, kv_len: int, window: int) -> torch.Tensor:
    """(B, Hkv, L - window) selection -> (B, Hkv, kv_len) cache after compression (window kept)."""
    b, hkv, n_cand = selected.shape
    tail = torch.ones(b, hkv, kv_len - n_cand, dtype=torch.bool, device=selected.device)
    return torch.cat([selected, tail], dim=-1)


@dataclass
class _PromptCompressor(DecodeMethod):
    """Shared machinery of SnapKV and Ada-SnapKV: select prompt tokens once, then decode normally.

    Subclasses implement :meth:`select_prompt`; row ``p`` of the simulation reads
    ``(K ∩ [0, p]) ∪ (p - window, p]``. Decoding keeps the selection in a per-head store and
    appends every generated token (:meth:`make_decoder`).
    """

    compacts = True

    window: int = 32
    kernel: int = 7
    capacity: int | None = None

    def validate(self) -> None:
        check_int("window", self.window, minimum=1)
        check_int("kernel", self.kernel, minimum=1)
        if self.capacity is not None:
            check_int("capacity", self.capacity, minimum=0)

    def target(self) -> float | None:
        return None if self.capacity is not None else self.compression

    def resolve_capacity(self, context_len: int) -> int | None:
        """Tokens kept outside the window (per KV head on average); None = keep everything."""
        if self.capacity is not None:
            return self.capacity
        if self.compression is None:
            return CAPACITY_DEFAULT
        if self.compression == 1.0:
            return None
        return max(0, round(context_len / self.compression) - min(self.window, context_len))

    def decode_tokens(self, context_len: int) -> int:
        """Tokens read where the whole context is the prompt: kept tokens plus the window.

        A decode step ``t`` tokens after a prompt of ``P`` reads ``decode_tokens(P) + t`` tokens
        (generated tokens are never evicted).
        """
        cap = self.resolve_capacity(context_len)
        n_cand = max(0, context_len - self.window)
        if cap is None:
            return context_len
        return min(cap, n_cand) + min(self.window, context_len)

    def select_prompt(self, scores: torch.Tensor, capacity: int) -> torch.Tensor:
        """(B, Hkv, C) candidate scores -> (B, Hkv, C) bool: the prompt tokens kept."""
        raise NotImplementedError

    def _selection(self, q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
        """(B, Hkv, L) bool: the cache after compressing the prompt k (window included)."""
        lk = k.shape[2]
        cap = self.resolve_capacity(lk)
        n_cand = max(0, lk - self.window)
        if cap is None or cap >= n_cand:
            return torch.ones(k.shape[0], k.shape[1], lk, dtype=torch.bool, device=k.device)
        selected = self.select_prompt(observation_scores(q, k, self.window, self.kernel, scale), cap)
        return kept_mask(selected, lk, self.window)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                backend: str | None) -> tuple[torch.Tensor, AttentionStats]:
        lq, lk = q.shape[2], k.shape[2]
        kept = self._selection(q, k, scale)                      # (B, Hkv, L)
        cols = torch.arange(lk, device=q.device)

        def mask_fn(s: int, e: int) -> torch.Tensor:
            pos = query_positions(lq, lk, s, e, q.device)
            causal = cols[None, :] <= pos[:, None]
            recent = causal & (cols[None, :] > pos[:, None] - self.window)
            return (kept[:, :, None, :] & causal[None, None]) | recent[None, None]

        out, _ = masked_attention(q, k, v, mask_fn, scale=scale)
        # the last row reads every kept token: the selection plus the window
        read = kept.sum(-1).double().cpu()
        stats = decode_stats(self.name, per_query_head(read, q.shape[1]), lk, window=self.window,
                             capacity=self.resolve_capacity(lk))
        return out, stats

    def init_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                    scale: float | None = None) -> KeptTokens:
        """Compress the prompt: q (B, H, Lq, D), the last Lq prompt positions; k, v (B, Hkv, P, D)."""
        check_qkv(q, k, v)
        return KeptTokens(mask_to_positions(self._selection(q, k, check_scale(scale, q.shape[-1]))))

    def select(self, q: torch.Tensor, k: torch.Tensor, state: KeptTokens) -> torch.Tensor:
        new = torch.full((*state.positions.shape[:2], 1), k.shape[2] - 1, dtype=torch.int64, device=k.device)
        return torch.cat([state.positions, new], dim=-1)

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: KeptTokens, *,
                    scale: float | None = None) -> tuple[torch.Tensor, KeptTokens, torch.Tensor]:
        """q: (B, H, D); k, v: (B, Hkv, S, D) whose last entry is the new token (kept from now on)."""
        idx = self.select(q, k, state)
        out = sparse_decode_ref(q, k, v, idx, scale=scale)
        return out, KeptTokens(idx), per_query_head(count_positions(idx), q.shape[1])


    def make_decoder(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, lengths: torch.Tensor | None,
                     scale: float, quant: QuantSpec | None, backend: str | None, reserve: int | None,
                     **options: Any) -> VarlenDecoder:
        """Each sequence's selected prompt tokens (:meth:`init_decode`) in a per-head store that
        then keeps every generated token."""
        self.reject_options(options)
        states = per_sequence(lambda qq, kk, vv: self.init_decode(qq, kk, vv, scale=scale), q, k, v, lengths)
        pos = stack_positions([s.positions for s in states])
        res = growing_reserve(float((pos >= 0).sum(-1).double().mean())) if reserve is None else reserve
        cache = VarlenKVCache.from_dense(k, v, pos, lengths=lengths, quant=quant, reserve=res)
        return VarlenDecoder(self, cache, q.shape[1], scale, backend)

    def random_counts(self, b: int, hkv: int, length: int, capacity: int, generator: torch.Generator,
                      device: torch.device) -> torch.Tensor:
        """(B, Hkv) prompt tokens each head keeps outside the window, for :meth:`random_decoder`."""
        return torch.full((b, hkv), min(capacity, length - self.window), device=device)

    def random_decoder(self, k: torch.Tensor, v: torch.Tensor, *, heads: int, quant: QuantSpec | str | None,
                       generator: torch.Generator) -> VarlenDecoder:
        """The window plus :meth:`random_counts` prompt tokens per head drawn at random."""
        b, hkv, length, d = k.shape
        dev = k.device
        counts = self.random_counts(b, hkv, length, self.resolve_capacity(length), generator, dev)
        pos = random_kept_positions(b, hkv, length, counts, self.window, generator, dev)
        cache = VarlenKVCache.from_dense(k, v, pos, quant=quant,
                                         reserve=growing_reserve(float(counts.double().mean()) + self.window))
        return VarlenDecoder(self, cache, heads, check_scale(None, d), None)


@register
@dataclass
class SnapKV(_PromptCompressor):
    """Keep, per KV head, the ``capacity`` prompt tokens the observation window attends to most.

    Scores: the last ``window`` queries' softmax attention on the keys before the window,
    summed over the window and the KV head's query group, max-pooled with size ``kernel``. The
    top ``capacity`` keys (ties to the earlier token) and the window itself stay cached;
    decoding then appends every new token. Row ``p`` of the simulation reads
    ``(K ∩ [0, p]) ∪ (p - window, p]``, so the last row reads ``capacity + window`` tokens.

    Defaults follow the paper's LongBench setting: ``window=32``, ``kernel=7`` (max pooling)
    and a 1024-token selection (``capacity`` counts the selected tokens only; the paper's
    ``max_capacity_prompt`` is ``capacity + window``). ``compression = c`` (with ``capacity``
    unset) sets ``capacity = round(context / c) - window``, so the last row reads about
    ``context / c`` tokens; ``compression=1`` keeps everything (dense).
    """

    name = "snapkv"
    paper = "Li et al., SnapKV: LLM Knows What You are Looking for Before Generation, NeurIPS 2024"

    def select_prompt(self, scores: torch.Tensor, capacity: int) -> torch.Tensor:
        return stable_topk_mask(scores, capacity)

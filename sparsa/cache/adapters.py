"""Running the decode-time methods on the compact caches.

:func:`init_cache` takes a method (H2O, SnapKV, Ada-SnapKV, StreamingLLM, Quest, or None for
dense decoding) and a prompt's queries, keys and values, runs the method's own prompt logic
(``init_decode``: which tokens to keep, which budgets apply) and builds the cache that holds
only what the method will read:

* evicting methods get a :class:`~sparsa.cache.VarlenKVCache` holding the kept tokens; H2O
  and StreamingLLM then evict one token per head at every step, so their cache stays at budget;
  SnapKV and Ada-SnapKV append every generated token;
* Quest gets a :class:`~sparsa.cache.PagedKVCache` (page bounds native or int8, see the
  method's ``bounds``); each step scores the pages, selects the best ones and attends over
  them plus the current page.

Each :meth:`CacheDecoder.step` appends the new token, attends and updates the cache, and
returns the output with :class:`StepStats`: KV tokens and bytes read, and the cache's bytes.
The decoded outputs and the kept tokens are those of the method's ``decode_step`` on a full
cache (checked by the tests against independent implementations). The method classes are
imported when a decoder is built, so the storage classes do not depend on them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .._validation import check_qkv, check_scale
from ..backend import resolve_backend
from ..ops.kv_quant import QuantSpec
from .paged import PagedKVCache
from .varlen import VarlenKVCache, check_lengths

H2O_RESERVE = 16          # free rows per head above the budget: one host sync per this many steps


def growing_reserve(kept_mean: float) -> int:
    """Free rows per head for methods that keep every generated token: 1/16 of what a head
    keeps on average (at least 16). Every head grows by one token per step, so the same room
    serves all heads; the store is re-laid out every ~kept/16 steps and holds ~6% extra."""
    return max(16, int(kept_mean) // 16)
_UNLIMITED = -1


class StepStats:
    """What one decode step read and what the cache holds.

    * ``tokens_read`` (B, H) float64: KV tokens each query head read, Quest's page bounds counted
      in token-equivalents (their bytes over one token's key and value bytes, as stored);
    * ``context`` (B,) int64: tokens of each sequence, the new one included;
    * ``kv_bytes_read`` (B,) float64: bytes of keys and values (codes and scales as stored) and
      of page bounds the step read;
    * ``cache_bytes``: bytes the cache holds after the step.

    Counts that live on the device are copied to the host only when first asked for, so a
    decoding loop does not synchronise.
    """

    def __init__(self, read: torch.Tensor, heads: int, context: list[int], bytes_per_read: torch.Tensor | float,
                 cache_bytes: int, info: dict[str, Any] | None = None) -> None:
        self._read, self._heads, self._bytes_per_read = read, heads, bytes_per_read
        self.context = torch.tensor(context, dtype=torch.int64)
        self.cache_bytes = cache_bytes
        self.info = dict(info or {})

    @property
    def tokens_read(self) -> torch.Tensor:
        r = self._read.double()
        return r.repeat_interleave(self._heads // r.shape[1], dim=1)

    @property
    def kv_bytes_read(self) -> torch.Tensor:
        r = self._read.double()
        return (r * self._bytes_per_read).sum(-1)

    @property
    def compression(self) -> float:
        """Context tokens over tokens read, summed over batch and heads (DESIGN.md's decode ratio)."""
        read = float(self._read.double().sum()) * self._heads / self._read.shape[1]
        return float("inf") if read <= 0 else float(self.context.double().sum()) * self._heads / read

    @property
    def bytes_read(self) -> float:
        return float(self.kv_bytes_read.sum())

    def __repr__(self) -> str:
        return f"StepStats(compression={self.compression:.3f}, bytes_read={self.bytes_read:.0f}, " \
               f"cache_bytes={self.cache_bytes})"


def _resolve_method(method: Any) -> Any:
    from ..methods import get_method
    from ..methods.base import DecodeMethod
    from ..methods.dense import Dense
    if method is None or method == "dense" or isinstance(method, Dense):
        return None
    if isinstance(method, str):
        method = get_method(method)
    if not isinstance(method, DecodeMethod):
        raise TypeError(f"method: expected a decode method (h2o, snapkv, ada_snapkv, streaming, quest), "
                        f"a name or None, got {type(method).__name__}")
    return method


class CacheDecoder:
    """Base of the decoders :func:`init_cache` returns: a method and the cache it reads."""

    method: Any
    cache: Any

    def __init__(self, method: Any, cache: Any, heads: int, scale: float,
                 backend: str | None) -> None:
        self.method, self.cache, self.heads, self.scale, self.backend = method, cache, heads, scale, backend

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, StepStats]:
        """One decode step: q (B, H, D) the new token's queries, k, v (B, Hkv, D) its key and value
        (RoPE applied at position ``seq_lens``). Returns (out (B, H, D), stats)."""
        raise NotImplementedError

    def nbytes(self) -> int:
        return self.cache.nbytes()

    def rewind(self, n: int = 1) -> None:
        """Undo the last ``n`` appends (methods that never evict during decoding only)."""
        raise ValueError(f"rewind: {type(self).__name__} evicts during decoding; its steps cannot be undone")

    @property
    def seq_lens(self) -> torch.Tensor:
        return self.cache.seq_lens

    def _check_step(self, q: torch.Tensor) -> None:
        if not isinstance(q, torch.Tensor):
            raise TypeError(f"q: expected a torch.Tensor, got {type(q).__name__}")
        if q.ndim != 3 or q.shape[1] != self.heads:
            raise ValueError(f"q: expected shape (batch, heads={self.heads}, head_dim), got {tuple(q.shape)}")


class EvictingDecoder(CacheDecoder):
    """Dense, H2O, StreamingLLM, SnapKV and Ada-SnapKV on a :class:`VarlenKVCache`.

    ``policy`` is "h2o" (accumulate and evict one token per step), "streaming" (evict the token
    leaving the window) or None (keep every token). ``param_a`` / ``param_b`` (B,) are
    heavy/recent or sink/window.
    """

    def __init__(self, method: Any, cache: VarlenKVCache, heads: int, scale: float,
                 backend: str | None, policy: str | None, param_a: torch.Tensor | None = None,
                 param_b: torch.Tensor | None = None) -> None:
        super().__init__(method, cache, heads, scale, backend)
        self.policy, self.param_a, self.param_b = policy, param_a, param_b

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, StepStats]:
        self._check_step(q)
        c: VarlenKVCache = self.cache
        c.check_query(q)
        c.append(k, v, backend=self.backend)
        read = c.length.clone()
        out, aux = c.attend(q, scale=self.scale, backend=self.backend, want_scores=self.policy == "h2o")
        if self.policy == "h2o":
            c.evict_h2o(aux, self.param_a, self.param_b)
        elif self.policy == "streaming":
            c.evict_streaming(self.param_a, self.param_b, backend=self.backend)
        return out, StepStats(read, self.heads, c.seq_lens_host, float(c.kv_bytes_per_token()), c.nbytes())

    def rewind(self, n: int = 1) -> None:
        if self.policy is not None:
            super().rewind(n)
        self.cache.rewind(n)


class QuestDecoder(CacheDecoder):
    """Quest on a :class:`PagedKVCache`: score pages, select, attend (selected + current page)."""

    def __init__(self, method: Any, cache: PagedKVCache, heads: int, scale: float, backend: str | None,
                 n_select: list[int | None]) -> None:
        super().__init__(method, cache, heads, scale, backend)
        self.n_select_host = n_select
        self.last_page_list: torch.Tensor | None = None     # (B, Hkv, W) pages the last step read
        big = 1 << 30
        self.n_select = torch.tensor([big if n is None else n for n in n_select], dtype=torch.int32,
                                     device=cache.device)

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, StepStats]:
        from ..ops.sparse_decode import use_triton
        from ..ops.sparse_decode.reference import paged_decode_ref, quest_page_scores_ref, quest_select_ref
        self._check_step(q)
        c: PagedKVCache = self.cache
        if q.shape[0] != c.batch or q.shape[2] != c.head_dim or q.dtype != c.dtype or q.device != c.device:
            raise ValueError(f"q: expected (batch={c.batch}, heads, head_dim={c.head_dim}) {c.dtype} on "
                             f"{c.device}, got {tuple(q.shape)} {q.dtype} on {q.device}")
        c.append(k, v, backend=self.backend)
        ps = c.page_size
        seq_host = c.seq_lens_host
        cur_max = (max(seq_host) - 1) // ps
        bound = cur_max + 1                                 # pages that can be listed
        nsel = [bound if n is None else min(n, bound) for n in self.n_select_host]
        width = max(nsel) + 1
        if use_triton(self.backend, q):
            from ..ops.sparse_decode.triton import (paged_decode_triton, quest_page_scores_triton,
                                                    quest_select_triton)
            # pages from cur_max on are never candidates: scoring them would only widen the
            # selection's tile (4,097 pages would take an 8,192-wide one)
            scores = quest_page_scores_triton(q, c.kmin, c.kmax, c.page_table, c.seq_lens, ps,
                                              max_pages=max(cur_max, 1), scale=c.kscale)
            plist, nlist = quest_select_triton(scores, c.seq_lens, ps, self.n_select, width)
            out = paged_decode_triton(q, c.k, c.v, c.page_table, c.seq_lens, plist, nlist, page_size=ps,
                                      scale=self.scale)
        else:
            scores = quest_page_scores_ref(q, c.kmin, c.kmax, c.page_table[:, :bound], c.seq_lens, ps,
                                           scale=c.kscale)
            plist = quest_select_ref(scores, c.seq_lens, ps, torch.tensor(nsel, device=c.device))
            out = paged_decode_ref(q, c.k, c.v, c.page_table, c.seq_lens, plist, page_size=ps, scale=self.scale)
        self.last_page_list = plist
        # reads per sequence, known on the host: selected pages + current page (+ bounds of the
        # scored pages, in token-equivalents), or the whole sequence when every page is read
        reads, per_read = [], []
        per_tok, per_meta = c.kv_bytes_per_token(), c.meta_bytes_per_page()
        meta_tok = c.meta_tokens_per_page()
        for s, n in zip(seq_host, self.n_select_host):
            cur = (s - 1) // ps
            if n is None or cur <= n:
                reads.append(float(s))
                per_read.append(float(per_tok))
            else:
                toks = n * ps + (s - cur * ps)
                reads.append(toks + cur * meta_tok)
                per_read.append((toks * per_tok + cur * per_meta) / (toks + cur * meta_tok))
        read = torch.tensor(reads, dtype=torch.float64)[:, None].expand(c.batch, c.kv_heads)
        bpr = torch.tensor(per_read, dtype=torch.float64)[:, None]
        return out, StepStats(read, self.heads, seq_host, bpr, c.nbytes(),
                              {"page_size": ps, "pages": self.n_select_host})

    def rewind(self, n: int = 1) -> None:
        self.cache.rewind(n)


def init_cache(method: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, lengths: Any = None,
               quant: QuantSpec | str | None = None, page_size: int | None = None, reserve: int | None = None,
               scale: float | None = None, backend: str | None = None, bounds: str | None = None) -> CacheDecoder:
    """Build the compact cache a decode method needs from the prompt, and its decoder.

    method: a :class:`~sparsa.methods.base.DecodeMethod` (or its name; None / "dense" = keep
    everything). q (B, H, Lq, D): the prompt's last Lq queries (H2O accumulates their attention,
    SnapKV scores with its window); k, v (B, Hkv, L, D) with RoPE applied. ``lengths`` (B,):
    real tokens of each right-padded sequence; then q must hold all L positions and every
    sequence is planned on its own tokens. ``quant``: None, "int8", "int4" or a
    :class:`QuantSpec` (keys and values stored as codes; selection at prefill uses the original
    keys, later scores the dequantized ones). ``page_size`` (Quest): must equal the method's.
    ``bounds`` (Quest): page-bound storage, "native" or "int8", overriding the method's
    ``bounds`` (None: the method's, whose default is int8 for bf16/fp16 and quantized caches).
    ``reserve``: free tokens per head before the cache grows. ``backend``: as for the ops.
    """
    check_qkv(q, k, v)
    resolve_backend(backend, q.device)
    m = _resolve_method(method)
    b, h, lq, d = q.shape
    L = k.shape[2]
    seq = check_lengths(lengths, b, L, k.device)
    ragged = lengths is not None and bool((seq != L).any())
    if ragged and lq != L:
        raise ValueError(f"q: with per-sequence lengths, q must hold all {L} prompt positions (got {lq}), "
                         "so that each sequence is planned on its own tokens")
    sc = check_scale(scale, d)
    spec = QuantSpec.parse(quant)

    def rows(fn):
        """Run fn(q_b, k_b, v_b) per sequence on its real tokens (or once for the whole batch)."""
        if not ragged:
            return [fn(q, k, v)]
        return [fn(q[i:i + 1, :, :n], k[i:i + 1, :, :n], v[i:i + 1, :, :n]) for i, n in enumerate(seq.tolist())]

    def stack_positions(parts: list[torch.Tensor], fill: float | int = -1) -> torch.Tensor:
        width = max(p.shape[-1] for p in parts)
        out = [torch.cat([p, torch.full((*p.shape[:-1], width - p.shape[-1]), fill, dtype=p.dtype,
                                        device=p.device)], -1) for p in parts]
        return torch.cat(out, 0)

    from ..methods.h2o import H2O
    from ..methods.quest import Quest
    from ..methods.snapkv import _PromptCompressor
    from ..methods.streaming import Streaming

    if page_size is not None and not isinstance(m, Quest):
        raise ValueError("page_size: only Quest reads a paged cache")
    if bounds is not None and not isinstance(m, Quest):
        raise ValueError("bounds: only Quest's paged cache keeps page bounds")
    if isinstance(m, Quest):
        if bounds is not None and bounds != m.bounds:
            m = dataclasses.replace(m, bounds=bounds)
        states = rows(lambda qq, kk, vv: m.init_decode(qq, kk, vv, scale=sc, quant=spec))
        ps = states[0].page_size
        if any(s.page_size != ps for s in states):
            raise ValueError("lengths: Quest resolved different page sizes for the sequences; set page_size "
                             "on the method")
        if page_size is not None and page_size != ps:
            raise ValueError(f"page_size: the cache's pages must be Quest's pages ({ps}), got {page_size}")
        n_select = [s.pages for s in states] if ragged else [states[0].pages] * b
        cache = PagedKVCache.from_dense(k, v, ps, lengths=seq if ragged else None, quant=spec,
                                        bounds=states[0].bounds, reserve=256 if reserve is None else reserve)
        return QuestDecoder(m, cache, h, sc, backend, n_select)

    res = growing_reserve(L) if reserve is None else reserve
    if m is None:
        cache = VarlenKVCache.from_dense(k, v, None, lengths=seq if ragged else None, quant=spec, reserve=res)
        return EvictingDecoder(None, cache, h, sc, backend, None)
    if isinstance(m, H2O):
        states = rows(lambda qq, kk, vv: m.init_decode(qq, kk, vv, scale=sc))
        pos = stack_positions([s.positions for s in states])
        scores = stack_positions([s.scores for s in states], 0.0)
        cache = VarlenKVCache.from_dense(k, v, pos, lengths=seq if ragged else None, quant=spec, scores=scores,
                                         reserve=H2O_RESERVE if reserve is None else reserve, track_scores=True)
        heavy = torch.tensor([_UNLIMITED if s.heavy is None or s.recent is None else s.heavy for s in states] * (
            1 if ragged else b), dtype=torch.int64, device=k.device)
        recent = torch.tensor([0 if s.heavy is None or s.recent is None else s.recent for s in states] * (
            1 if ragged else b), dtype=torch.int64, device=k.device)
        return EvictingDecoder(m, cache, h, sc, backend, "h2o", heavy, recent)
    if isinstance(m, Streaming) and m.compression == 1.0 and m.window is None:
        # full budget: nothing is evicted, as for H2O at compression 1 (the window would
        # otherwise stay at the prompt's length and drop tokens as the sequence grows)
        cache = VarlenKVCache.from_dense(k, v, None, lengths=seq if ragged else None, quant=spec, reserve=res)
        return EvictingDecoder(m, cache, h, sc, backend, None)
    if isinstance(m, Streaming):
        states = rows(lambda qq, kk, vv: m.init_decode(qq, kk, vv))
        pos = stack_positions([s.positions for s in states])
        cache = VarlenKVCache.from_dense(k, v, pos, lengths=seq if ragged else None, quant=spec,
                                         reserve=H2O_RESERVE if reserve is None else reserve)
        sink = torch.tensor([s.sink for s in states] * (1 if ragged else b), dtype=torch.int64, device=k.device)
        window = torch.tensor([s.window for s in states] * (1 if ragged else b), dtype=torch.int64, device=k.device)
        return EvictingDecoder(m, cache, h, sc, backend, "streaming", sink, window)
    if isinstance(m, _PromptCompressor):
        states = rows(lambda qq, kk, vv: m.init_decode(qq, kk, vv, scale=sc))
        pos = stack_positions([s.positions for s in states])
        if reserve is None:
            res = growing_reserve(float((pos >= 0).sum(-1).double().mean()))
        cache = VarlenKVCache.from_dense(k, v, pos, lengths=seq if ragged else None, quant=spec, reserve=res)
        return EvictingDecoder(m, cache, h, sc, backend, None)
    raise TypeError(f"method: {type(m).__name__} has no cache adapter; supported: h2o, snapkv, ada_snapkv, "
                    "streaming, quest, dense")


__all__ = ["CacheDecoder", "EvictingDecoder", "QuestDecoder", "StepStats", "init_cache"]

"""Quest: query-aware page selection for decoding (Tang et al., 2024)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from .._validation import check_float, check_int, check_qkv
from ..cache.paged import PagedKVCache
from ..ops.dense.reference import causal_mask_fn, masked_attention, query_positions
from ..ops.kv_quant import QuantSpec
from ..ops.sparse_decode import (PAGE_BOUNDS, bounds_bytes_per_page, dequantize_bounds, pages_to_tokens,
                                 quantize_bounds, resolve_bounds, sparse_decode_ref, use_triton)
from ..ops.sparse_decode.reference import paged_decode_ref, quest_page_scores_ref, quest_select_ref
from ._scores import count_positions, page_bounds, page_scores, per_query_head
from .base import AttentionStats, DecodeMethod, decode_stats, solve_budget
from .decoder import LayerDecoder, StepStats, per_sequence
from .registry import register

PAGE_SIZE_DEFAULT = 16
BUDGET_DEFAULT = 4096


def quest_reads(context_len: int, page_size: int, pages: int | None, meta: float = 1.0) -> float:
    """Token-equivalents one step at position ``context_len - 1`` reads.

    Selected pages, plus the current page up to the query, plus ``meta`` token-equivalents per
    scored page (its key min and max: their bytes over one token's key and value bytes; 1 for
    bounds stored like the keys) when there are more candidate pages than ``pages``; a step
    that can read every earlier page reads the context and no metadata.
    """
    p = context_len - 1
    current = p // page_size
    if pages is None or current <= pages:
        return context_len
    return pages * page_size + (p - current * page_size + 1) + current * meta


def page_meta_tokens(bounds: str, head_dim: int, dtype: torch.dtype, quant: QuantSpec | str | None = None) -> float:
    """One page's bounds in token-equivalents: their bytes over the bytes of one token's key
    and value in a cache of ``dtype`` keys (int8/int4 codes with ``quant``)."""
    spec = QuantSpec.parse(quant)
    kv = 2 * (spec.bytes_per_token(head_dim) if spec is not None
              else head_dim * torch.empty((), dtype=dtype).element_size())
    return bounds_bytes_per_page(bounds, head_dim, dtype) / kv


def stored_page_bounds(k: torch.Tensor, page_size: int, n_pages: int,
                       bounds: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Page bounds (B, Hkv, n_pages, D) as a cache with ``bounds`` storage holds them: exact
    min / max ("native"), or their int8 codes times the scale (rounded outwards, "int8")."""
    kmin, kmax = page_bounds(k, page_size, n_pages)
    if bounds == "native":
        return kmin, kmax
    return dequantize_bounds(*quantize_bounds(kmin, kmax))


@dataclass
class QuestState:
    """Decode state: the resolved page size and pages per step (None = every page), the page
    bounds' storage and their cost per scored page in token-equivalents."""

    page_size: int
    pages: int | None
    bounds: str = "native"
    meta: float = 1.0


class QuestDecoder(LayerDecoder):
    """Quest on a :class:`~sparsa.cache.PagedKVCache`: score pages, select, attend (selected +
    current page). ``n_select``: pages each sequence's step selects (None = every page)."""

    storage = "paged"

    def __init__(self, method: Any, cache: PagedKVCache, heads: int, scale: float, backend: str | None,
                 n_select: list[int | None]) -> None:
        super().__init__(method, cache, heads, scale, backend)
        self.n_select_host = n_select
        self.last_page_list: torch.Tensor | None = None     # (B, Hkv, W) pages the last step read
        big = 1 << 30
        self.n_select = torch.tensor([big if n is None else n for n in n_select], dtype=torch.int32,
                                     device=cache.device)

    def tokens(self) -> torch.Tensor:
        c: PagedKVCache = self.cache
        return torch.tensor(c.seq_lens_host, dtype=torch.int64)[:, None].expand(-1, c.kv_heads).clone()

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, StepStats]:
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
            # local: defers triton
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


@register
@dataclass
class Quest(DecodeMethod):
    """Each step reads the pages its own query scores highest, plus its current page.

    The cache is cut into pages of ``page_size`` consecutive tokens; each complete page keeps
    the per-channel min and max of its keys. A query at position ``p`` scores every page fully
    before its current page by ``Σ_d max(q_d·kmax_d, q_d·kmin_d)`` (an upper bound on ``q·k``
    inside the page), summed over the KV head's query group, reads the ``budget // page_size``
    best pages and its current page (causally). Nothing is evicted.

    ``bounds``: how the min and max are stored, "native" (the keys' dtype) or "int8" (codes
    with one float32 scale per page and KV head, rounded outwards: still an upper bound, half
    the bytes of bf16 bounds); None picks int8 for bfloat16/float16 keys and for int8/int4
    caches, native otherwise.

    Cost per step: selected tokens + current page + the bounds of every scored page, counted in
    token-equivalents (their bytes over one token's key and value bytes: 1 for native bounds,
    about 0.5 for int8 bounds of bf16 keys), e.g. about 4096 + 4096 at 64K with the defaults
    (``page_size=16``, ``budget=4096``, the paper's) and native bounds, 4096 + 2080 with int8
    bounds of bf16 keys.

    ``compression = c`` with ``budget`` unset picks the page count whose reads, metadata
    included, are closest to ``context / c``. When even one page would read too much (the
    metadata alone of 16-token pages is 1/16 of the context), an unset ``page_size`` doubles
    until the target is reachable. ``compression=1`` reads every page (dense attention).
    """

    name = "quest"
    paper = "Tang et al., Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference, ICML 2024"
    compacts = True
    decode_store = "paged"

    page_size: int | None = None
    budget: int | None = None
    bounds: str | None = None

    def validate(self) -> None:
        if self.bounds is not None and self.bounds not in PAGE_BOUNDS:
            raise ValueError(f"bounds: must be one of {PAGE_BOUNDS} or None, got {self.bounds!r}")
        if self.page_size is not None:
            check_int("page_size", self.page_size, minimum=1)
        if self.budget is not None:
            ps = PAGE_SIZE_DEFAULT if self.page_size is None else self.page_size
            check_int("budget", self.budget, minimum=0)
            if self.budget < ps:
                raise ValueError(f"budget: must be >= page_size ({ps}) to select at least one page "
                                 f"besides the current one, got {self.budget}")

    def resolved_bounds(self, dtype: torch.dtype, quant: QuantSpec | str | None = None) -> str:
        """The bound storage for keys of ``dtype`` (cache quantization ``quant``)."""
        return resolve_bounds(self.bounds, dtype, QuantSpec.parse(quant) is not None)

    def meta_tokens(self, dtype: torch.dtype, head_dim: int, quant: QuantSpec | str | None = None) -> float:
        """Token-equivalents of one scored page's bounds for keys of ``dtype`` and ``head_dim``."""
        return page_meta_tokens(self.resolved_bounds(dtype, quant), head_dim, dtype, quant)

    def resolve(self, context_len: int, meta: float = 1.0) -> tuple[int, int | None]:
        """(page_size, pages selected per step; None = all) for a context of ``context_len``;
        ``meta``: token-equivalents per scored page (see :meth:`meta_tokens`)."""
        if self.budget is not None or self.compression is None:
            ps = PAGE_SIZE_DEFAULT if self.page_size is None else self.page_size
            return ps, (BUDGET_DEFAULT if self.budget is None else self.budget) // ps
        if self.compression == 1.0:
            return PAGE_SIZE_DEFAULT if self.page_size is None else self.page_size, None
        target = context_len / self.compression
        if self.page_size is not None:
            ps = self.page_size
        else:
            sizes = [PAGE_SIZE_DEFAULT]
            while sizes[-1] * 2 <= max(PAGE_SIZE_DEFAULT, context_len):
                sizes.append(sizes[-1] * 2)
            fits = [s for s in sizes if quest_reads(context_len, s, 1, meta) <= target]
            ps = fits[0] if fits else min(sizes, key=lambda s: quest_reads(context_len, s, 1, meta))
        current = (context_len - 1) // ps
        if current <= 1:
            return ps, None
        pages = solve_budget(lambda n: quest_reads(context_len, ps, n, meta), target, 1, current)
        return ps, (None if pages >= current else pages)

    def decode_tokens(self, context_len: int, meta: float = 1.0) -> float:
        """Token-equivalents one step reads (see :func:`quest_reads`); ``meta`` per scored page.

        context_len: tokens in the context, the new token included (>= 1).
        """
        check_int("context_len", context_len, minimum=1)
        check_float("meta", meta, 0.0, math.inf)
        return quest_reads(context_len, *self.resolve(context_len, meta), meta)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                backend: str | None) -> tuple[torch.Tensor, AttentionStats]:
        b, h, lq, d = q.shape
        hkv, lk = k.shape[1], k.shape[2]
        bounds = self.resolved_bounds(k.dtype)
        meta = page_meta_tokens(bounds, d, k.dtype)
        ps, pages = self.resolve(lk, meta)
        n_pages = (lk - 1) // ps                      # pages before the last row's current page
        last: dict[str, torch.Tensor] = {}
        if pages is None or n_pages <= pages:
            mask_fn = causal_mask_fn(lq, lk, q.device)
        else:
            kmin, kmax = stored_page_bounds(k, ps, n_pages, bounds)
            cols = torch.arange(lk, device=q.device)
            page_ids = torch.arange(n_pages, device=q.device)

            def mask_fn(s: int, e: int) -> torch.Tensor:
                pos = query_positions(lq, lk, s, e, q.device)
                current = pos // ps
                cand = page_ids[None, :] < current[:, None]                       # (cq, n_pages)
                sc = page_scores(q[:, :, s:e], kmin, kmax).masked_fill(~cand, float("-inf"))
                top = torch.zeros_like(sc, dtype=torch.bool)
                top.scatter_(-1, sc.topk(pages, dim=-1).indices, True)
                sel = (top & cand).repeat_interleave(ps, dim=-1)                  # (B, Hkv, cq, n_pages*ps)
                m = torch.zeros(b, hkv, e - s, lk, dtype=torch.bool, device=q.device)
                m[..., :n_pages * ps] = sel
                m |= ((cols[None, :] >= (current * ps)[:, None]) & (cols[None, :] <= pos[:, None]))[None, None]
                if e == lq:
                    last["read"] = m[:, :, -1].sum(-1).double().cpu()
                return m

        out, _ = masked_attention(q, k, v, mask_fn, scale=scale)
        if "read" in last:
            read = last["read"] + (lk - 1) // ps * meta     # the bounds of every scored page
        else:
            read = torch.full((b, hkv), float(lk), dtype=torch.float64)
        return out, decode_stats(self.name, per_query_head(read, h), lk, page_size=ps,
                                 budget=None if pages is None else pages * ps)

    def init_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                    quant: QuantSpec | str | None = None) -> QuestState:
        """Nothing is evicted; page budgets are resolved for the prompt length k.shape[2], the
        bounds' cost for keys of k's dtype stored with ``quant`` (None, "int8", "int4")."""
        check_qkv(q, k, v)
        bounds = self.resolved_bounds(k.dtype, quant)
        meta = page_meta_tokens(bounds, k.shape[-1], k.dtype, quant)
        return QuestState(*self.resolve(k.shape[2], meta), bounds=bounds, meta=meta)

    def select(self, q: torch.Tensor, k: torch.Tensor, state: QuestState) -> torch.Tensor:
        """Selected pages' tokens then the current page's, (B, Hkv, n); q (B, H, D)."""
        b, hkv, s_len, _ = k.shape
        ps, pages = state.page_size, state.pages
        current = (s_len - 1) // ps
        if pages is None or current <= pages:
            return torch.arange(s_len, device=k.device).expand(b, hkv, s_len)
        kmin, kmax = stored_page_bounds(k, ps, current, state.bounds)
        sc = page_scores(q[:, :, None], kmin, kmax)[:, :, 0]                   # (B, Hkv, current)
        top = sc.topk(pages, dim=-1).indices.sort(dim=-1).values
        tail = torch.arange(current * ps, s_len, device=k.device).expand(b, hkv, -1)
        return torch.cat([pages_to_tokens(top, ps, s_len), tail], dim=-1)

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: QuestState, *,
                    scale: float | None = None) -> tuple[torch.Tensor, QuestState, torch.Tensor]:
        """q: (B, H, D); k, v: (B, Hkv, S, D) whose last entry is the new token.

        tokens read counts the page metadata (``state.meta`` token-equivalents per scored page).
        """
        idx = self.select(q, k, state)
        out = sparse_decode_ref(q, k, v, idx, scale=scale)
        current = (k.shape[2] - 1) // state.page_size
        meta = 0.0 if state.pages is None or current <= state.pages else current * state.meta
        return out, state, per_query_head(count_positions(idx) + meta, q.shape[1])

    def make_decoder(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, lengths: torch.Tensor | None,
                     scale: float, quant: QuantSpec | None, backend: str | None, reserve: int | None,
                     page_size: int | None = None, bounds: str | None = None, **options: Any) -> QuestDecoder:
        """Every prompt token in a paged store with per-page key bounds; pages per step resolved
        for each sequence's prompt. ``page_size``: must equal the method's (the store's pages
        are Quest's pages); ``bounds``: "native" or "int8", overriding the method's ``bounds``."""
        self.reject_options(options)
        m = self if bounds is None or bounds == self.bounds else dataclasses.replace(self, bounds=bounds)
        b = k.shape[0]
        states = per_sequence(lambda qq, kk, vv: m.init_decode(qq, kk, vv, scale=scale, quant=quant), q, k, v,
                              lengths)
        ps = states[0].page_size
        if any(s.page_size != ps for s in states):
            raise ValueError("lengths: Quest resolved different page sizes for the sequences; set page_size "
                             "on the method")
        if page_size is not None and page_size != ps:
            raise ValueError(f"page_size: the cache's pages must be Quest's pages ({ps}), got {page_size}")
        n_select = [s.pages for s in states] if lengths is not None else [states[0].pages] * b
        cache = PagedKVCache.from_dense(k, v, ps, lengths=lengths, quant=quant, bounds=states[0].bounds,
                                        reserve=256 if reserve is None else reserve)
        return QuestDecoder(m, cache, q.shape[1], scale, backend, n_select)

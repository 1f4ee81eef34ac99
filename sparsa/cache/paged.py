"""Paged KV cache with per-page key bounds: the layout Quest reads natively.

Keys and values live in a pool of physical pages, each ``(kv_heads, page_size, head_dim)``
(bf16/fp16, or int8/int4 codes with float16 parameters); ``page_table[b, i]`` names the
physical page holding tokens ``[i * page_size, (i + 1) * page_size)`` of sequence ``b``. For
every physical page and KV head the cache keeps the per-channel minimum and maximum of the keys
side by side (``kbounds``: (pages, kv_heads, 2, head_dim), min then max), so that scoring a
page reads one contiguous chunk. For a quantized cache they bound the dequantized keys (the
ones attention reads). Quest's score stays an upper bound of every q·k in the page.

Two storages of the bounds (``bounds``):

* ``"native"``: in the cache dtype, updated on every append (for a quantized cache rounded
  outwards to that dtype);
* ``"int8"``: int8 codes with one float32 scale per (page, KV head) (``kscale``), min rounded
  down and max rounded up (:func:`~sparsa.ops.sparse_decode.quantize_bounds`); half the bytes
  of bf16 bounds. They are computed once, from the page's keys, when its last token is
  appended (only complete pages are scored), so they do not drift with repeated rounding.

The default is int8 for int8/int4 caches and for bf16/fp16 caches, native for float32/float64.

Sequences may have different lengths. Pages are handed out by a host-side allocator when a
sequence crosses a page boundary, so appending never waits for the device.
"""
from __future__ import annotations

from typing import Any

import torch

from .._validation import FLOAT_DTYPES, check_int
from ..ops.kv_quant import QuantizedTensor, QuantSpec, quantize
from ..ops.kv_quant.reference import _quantize_unchecked
from ..ops.sparse_decode.reference import (bounds_bytes_per_page, dequantize_bounds, gather_rows, paged_rows,
                                           quantize_bounds, resolve_bounds)
from .varlen import _stores, _use_append_kernel, check_append, check_kv, check_lengths, store_nbytes


BOUND_WIDEN = 2.0 ** -8     # > one bf16/fp16 rounding step: widened bounds stay bounds after rounding


def bound_round(x: torch.Tensor, dtype: torch.dtype, up: bool, widen: bool) -> torch.Tensor:
    """Page bound values x (float32) in ``dtype``. With ``widen`` (dequantized keys, which the
    dtype may not hold exactly) they are first pushed outwards by 2^-8 of their magnitude, so
    the rounded bound still covers x; the Triton append does the same arithmetic."""
    if widen and dtype != torch.float32:
        x = x + x.abs() * BOUND_WIDEN if up else x - x.abs() * BOUND_WIDEN
    return x.to(dtype)


class PagedKVCache:
    """Paged K/V pools, page table and per-page key bounds (see the module docstring).

    Attributes (device tensors): ``k``, ``v`` row stores of ``pages * kv_heads * page_size``
    rows (row ``(page * kv_heads + h) * page_size + offset``); ``kbounds`` (pages, kv_heads, 2,
    head_dim) page bounds, min then max, in the cache dtype ("native") or int8 codes ("int8");
    ``kscale`` (pages, kv_heads) float32 scales of int8 bounds (None for native ones);
    ``page_table`` (B, max_pages) int32 (-1 = unassigned); ``seq_lens`` (B,) int64.
    ``bounds`` is "native" or "int8" (None picks the default, see the module docstring).
    """

    def __init__(self, batch: int, kv_heads: int, head_dim: int, page_size: int, *, dtype: torch.dtype,
                 device: torch.device | str, quant: QuantSpec | str | None = None, bounds: str | None = None,
                 pages: int = 0, max_pages_per_seq: int = 1) -> None:
        check_int("page_size", page_size, minimum=1)
        check_int("batch", batch, minimum=1)
        check_int("kv_heads", kv_heads, minimum=1)
        check_int("head_dim", head_dim, minimum=1)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype: must be one of float16/bfloat16/float32/float64, got {dtype}")
        self.batch, self.kv_heads, self.head_dim, self.page_size = batch, kv_heads, head_dim, page_size
        self.dtype, self.quant = dtype, QuantSpec.parse(quant)
        self.bounds = resolve_bounds(bounds, dtype, self.quant is not None)
        dev = torch.device(device)
        if self.quant is not None:
            self.quant.groups(head_dim)
        rows = pages * kv_heads * page_size
        self.k = self._empty_store(rows, dev)
        self.v = self._empty_store(rows, dev)
        int8 = self.bounds == "int8"
        self.kbounds = torch.zeros(pages, kv_heads, 2, head_dim, dtype=torch.int8 if int8 else dtype, device=dev)
        self.kscale = torch.zeros(pages, kv_heads, dtype=torch.float32, device=dev) if int8 else None
        self.page_table = torch.full((batch, max(1, max_pages_per_seq)), -1, dtype=torch.int32, device=dev)
        self.seq_lens = torch.zeros(batch, dtype=torch.int64, device=dev)
        self._seq_host = [0] * batch
        self._pages_host = [0] * batch
        self._free = list(range(pages - 1, -1, -1))     # a stack: pop() hands out low pages first

    def _empty_store(self, rows: int, dev: torch.device) -> torch.Tensor | QuantizedTensor:
        d = self.head_dim
        if self.quant is None:
            return torch.zeros(rows, d, dtype=self.dtype, device=dev)
        _, ng = self.quant.groups(d)
        zero = torch.zeros(rows, ng, dtype=torch.float16, device=dev) if self.quant.bits == 4 else None
        return QuantizedTensor(torch.zeros(rows, self.quant.stored_dim(d), dtype=torch.int8 if self.quant.bits == 8
                                           else torch.uint8, device=dev),
                               torch.zeros(rows, ng, dtype=torch.float16, device=dev), zero, self.quant, d)

    # ------------------------------------------------------------------ page bounds

    @property
    def kmin(self) -> torch.Tensor:
        """(pages, kv_heads, head_dim) view of the stored minima (int8 codes for int8 bounds)."""
        return self.kbounds[:, :, 0]

    @property
    def kmax(self) -> torch.Tensor:
        """(pages, kv_heads, head_dim) view of the stored maxima (int8 codes for int8 bounds)."""
        return self.kbounds[:, :, 1]

    def bound_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(kmin, kmax) (pages, kv_heads, head_dim) float32: the bounds as the scores use them."""
        if self.kscale is None:
            return self.kmin.float(), self.kmax.float()
        return dequantize_bounds(self.kmin, self.kmax, self.kscale)

    def _set_bounds(self, mrow: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Store the bounds lo, hi (n, D) float32 (exact minima / maxima of the keys held) of the
        (page, KV head) rows ``mrow`` (n,), rounded outwards to the storage."""
        kb = self.kbounds.view(-1, 2, self.head_dim)
        if self.kscale is None:
            widen = self.quant is not None
            new = torch.stack([bound_round(lo, self.dtype, up=False, widen=widen),
                               bound_round(hi, self.dtype, up=True, widen=widen)], 1)
            kb[mrow] = new
            return
        cmin, cmax, scale = quantize_bounds(lo, hi)
        kb[mrow] = torch.stack([cmin, cmax], 1)
        self.kscale.view(-1)[mrow] = scale

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dense(cls, k: torch.Tensor, v: torch.Tensor, page_size: int = 16, *, lengths: Any = None,
                   quant: QuantSpec | str | None = None, bounds: str | None = None,
                   reserve: int = 256) -> "PagedKVCache":
        """Page a prompt's keys and values: k, v (B, Hkv, L, D) with RoPE applied; ``lengths``
        (B,) real tokens per right-padded sequence; ``bounds`` the page-bound storage ("native",
        "int8" or None = default); ``reserve`` tokens of room per sequence allocated up front
        (more pages are handed out as needed)."""
        check_kv("k", k, 4)
        check_kv("v", v, 4)
        if k.shape != v.shape or k.dtype != v.dtype or k.device != v.device:
            raise ValueError("v: shape, dtype and device must equal k's")
        check_int("page_size", page_size, minimum=1)
        check_int("reserve", reserve, minimum=0)
        b, hkv, L, d = k.shape
        seq = check_lengths(lengths, b, L, k.device)
        seq_host = [int(x) for x in seq.tolist()]
        need = [-(-(s + reserve) // page_size) for s in seq_host]
        cache = cls(b, hkv, d, page_size, dtype=k.dtype, device=k.device, quant=quant, bounds=bounds,
                    pages=sum(need), max_pages_per_seq=max(need))
        table = torch.full((b, max(need)), -1, dtype=torch.int32)
        for i in range(b):
            for j in range(need[i]):
                table[i, j] = cache._free.pop()
        cache.page_table = table.to(k.device)
        cache._pages_host = list(need)
        # scatter each sequence's tokens into its pages, one sequence at a time (bounded memory)
        head = torch.arange(hkv, device=k.device)
        for i, n in enumerate(seq_host):
            t = torch.arange(n, device=k.device)
            phys = cache.page_table[i].to(torch.int64)[t // page_size]                      # (n,)
            rows = ((phys[None, :] * hkv + head[:, None]) * page_size + (t % page_size)[None, :]).flatten()
            kk, vv = k[i, :, :n].reshape(-1, d), v[i, :, :n].reshape(-1, d)
            if cache.quant is None:
                cache.k[rows] = kk
                cache.v[rows] = vv
                kdeq = kk.float()
            else:
                qk, qv = quantize(kk, cache.quant), quantize(vv, cache.quant)
                for o, s_ in zip(_stores(cache.k), _stores(qk)):
                    o[rows] = s_
                for o, s_ in zip(_stores(cache.v), _stores(qv)):
                    o[rows] = s_
                kdeq = qk.dequantize(torch.float32)
            # page bounds of the keys as stored (dequantized)
            n_pg = -(-n // page_size)
            pad = n_pg * page_size - n
            kd = kdeq.view(hkv, n, d)
            lo_src = torch.cat([kd, kd[:, -1:].expand(hkv, pad, d)], 1) if pad else kd
            lo_src = lo_src.view(hkv, n_pg, page_size, d)
            mrow = (cache.page_table[i, :n_pg].to(torch.int64)[None, :] * hkv + head[:, None]).flatten()
            cache._set_bounds(mrow, lo_src.amin(2).reshape(-1, d), lo_src.amax(2).reshape(-1, d))
            del kd, lo_src, kdeq
        cache.seq_lens = seq.clone()
        cache._seq_host = seq_host
        return cache

    # ------------------------------------------------------------------ bookkeeping

    @property
    def device(self) -> torch.device:
        return self.seq_lens.device

    @property
    def seq_lens_host(self) -> list[int]:
        return list(self._seq_host)

    def num_pages(self) -> int:
        return self.kbounds.shape[0]

    def nbytes(self) -> int:
        """Bytes held: K/V pools (free pages included), page bounds (and scales), page table, lengths."""
        meta = self.kbounds.numel() * self.kbounds.element_size()
        if self.kscale is not None:
            meta += self.kscale.numel() * self.kscale.element_size()
        return (store_nbytes(self.k) + store_nbytes(self.v) + meta + self.page_table.numel() * 4
                + self.seq_lens.numel() * 8)

    def kv_bytes_per_token(self) -> int:
        """Bytes of one token of one KV head, keys plus values, as stored."""
        if self.quant is None:
            return 2 * self.head_dim * torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.quant.bytes_per_token(self.head_dim)

    def meta_bytes_per_page(self) -> int:
        """Bytes of one page's key bounds for one KV head (min, max and the int8 scale)."""
        return bounds_bytes_per_page(self.bounds, self.head_dim, self.dtype)

    def meta_tokens_per_page(self) -> float:
        """One page's bounds in token-equivalents: :meth:`meta_bytes_per_page` over
        :meth:`kv_bytes_per_token` (what Quest's compression counts per scored page)."""
        return self.meta_bytes_per_page() / self.kv_bytes_per_token()

    def _grow_pool(self, extra_pages: int) -> None:
        old = self.num_pages()
        new = old + max(extra_pages, old // 4, 1)
        rows_old = old * self.kv_heads * self.page_size
        dev = self.device

        def grow(x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros((new * self.kv_heads * self.page_size, *x.shape[1:]), dtype=x.dtype, device=dev)
            out[:rows_old] = x
            return out

        if isinstance(self.k, QuantizedTensor):
            self.k, self.v = self.k.map(grow), self.v.map(grow)
        else:
            self.k, self.v = grow(self.k), grow(self.v)
        for name in ("kbounds", "kscale"):
            t = getattr(self, name)
            if t is None:
                continue
            out = torch.zeros(new, *t.shape[1:], dtype=t.dtype, device=dev)
            out[:old] = t
            setattr(self, name, out)
        self._free = list(range(new - 1, old - 1, -1)) + self._free

    def _ensure_page(self, b: int, logical: int) -> None:
        while self._pages_host[b] <= logical:
            if not self._free:
                self._grow_pool(self.batch)
            if self._pages_host[b] >= self.page_table.shape[1]:
                pad = torch.full((self.batch, max(4, self.page_table.shape[1] // 4)), -1, dtype=torch.int32,
                                 device=self.device)
                self.page_table = torch.cat([self.page_table, pad], dim=1)
            self.page_table[b, self._pages_host[b]] = self._free.pop()
            self._pages_host[b] += 1

    # ------------------------------------------------------------------ writing

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor, *, backend: str | None = None) -> None:
        """Append one token per sequence: k_new, v_new (B, Hkv, D), RoPE applied at
        :attr:`seq_lens`. Updates the page's key bounds (int8 bounds: when the token completes
        its page). On CUDA one kernel does it all."""
        check_append(k_new, v_new, (self.batch, self.kv_heads, self.head_dim), self.dtype, self.device)
        for i, s in enumerate(self._seq_host):
            self._ensure_page(i, s // self.page_size)
        ps, hkv, d = self.page_size, self.kv_heads, self.head_dim
        if _use_append_kernel(backend, self.device, d):
            from ..ops.sparse_decode.triton import append_triton  # local: defers triton
            append_triton(k_new, v_new, self.k, self.v, self.seq_lens, page_table=self.page_table,
                          kbounds=self.kbounds, kscale=self.kscale, page_size=ps,
                          widen=self.quant is not None and self.dtype != torch.float32)
            self.seq_lens += 1
            self._seq_host = [s + 1 for s in self._seq_host]
            return
        lp = self.seq_lens // ps
        off = self.seq_lens % ps
        phys = self.page_table.to(torch.int64).gather(1, lp[:, None])[:, 0]              # (B,)
        head = torch.arange(hkv, device=self.device)
        mrow = (phys[:, None] * hkv + head[None, :]).flatten()                          # (B*Hkv,)
        off_r = off.repeat_interleave(hkv)
        rows = mrow * ps + off_r
        kf, vf = k_new.reshape(-1, d), v_new.reshape(-1, d)
        if self.quant is None:
            self.k.index_copy_(0, rows, kf)
            self.v.index_copy_(0, rows, vf)
            kdeq = kf.float()
        else:
            gs, ng = self.quant.groups(d)
            qk = _quantize_unchecked(kf.float(), self.quant, gs, ng)
            qv = _quantize_unchecked(vf.float(), self.quant, gs, ng)
            for o, s in zip(_stores(self.k), _stores(qk)):
                o.index_copy_(0, rows, s)
            for o, s in zip(_stores(self.v), _stores(qv)):
                o.index_copy_(0, rows, s)
            kdeq = qk.dequantize(torch.float32)
        kb = self.kbounds.view(-1, 2, d)
        old = kb.index_select(0, mrow)                                                   # (B*Hkv, 2, D)
        if self.kscale is None:
            first = (off_r == 0)[:, None]
            lo = bound_round(kdeq, self.dtype, up=False, widen=self.quant is not None)
            hi = bound_round(kdeq, self.dtype, up=True, widen=self.quant is not None)
            new = torch.stack([torch.where(first, lo, torch.minimum(old[:, 0], lo)),
                               torch.where(first, hi, torch.maximum(old[:, 1], hi))], 1)
            kb.index_copy_(0, mrow, new)
        else:
            # the token completes its page: bounds of the page's keys as stored, quantized once
            done = off_r == ps - 1
            page_keys = gather_rows(self.k, mrow[:, None] * ps + torch.arange(ps, device=self.device))
            cmin, cmax, scale = quantize_bounds(page_keys.amin(1), page_keys.amax(1))
            kb.index_copy_(0, mrow, torch.where(done[:, None, None], torch.stack([cmin, cmax], 1), old))
            ks = self.kscale.view(-1)
            ks.index_copy_(0, mrow, torch.where(done, scale, ks.index_select(0, mrow)))
        self.seq_lens += 1
        self._seq_host = [s + 1 for s in self._seq_host]

    def rewind(self, n: int = 1) -> None:
        """Drop the ``n`` tokens appended last. Native page bounds keep covering them (still valid
        bounds); a page that is no longer complete is not scored, and its int8 bounds are
        computed again when its last token is appended."""
        check_int("n", n, minimum=0)
        if n and min(self._seq_host) < n:
            raise ValueError(f"n: cannot rewind {n} tokens, a sequence holds {min(self._seq_host)}")
        self.seq_lens -= n
        self._seq_host = [s - n for s in self._seq_host]

    # ------------------------------------------------------------------ reading

    def to_dense(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, v) (B, Hkv, max seq, D) dequantized, zero padded past each sequence. For checks."""
        n_pg = -(-max(self._seq_host) // self.page_size) if self._seq_host else 0
        plist = torch.arange(n_pg, device=self.device, dtype=torch.int32).expand(self.batch, self.kv_heads, n_pg)
        rows, valid = paged_rows(self.page_table, self.seq_lens, plist, self.page_size, self.kv_heads)
        k = gather_rows(self.k, rows) * valid[..., None]
        v = gather_rows(self.v, rows) * valid[..., None]
        L = max(self._seq_host)
        return k[:, :, :L].to(dtype), v[:, :, :L].to(dtype)

    def __repr__(self) -> str:
        q = "bf16/fp16" if self.quant is None else str(self.quant)
        return (f"PagedKVCache(batch={self.batch}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, "
                f"page_size={self.page_size}, pages={self.num_pages()}, storage={q}, bounds={self.bounds}, "
                f"bytes={self.nbytes()})")


__all__ = ["PagedKVCache"]

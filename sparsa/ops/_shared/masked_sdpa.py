"""Fast executor of masked attention: PyTorch SDPA with a boolean mask, in the inputs' dtype.

:func:`~sparsa.ops._shared.masked.masked_attention` is the spec: float32 scores, an explicit
softmax, any mask. :func:`masked_attention_sdpa` computes the same thing for the same
``mask_fn`` with :func:`torch.nn.functional.scaled_dot_product_attention` (its fused CPU
kernel, or whatever SDPA picks on the device), in q's dtype, chunk by chunk of query rows so
the boolean masks of 8K-16K contexts stay small. Per chunk only the keys some row of the
chunk may see are passed to SDPA: the span between the first and last visible key, or a
gathered subset when most of that span is hidden (local windows, sparse blocks), so masked
work is skipped rather than computed and discarded.

Every reference op expresses its pattern as a ``mask_fn``; inside :func:`sdpa_masked_scope`
(set by :meth:`sparsa.methods.base.Method.__call__` when :func:`sparsa.backend.masked_executor`
says "sdpa") those ops run through this executor, with identical masks and so identical pair
counts. ``backend="reference"`` keeps the spec.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator

import torch
import torch.nn.functional as F

from .masks import MaskFn, _group_mask

#: boolean mask elements per chunk (batch x heads x rows x keys); 16 MiB of mask
_MASK_ELEMENTS = 1 << 24
_MIN_ROWS = 16
# gather the visible keys when fewer than this fraction of their span is visible
_GATHER_BELOW = 0.5

_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("sparsa_masked_sdpa", default=False)


def sdpa_masked_active() -> bool:
    """Whether :func:`~sparsa.ops._shared.masked.masked_attention` runs through SDPA here."""
    return _ACTIVE.get()


@contextlib.contextmanager
def sdpa_masked_scope(enabled: bool = True) -> Iterator[None]:
    """Route ``masked_attention`` calls made inside the block to :func:`masked_attention_sdpa`
    (``enabled=False``: to the reference, also inside an enclosing scope)."""
    token = _ACTIVE.set(enabled)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


_BYTE_SUM = 0x0101010101010101


def _count_last(mask: torch.Tensor) -> torch.Tensor:
    """True entries along the last dim of a bool tensor, int64 (mask.shape[:-1]).

    Eight mask bytes are read as one int64 word; multiplying by 0x0101...01 adds the eight
    0/1 bytes into the top byte (at most 8, so no carry reaches the sign bit). Several times
    faster on the CPU than a bool reduction.
    """
    n = mask.shape[-1]
    pad = -n % 8
    x = mask if pad == 0 else F.pad(mask, (0, pad))
    words = x.contiguous().view(torch.uint8).view(torch.int64)
    return ((words * _BYTE_SUM) >> 56).sum(-1)


def _sdpa_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.float32


def masked_attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask_fn: MaskFn,
    *,
    scale: float | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention restricted to ``mask_fn``'s pairs, computed with SDPA in q's dtype.

    Same contract as :func:`~sparsa.ops._shared.masked.masked_attention`: q (batch, heads,
    q_len, head_dim), k/v (batch, kv_heads, kv_len, head_dim); ``mask_fn(s, e)`` gives the
    boolean mask of query rows ``s:e`` (head dim heads, kv_heads or 1). Returns ``(out,
    pairs)``: out like q (rows that see no key are zero), pairs (batch, heads) float64 counted
    from the masks exactly as the reference counts them. ``chunk``: query rows per SDPA call
    (default: rows whose mask holds about 16M elements).
    """
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    g = h // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    ct = _sdpa_dtype(q)
    qg = q.to(ct).view(b, hkv, g, lq, d)
    kc, vc = k.to(ct), v.to(ct)
    if chunk is None:
        chunk = max(_MIN_ROWS, _MASK_ELEMENTS // max(1, b * h * lk))
    chunk = max(1, min(lq, chunk))
    out = torch.zeros(b, hkv, g, lq, d, dtype=ct, device=q.device)
    pairs = torch.zeros(b, h, dtype=torch.float64, device=q.device)
    for s in range(0, lq, chunk):
        e = min(lq, s + chunk)
        cq = e - s
        mask = _group_mask(mask_fn(s, e).to(torch.bool), h, hkv)          # (B|1, Hkv|1, G|1, cq, Lk)
        row_counts = _count_last(mask)                                     # (B|1, Hkv|1, G|1, cq)
        pairs += row_counts.sum(-1).expand(b, hkv, g).reshape(b, h).double()
        live = mask.flatten(0, 3).view(torch.uint8).amax(0).bool()          # (Lk,) keys some row sees
        idx = live.nonzero().flatten()
        if idx.numel() == 0:
            continue
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        if idx.numel() < _GATHER_BELOW * (hi - lo):
            keys, vals, sel = kc.index_select(2, idx), vc.index_select(2, idx), mask.index_select(-1, idx)
        else:
            keys, vals, sel = kc[:, :, lo:hi], vc[:, :, lo:hi], mask[..., lo:hi]
        # fold the query group into the rows: one SDPA call per KV head, no repeated keys
        qc = qg[:, :, :, s:e].reshape(b, hkv, g * cq, d)
        m = sel.expand(sel.shape[0], hkv, g, cq, sel.shape[-1]).reshape(sel.shape[0], hkv, g * cq, sel.shape[-1])
        o = F.scaled_dot_product_attention(qc, keys, vals, attn_mask=m, scale=scale).view(b, hkv, g, cq, d)
        seen = (row_counts > 0).unsqueeze(-1)
        out[:, :, :, s:e] = torch.where(seen, o, torch.zeros((), dtype=ct, device=q.device))
    return out.view(b, h, lq, d).to(q.dtype), pairs

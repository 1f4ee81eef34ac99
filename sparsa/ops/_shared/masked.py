"""Reference attention under an arbitrary mask: the spec every sparse op is checked against.

Layout is SDPA's: q (batch, heads, q_len, head_dim), k/v (batch, kv_heads, kv_len, head_dim).
The queries are the last ``q_len`` positions of the ``kv_len``-long sequence, so query row
``i`` sits at absolute position ``kv_len - q_len + i``. Grouped-query attention: query head
``h`` reads KV head ``h // (heads // kv_heads)``.

All arithmetic is float32 (float64 inputs stay float64); the output has q's dtype. A query
row that sees no key returns zeros (never NaN). Work is chunked over query rows so memory
stays bounded at long contexts.
"""
from __future__ import annotations

import math

import torch

from .masked_sdpa import masked_attention_sdpa, sdpa_masked_active
from .masks import MaskFn, _group_mask, causal_mask_fn

_CHUNK_ELEMENTS = 1 << 25  # score elements per chunk (~128 MiB in fp32)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask_fn: MaskFn,
    *,
    scale: float | None = None,
    chunk: int | None = None,
    return_lse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax attention restricted to ``mask_fn``'s pairs.

    Returns ``(out, pairs)`` where out has q's shape and dtype and ``pairs`` (float64,
    shape (batch, heads)) counts the query-key pairs attended per head. With
    ``return_lse`` also the log-sum-exp of the scaled scores, (batch, heads, q_len), float32,
    ``-inf`` for rows that see nothing.

    Inside :func:`~sparsa.ops._shared.masked_sdpa.sdpa_masked_scope` (and without ``return_lse``) the
    same masks run through :func:`~sparsa.ops._shared.masked_sdpa.masked_attention_sdpa` instead.
    """
    if not return_lse and sdpa_masked_active():
        return masked_attention_sdpa(q, k, v, mask_fn, scale=scale)
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    g = h // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    ct = _compute_dtype(q)
    qf = q.to(ct).view(b, hkv, g, lq, d)
    kf = k.to(ct)
    vf = v.to(ct)
    if chunk is None:
        chunk = max(1, min(lq, _CHUNK_ELEMENTS // max(1, b * h * lk)))
    out = torch.empty(b, hkv, g, lq, d, dtype=ct, device=q.device)
    lse = torch.empty(b, hkv, g, lq, dtype=ct, device=q.device)
    pairs = torch.zeros(b, h, dtype=torch.float64, device=q.device)
    for s in range(0, lq, chunk):
        e = min(lq, s + chunk)
        mask = _group_mask(mask_fn(s, e).to(torch.bool), h, hkv)
        scores = torch.einsum("bkgqd,bknd->bkgqn", qf[:, :, :, s:e], kf) * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        m = scores.amax(dim=-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        p = torch.exp(scores - m)
        denom = p.sum(dim=-1, keepdim=True)
        o = torch.einsum("bkgqn,bknd->bkgqd", p, vf)
        out[:, :, :, s:e] = torch.where(denom > 0, o / denom.clamp_min(torch.finfo(ct).tiny), torch.zeros_like(o))
        lse[:, :, :, s:e] = (m + torch.log(denom)).squeeze(-1)
        counted = mask.expand(b, hkv, g, e - s, lk).sum(dim=(-1, -2), dtype=torch.float64)
        pairs += counted.reshape(b, h)
    result = out.view(b, h, lq, d).to(q.dtype)
    if return_lse:
        return result, pairs, lse.view(b, h, lq).float()
    return result, pairs


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """Causal dense attention (bottom-right aligned), the baseline every method is compared with."""
    out, _ = masked_attention(q, k, v, causal_mask_fn(q.shape[2], k.shape[2], q.device), scale=scale)
    return out

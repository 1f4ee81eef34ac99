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
from typing import Callable

import torch

# mask_fn(q_start, q_end) -> bool tensor broadcastable to (batch, heads, q_end - q_start, kv_len);
# its head dim may be heads, kv_heads (shared by each query group) or 1. True = attend.
MaskFn = Callable[[int, int], torch.Tensor]

_CHUNK_ELEMENTS = 1 << 25  # score elements per chunk (~128 MiB in fp32)


def query_positions(q_len: int, kv_len: int, start: int = 0, end: int | None = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Absolute positions (int64) of query rows ``start:end``."""
    end = q_len if end is None else end
    return torch.arange(kv_len - q_len + start, kv_len - q_len + end, device=device)


def causal_mask_fn(q_len: int, kv_len: int, device: torch.device | str) -> MaskFn:
    """Mask function of plain causal attention (bottom-right aligned)."""
    cols = torch.arange(kv_len, device=device)

    def fn(s: int, e: int) -> torch.Tensor:
        rows = query_positions(q_len, kv_len, s, e, device)
        return (cols[None, :] <= rows[:, None])[None, None]

    return fn


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _group_mask(mask: torch.Tensor, heads: int, kv_heads: int) -> torch.Tensor:
    """Reshape a (B|1, H|Hkv|1, cq, kv_len) mask to (B|1, Hkv|1, G|1, cq, kv_len)."""
    if mask.ndim != 4:
        raise ValueError(f"mask: mask_fn must return a 4-D mask, got shape {tuple(mask.shape)}")
    mh = mask.shape[1]
    if mh == heads and heads != kv_heads:
        return mask.unflatten(1, (kv_heads, heads // kv_heads))
    if mh in (kv_heads, 1):
        return mask.unsqueeze(2)
    raise ValueError(f"mask: head dimension {mh} must be heads ({heads}), kv_heads ({kv_heads}) or 1")


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

    Inside :func:`~sparsa.ops.dense.sdpa.sdpa_masked_scope` (and without ``return_lse``) the
    same masks run through :func:`~sparsa.ops.dense.sdpa.masked_attention_sdpa` instead.
    """
    from .sdpa import masked_attention_sdpa, sdpa_masked_active
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


def causal_pairs(q_len: int, kv_len: int) -> int:
    """Number of query-key pairs of the causal dense matrix: sum over rows of (position + 1)."""
    first = kv_len - q_len + 1
    return (first + kv_len) * q_len // 2

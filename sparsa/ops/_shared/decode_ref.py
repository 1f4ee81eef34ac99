"""Decode attention of one query step over a subset of a dense KV cache, given as token
positions (or as pages turned into positions): the spec of the decode-time methods, shared
by the sparse-decode and NSA references."""
from __future__ import annotations

import math

import torch


def pages_to_tokens(page_indices: torch.Tensor, page_size: int, kv_len: int) -> torch.Tensor:
    """(B, Hkv, P) page numbers (-1 = unused) -> (B, Hkv, P*page_size) token positions (-1 = unused)."""
    offs = torch.arange(page_size, device=page_indices.device)
    tok = page_indices.to(torch.int64)[..., None] * page_size + offs
    tok = torch.where((page_indices[..., None] < 0) | (tok >= kv_len), torch.full_like(tok, -1), tok)
    return tok.flatten(-2)


def sparse_decode_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    token_indices: torch.Tensor,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of one decode query over selected cache tokens.

    q: (batch, heads, head_dim); k, v: (batch, kv_heads, kv_len, head_dim);
    token_indices: (batch, kv_heads, n) int positions in [0, kv_len) or -1 (unused); repeats
    are counted once. Returns (batch, heads, head_dim) in q's dtype; zeros if nothing is read.
    """
    if q.ndim != 3:
        raise ValueError(f"q: expected (batch, heads, head_dim), got shape {tuple(q.shape)}")
    b, h, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    if token_indices.ndim != 3 or token_indices.shape[:2] != (b, hkv):
        raise ValueError(f"token_indices: expected shape (batch={b}, kv_heads={hkv}, n), "
                         f"got {tuple(token_indices.shape)}")
    if token_indices.numel() and (int(token_indices.min()) < -1 or int(token_indices.max()) >= lk):
        raise ValueError(f"token_indices: entries must be -1 or in [0, {lk})")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    idx = token_indices.to(torch.int64)
    keep = torch.zeros(b, hkv, lk + 1, dtype=torch.bool, device=q.device)
    keep.scatter_(-1, torch.where(idx < 0, torch.full_like(idx, lk), idx), True)
    keep = keep[..., :lk]
    qf = q.to(ct).view(b, hkv, h // hkv, d)
    s = torch.einsum("bkgd,bknd->bkgn", qf, k.to(ct)) * scale
    s = s.masked_fill(~keep[:, :, None, :], float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    den = p.sum(-1, keepdim=True)
    o = torch.einsum("bkgn,bknd->bkgd", p, v.to(ct))
    o = torch.where(den > 0, o / den.clamp_min(torch.finfo(ct).tiny), torch.zeros_like(o))
    return o.reshape(b, h, d).to(q.dtype)


__all__ = ["pages_to_tokens", "sparse_decode_ref"]

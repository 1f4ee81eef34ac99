"""Scoring and selection helpers shared by the decode-time methods (H2O, SnapKV, Ada-SnapKV, Quest).

Layout is SDPA's: q (batch, heads, rows, head_dim), k (batch, kv_heads, kv_len, head_dim);
query head ``h`` belongs to KV head ``h // (heads // kv_heads)``. Scores are aggregated over each
KV head's query group, so every selection is per (batch, KV head). Arithmetic is float32
(float64 inputs stay float64).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_CHUNK_ELEMENTS = 1 << 25  # score elements per chunk of query rows (~128 MiB in fp32)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def row_chunk(batch: int, heads: int, kv_len: int) -> int:
    """Query rows per chunk so that one chunk's (batch, heads, rows, kv_len) scores stay bounded."""
    return max(1, _CHUNK_ELEMENTS // max(1, batch * heads * kv_len))


def group_causal_probs(q_rows: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                       scale: float) -> torch.Tensor:
    """Dense causal softmax probabilities of some query rows, summed over each query group.

    q_rows: (B, H, n, D) queries at absolute ``positions`` (n,) int64; k: (B, Hkv, L, D).
    Returns (B, Hkv, n, L) in the compute dtype; row ``i`` is zero beyond ``positions[i]``.
    """
    b, h, n, d = q_rows.shape
    hkv, lk = k.shape[1], k.shape[2]
    ct = compute_dtype(q_rows)
    qg = q_rows.to(ct).view(b, hkv, h // hkv, n, d)
    s = torch.einsum("bkgqd,bknd->bkgqn", qg, k.to(ct)) * scale
    cols = torch.arange(lk, device=k.device)
    s = s.masked_fill(cols[None, :] > positions[:, None], float("-inf"))
    return torch.softmax(s, dim=-1).sum(2)


def attention_column_sums(q: torch.Tensor, k: torch.Tensor, scale: float, start: int = 0,
                          end: int | None = None) -> torch.Tensor:
    """Sum over query rows ``start:end`` of their dense causal softmax rows (group-summed).

    q: (B, H, Lq, D), the last Lq positions of k's (B, Hkv, L, D). Returns (B, Hkv, L): the
    attention mass each key received (H2O's accumulated attention). Chunked over rows.
    """
    b, h, lq, _ = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    end = lq if end is None else end
    acc = torch.zeros(b, hkv, lk, dtype=compute_dtype(q), device=q.device)
    step = row_chunk(b, h, lk)
    for s in range(start, end, step):
        e = min(end, s + step)
        pos = torch.arange(lk - lq + s, lk - lq + e, device=q.device)
        acc += group_causal_probs(q[:, :, s:e], k, pos, scale).sum(2)
    return acc


def gathered_probs(q: torch.Tensor, k: torch.Tensor, token_indices: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax of one decode query over selected tokens, summed over each query group.

    q: (B, H, D); k: (B, Hkv, L, D); token_indices: (B, Hkv, n), -1 = unused (no repeats).
    Returns (B, Hkv, n) probabilities (0 at unused slots), aligned with ``token_indices``.
    """
    b, h, d = q.shape
    hkv = k.shape[1]
    ct = compute_dtype(q)
    idx = token_indices.to(torch.int64)
    valid = idx >= 0
    kk = k.to(ct).gather(2, idx.clamp_min(0)[..., None].expand(-1, -1, -1, d))
    s = torch.einsum("bkgd,bknd->bkgn", q.to(ct).view(b, hkv, h // hkv, d), kk) * scale
    s = s.masked_fill(~valid[:, :, None, :], float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(ct).tiny)
    return p.sum(2)


def max_pool_same(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """1-D max pool of size ``kernel``, stride 1, over the last dim; output has x's length.

    The window of position ``i`` is ``[i - (kernel-1)//2, i + kernel//2]`` clipped to the range.
    """
    if kernel == 1 or x.shape[-1] == 0:
        return x
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-1])
    flat = F.pad(flat, ((kernel - 1) // 2, kernel // 2), value=float("-inf"))
    return F.max_pool1d(flat, kernel, stride=1).reshape(shape)


def stable_topk_mask(scores: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Boolean mask of the ``k`` largest entries along the last dim; ties go to lower indices.

    ``k`` is an int or an integer tensor broadcastable to ``scores.shape[:-1]`` (per-row counts).
    """
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    kk = torch.as_tensor(k, device=scores.device)
    if kk.ndim:
        kk = kk[..., None]
    return rank < kk


def mask_to_positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, Hkv, L) bool -> (B, Hkv, n) int64 positions in ascending order, -1 padded at the end."""
    lk = mask.shape[-1]
    pos = torch.arange(lk, device=mask.device).expand_as(mask)
    # sort kept positions first (ascending), dropped ones after
    key = torch.where(mask, pos, pos + lk)
    order = key.sort(dim=-1).values
    n = int(mask.sum(-1).max()) if mask.numel() else 0
    out = order[..., :n]
    return torch.where(out < lk, out, torch.full_like(out, -1))


def positions_to_mask(positions: torch.Tensor, length: int) -> torch.Tensor:
    """(B, Hkv, n) int positions (-1 = unused) -> (B, Hkv, length) bool membership."""
    b, hkv, _ = positions.shape
    table = torch.zeros(b, hkv, length + 1, dtype=torch.bool, device=positions.device)
    idx = positions.to(torch.int64)
    table.scatter_(-1, torch.where(idx < 0, torch.full_like(idx, length), idx), True)
    return table[..., :length]


def count_positions(positions: torch.Tensor) -> torch.Tensor:
    """(B, Hkv, n) int positions without repeats -> (B, Hkv) float64 number of valid entries."""
    return (positions >= 0).sum(-1).to(torch.float64)


def per_query_head(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, Hkv) -> (B, H): every query head gets its KV head's value."""
    return x.repeat_interleave(heads // x.shape[1], dim=1)


def page_bounds(k: torch.Tensor, page_size: int, n_pages: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel min and max of the keys of pages ``0 .. n_pages-1`` (complete pages).

    k: (B, Hkv, L, D) with ``n_pages * page_size <= L``. Returns kmin, kmax (B, Hkv, n_pages, D).
    """
    b, hkv, _, d = k.shape
    pages = k[:, :, :n_pages * page_size].reshape(b, hkv, n_pages, page_size, d)
    return pages.amin(3), pages.amax(3)


def page_scores(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """Quest's page score Σ_d max(q_d·kmax_d, q_d·kmin_d), summed over each query group.

    q: (B, H, n, D); kmin, kmax: (B, Hkv, P, D). Returns (B, Hkv, n, P) in the compute dtype.
    Per query head the score bounds q·k from above for every key k of the page.
    """
    b, h, n, d = q.shape
    hkv = kmin.shape[1]
    ct = compute_dtype(q)
    qg = q.to(ct).view(b, hkv, h // hkv, n, d)
    # per channel the max picks kmax where q_d >= 0 and kmin where q_d < 0
    pos, neg = qg.clamp_min(0), qg.clamp_max(0)
    s = torch.einsum("bkgqd,bkpd->bkgqp", pos, kmax.to(ct)) + torch.einsum("bkgqd,bkpd->bkgqp", neg, kmin.to(ct))
    return s.sum(2)

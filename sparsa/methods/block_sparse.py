"""MInference's Block-Sparse pattern: top-k key blocks per query block from mean-pooled scores."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .._validation import check_int, check_qkv
from ..ops.block_sparse import (block_sparse_attention, normalize_block_indices, num_blocks, query_block_spans,
                                tile_pairs)
from ..ops.dense.reference import causal_pairs
from .base import AttentionStats, Method, prefill_stats, solve_budget
from .registry import register

PAPER_TOP_K = 100
MIN_TOP_K = 2  # the first block and the diagonal block


def mean_pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, H, L, D) -> (B, H, ceil(L / block), D) float32 means; a short last block averages its own rows."""
    b, h, length, d = x.shape
    n = num_blocks(length, block)
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    if length == n * block:                       # no short block: the same sums without a padded copy
        return x.to(ct).view(b, h, n, block, d).sum(3) / block
    padded = torch.zeros(b, h, n * block, d, dtype=ct, device=x.device)
    padded[:, :, :length] = x
    counts = torch.clamp(length - torch.arange(n, device=x.device) * block, max=block).to(ct)
    return padded.view(b, h, n, block, d).sum(3) / counts[:, None]


@functools.lru_cache(maxsize=256)
def _solve_top_k(block_size: int, compression: float, q_len: int, kv_len: int) -> int:
    """``top_k`` whose (data-independent) pair count is closest to the target; cached per shape."""
    method = BlockSparse(block_size=block_size)
    tiles = tile_pairs(q_len, kv_len, block_size, block_size)
    target = causal_pairs(q_len, kv_len) / compression
    return solve_budget(lambda t: float(method.pairs(t, q_len, kv_len, tiles)), target, MIN_TOP_K,
                        max(MIN_TOP_K, tiles.shape[1]))


@register
@dataclass
class BlockSparse(Method):
    """Each query block keeps the ``top_k`` key blocks with the largest pooled score.

    Queries (per query block of ``block_size`` rows) and keys (per key block of ``block_size``
    positions) are mean-pooled; the score of a (query block, key block) pair is the dot product
    of the means, restricted to key blocks that are causally visible. ``top_k`` counts the
    forced blocks: the first key block and the query block's own (diagonal) key block (two
    when ``kv_len - q_len`` is not a multiple of ``block_size``) are always kept.

    Selection is per query head; with ``per_kv_head=True`` the query means of a KV head's group
    are averaged and one list serves the whole group (cheaper for a kernel).
    With ``compression`` and no explicit ``top_k``, ``top_k`` is solved so the achieved
    compression (which does not depend on the data) is closest to the target.
    """

    name = "block_sparse"
    paper = "Jiang et al., MInference 1.0, 2024"
    fast_masks = True

    block_size: int = 64
    top_k: int | None = None
    per_kv_head: bool = False

    def validate(self) -> None:
        check_int("block_size", self.block_size, minimum=1)
        if self.top_k is not None:
            check_int("top_k", self.top_k, minimum=MIN_TOP_K)
        if not isinstance(self.per_kv_head, bool):
            raise TypeError(f"per_kv_head: expected a bool, got {type(self.per_kv_head).__name__}")

    # ------------------------------------------------------------------ budget

    def pairs(self, top_k: int, q_len: int, kv_len: int, tiles: torch.Tensor | None = None) -> int:
        """Causal pairs one head computes with ``top_k`` (the same for any scores).

        ``tiles``: :func:`tile_pairs` for these lengths, if already computed.
        """
        bs = self.block_size
        if tiles is None:
            tiles = tile_pairs(q_len, kv_len, bs, bs)
        lo, hi, rows = query_block_spans(q_len, kv_len, bs, bs)
        n_diag = hi - lo + 1
        n_forced = n_diag + (lo > 0).long()
        kept = torch.minimum(hi + 1, n_forced.clamp_min(top_k))
        qb = torch.arange(lo.shape[0])
        diag = tiles[qb, lo] + torch.where(hi > lo, tiles[qb, hi], torch.zeros_like(lo))
        # every non-diagonal block lies wholly before the query block: all its keys are seen
        return int((diag + (kept - n_diag) * rows * bs).sum())

    def target(self) -> float | None:
        return None if self.top_k is not None else self.compression

    def resolve_top_k(self, q_len: int, kv_len: int) -> int:
        if self.top_k is not None:
            return self.top_k
        if self.compression is None:
            return PAPER_TOP_K
        return _solve_top_k(self.block_size, self.compression, q_len, kv_len)

    # ------------------------------------------------------------------ planning

    def block_scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Pooled scores (B, H or Hkv, n_q_blocks, n_k_blocks), float32; -inf where causally hidden."""
        b, h, hkv, lq, lk, _ = check_qkv(q, k, k)
        qm = mean_pool(q, self.block_size).unflatten(1, (hkv, h // hkv))      # (B, Hkv, G, NQ, D)
        km = mean_pool(k, self.block_size)                                      # (B, Hkv, NK, D)
        if self.per_kv_head:
            qm = qm.mean(2, keepdim=True)
        scores = torch.einsum("bkgqd,bknd->bkgqn", qm, km).flatten(1, 2)
        _, hi, _ = query_block_spans(lq, lk, self.block_size, self.block_size, q.device)
        visible = torch.arange(km.shape[2], device=q.device)[None, :] <= hi[:, None]
        return scores.masked_fill(~visible, float("-inf"))

    def plan(self, q: torch.Tensor, k: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
        """Block indices (batch, heads or kv_heads, n_q_blocks, max_blocks), int32, sorted, -1 padded."""
        lq, lk = q.shape[2], k.shape[2]
        top_k = self.resolve_top_k(lq, lk) if top_k is None else top_k
        scores = self.block_scores(q, k)
        nk = scores.shape[-1]
        lo, hi, _ = query_block_spans(lq, lk, self.block_size, self.block_size, q.device)
        kb = torch.arange(nk, device=q.device)[None, :]
        forced = (kb == 0) | ((kb >= lo[:, None]) & (kb <= hi[:, None]))
        scores = scores.masked_fill(forced, float("inf"))
        limit = forced.sum(-1).clamp_min(top_k)                                # blocks kept per query block
        # the same count from the geometry on the host (the first block, unless diagonal, plus the
        # diagonal blocks): the list width needs no device read
        lo_h, hi_h, _ = query_block_spans(lq, lk, self.block_size, self.block_size)
        width = min(nk, int((hi_h - lo_h + 1 + (lo_h > 0).long()).clamp_min(top_k).max()))
        top = scores.topk(width, dim=-1)
        rank = torch.arange(width, device=q.device)
        keep = (rank[None, :] < limit[:, None]) & (top.values > float("-inf"))
        return normalize_block_indices(torch.where(keep, top.indices, torch.full_like(top.indices, -1)))

    # ------------------------------------------------------------------ running

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                backend: str | None) -> tuple[torch.Tensor, AttentionStats]:
        lq, lk = q.shape[2], k.shape[2]
        top_k = self.resolve_top_k(lq, lk)
        indices = self.plan(q, k, top_k)
        # the planner's lists are in range and sorted: no host read-back to check them
        out, pairs = block_sparse_attention(q, k, v, indices, block_q=self.block_size, block_k=self.block_size,
                                            scale=scale, backend=backend, check_indices=False)
        return out, prefill_stats(self.name, pairs, lq, lk, top_k=top_k,
                                  block_size=self.block_size, per_kv_head=self.per_kv_head, dense_fallback=False)

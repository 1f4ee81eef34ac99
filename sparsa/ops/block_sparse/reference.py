"""Reference block-sparse prefill attention (the spec of the Triton kernel)."""
from __future__ import annotations

import torch

from .._shared.masked import masked_attention
from .._shared.masks import query_positions
from .indices import block_mask_from_indices, num_blocks
from .local import GlobalPositions, LocalMask


def block_sparse_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_indices: torch.Tensor,
    *,
    block_q: int = 64,
    block_k: int = 64,
    scale: float | None = None,
    window: int | None = None,
    sink: int = 0,
    global_positions: GlobalPositions = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention over the listed key blocks of each query block.

    q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads, kv_len, head_dim);
    block_indices: (batch, heads or kv_heads, ceil(q_len / block_q), max_blocks), see
    :mod:`sparsa.ops.block_sparse.indices`. Optional element mask on top of the lists (see
    :mod:`sparsa.ops.block_sparse.local`): with ``window`` (keys) set, a listed pair is kept
    only when the key is among the query's last ``window`` positions, is one of the first
    ``sink`` positions, or the key or the query is at one of ``global_positions``.
    Returns (out like q, pairs (batch, heads) float64).
    """
    lq, lk = q.shape[2], k.shape[2]
    local = LocalMask.build(window, sink, global_positions, lk)
    table = block_mask_from_indices(block_indices, num_blocks(lk, block_k))
    key_block = torch.arange(lk, device=q.device) // block_k
    cols = torch.arange(lk, device=q.device)

    def mask_fn(s: int, e: int) -> torch.Tensor:
        rows = torch.arange(s, e, device=q.device)
        per_row = table[:, :, rows // block_q]            # (B, Hx, cq, NK)
        allowed = per_row[..., key_block]                 # (B, Hx, cq, Lk)
        pos = query_positions(lq, lk, s, e, q.device)
        causal = cols[None, :] <= pos[:, None]
        if local.active:
            causal = causal & local.keep(pos, cols)
        return allowed & causal

    return masked_attention(q, k, v, mask_fn, scale=scale)


def local_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int | None,
    sink: int = 0,
    global_positions: GlobalPositions = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention under a token-level local mask (no block lists).

    The query at position ``p`` sees key ``j <= p`` when ``p - j < window``, ``j < sink``, or
    ``j`` or ``p`` is in ``global_positions`` (``window=None``: every causal key).
    q: (batch, heads, q_len, head_dim), the last ``q_len`` positions; k, v: (batch, kv_heads,
    kv_len, head_dim). Returns (out like q, pairs (batch, heads) float64).
    """
    lq, lk = q.shape[2], k.shape[2]
    local = LocalMask.build(window, sink, global_positions, lk)
    cols = torch.arange(lk, device=q.device)

    def mask_fn(s: int, e: int) -> torch.Tensor:
        pos = query_positions(lq, lk, s, e, q.device)
        return ((cols[None, :] <= pos[:, None]) & local.keep(pos, cols))[None, None]

    return masked_attention(q, k, v, mask_fn, scale=scale)

"""Reference block-sparse prefill attention (the spec of the Triton kernel)."""
from __future__ import annotations

import torch

from ..dense.reference import masked_attention, query_positions
from .indices import block_mask_from_indices, num_blocks


def block_sparse_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_indices: torch.Tensor,
    *,
    block_q: int = 64,
    block_k: int = 64,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention over the listed key blocks of each query block.

    q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads, kv_len, head_dim);
    block_indices: (batch, heads or kv_heads, ceil(q_len / block_q), max_blocks), see
    :mod:`sparsa.ops.block_sparse.indices`. Returns (out like q, pairs (batch, heads) float64).
    """
    lq, lk = q.shape[2], k.shape[2]
    table = block_mask_from_indices(block_indices, num_blocks(lk, block_k))
    key_block = torch.arange(lk, device=q.device) // block_k
    cols = torch.arange(lk, device=q.device)

    def mask_fn(s: int, e: int) -> torch.Tensor:
        rows = torch.arange(s, e, device=q.device)
        per_row = table[:, :, rows // block_q]            # (B, Hx, cq, NK)
        allowed = per_row[..., key_block]                 # (B, Hx, cq, Lk)
        causal = cols[None, :] <= query_positions(lq, lk, s, e, q.device)[:, None]
        return allowed & causal

    return masked_attention(q, k, v, mask_fn, scale=scale)

"""Block-sparse prefill attention driven by per-query-block lists of key blocks."""
from __future__ import annotations

import os

import torch

from ..._validation import check_int, check_qkv
from ...backend import resolve_backend
from .geometry import query_block_spans, tile_pairs
from .indices import (block_mask_from_indices, check_block_indices, indices_from_block_mask,
                      normalize_block_indices, num_blocks)
from .reference import block_sparse_attention_ref


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_indices: torch.Tensor,
    *,
    block_q: int = 64,
    block_k: int = 64,
    scale: float | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of each query block over its listed key blocks.

    q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads, kv_len, head_dim);
    block_indices: (batch, heads or kv_heads, ceil(q_len / block_q), max_blocks), sorted rows
    padded with -1 (see :mod:`sparsa.ops.block_sparse.indices`).
    Returns (out like q, pairs (batch, heads) float64: query-key pairs computed).

    ``backend``: "auto", "reference" or "triton" (see :mod:`sparsa.backend`). Only the
    reference exists so far: "auto" runs it on every device, "triton" is refused.
    """
    b, h, hkv, lq, lk, _ = check_qkv(q, k, v)
    check_int("block_q", block_q, minimum=1)
    check_int("block_k", block_k, minimum=1)
    check_block_indices(block_indices, batch=b, heads=h, kv_heads=hkv, q_len=lq, kv_len=lk,
                        block_q=block_q, block_k=block_k)
    requested = backend if backend is not None else os.environ.get("SPARSA_BACKEND", "auto")
    if resolve_backend(backend, q.device) == "triton" and requested == "triton":
        raise ValueError("backend: no Triton kernel for block_sparse_attention yet; use 'reference' or 'auto'")
    return block_sparse_attention_ref(q, k, v, block_indices, block_q=block_q, block_k=block_k, scale=scale)


__all__ = ["block_mask_from_indices", "block_sparse_attention", "block_sparse_attention_ref",
           "check_block_indices", "indices_from_block_mask", "normalize_block_indices", "num_blocks",
           "query_block_spans", "tile_pairs"]

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

    ``backend``: "auto", "reference" or "triton" (see :mod:`sparsa.backend`). "auto" runs the
    Triton kernel on CUDA tensors it supports (head_dim 64/128, float16/bfloat16/float32,
    block sizes 16/32/64/128) and the reference otherwise; "triton" raises on unsupported input.
    """
    b, h, hkv, lq, lk, _ = check_qkv(q, k, v)
    check_int("block_q", block_q, minimum=1)
    check_int("block_k", block_k, minimum=1)
    check_block_indices(block_indices, batch=b, heads=h, kv_heads=hkv, q_len=lq, kv_len=lk,
                        block_q=block_q, block_k=block_k)
    requested = backend if backend is not None else os.environ.get("SPARSA_BACKEND", "auto")
    if resolve_backend(backend, q.device) == "triton":
        from .triton import BLOCK_SIZES, HEAD_DIMS, KERNEL_DTYPES, block_sparse_attention_triton, block_sparse_pairs
        supported = q.shape[-1] in HEAD_DIMS and q.dtype in KERNEL_DTYPES and block_q in BLOCK_SIZES \
            and block_k in BLOCK_SIZES
        if not supported and requested == "triton":
            raise ValueError(f"backend: the Triton kernel takes head_dim in {HEAD_DIMS}, float16/bfloat16/float32 "
                             f"and block sizes in {BLOCK_SIZES}; got head_dim={q.shape[-1]}, {q.dtype}, "
                             f"block_q={block_q}, block_k={block_k}; use backend='reference' or 'auto'")
        if supported:
            out = block_sparse_attention_triton(q, k, v, block_indices, block_q=block_q, block_k=block_k,
                                                scale=scale, check_indices=False)
            return out, block_sparse_pairs(block_indices, h, lq, lk, block_q, block_k)
    return block_sparse_attention_ref(q, k, v, block_indices, block_q=block_q, block_k=block_k, scale=scale)


__all__ = ["block_mask_from_indices", "block_sparse_attention", "block_sparse_attention_ref",
           "check_block_indices", "indices_from_block_mask", "normalize_block_indices", "num_blocks",
           "query_block_spans", "tile_pairs"]

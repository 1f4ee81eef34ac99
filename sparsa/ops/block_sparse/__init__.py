"""Block-sparse prefill attention driven by per-query-block lists of key blocks, and the
token-level local patterns (sliding window, sinks, global tokens) run through the same kernel."""
from __future__ import annotations


import torch

from ..._validation import check_int, check_qkv
from ...backend import use_kernel
from .geometry import query_block_spans, tile_pairs
from .indices import (block_mask_from_indices, check_block_indices, indices_from_block_mask,
                      normalize_block_indices, num_blocks)
from .local import GlobalPositions, LocalMask, local_block_lists, local_pairs
from .reference import block_sparse_attention_ref, local_attention_ref


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
    check_indices: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of each query block over its listed key blocks.

    q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads, kv_len, head_dim);
    block_indices: (batch, heads or kv_heads, ceil(q_len / block_q), max_blocks), sorted rows
    padded with -1 (see :mod:`sparsa.ops.block_sparse.indices`).
    Returns (out like q, pairs (batch, heads) float64: query-key pairs computed).

    ``backend``: "auto", "reference" or "triton" (see :mod:`sparsa.backend`). "auto" runs the
    Triton kernel on CUDA tensors it supports (head_dim 64/128, float16/bfloat16/float32,
    block sizes 16/32/64/128) and the reference otherwise; "triton" raises on unsupported input.
    ``check_indices=False`` checks only the shape and dtype of ``block_indices``, not its
    entries (that check reads them back to the host); only for lists known to be well formed,
    such as a planner's output.
    """
    b, h, hkv, lq, lk, _ = check_qkv(q, k, v)
    check_int("block_q", block_q, minimum=1)
    check_int("block_k", block_k, minimum=1)
    check_block_indices(block_indices, batch=b, heads=h, kv_heads=hkv, q_len=lq, kv_len=lk,
                        block_q=block_q, block_k=block_k, check_values=check_indices)
    if use_kernel(backend, q.device, lambda: _kernel_unsupported(q, block_q, block_k)):
        from .triton import block_sparse_attention_triton, block_sparse_pairs  # triton: optional
        out = block_sparse_attention_triton(q, k, v, block_indices, block_q=block_q, block_k=block_k,
                                            scale=scale, check_indices=False)
        return out, block_sparse_pairs(block_indices, h, lq, lk, block_q, block_k)
    return block_sparse_attention_ref(q, k, v, block_indices, block_q=block_q, block_k=block_k, scale=scale)


def _kernel_unsupported(q: torch.Tensor, block_q: int, block_k: int) -> str | None:
    """None when the block-sparse kernel takes the input, else what it cannot take."""
    from .triton import BLOCK_SIZES, HEAD_DIMS, KERNEL_DTYPES  # triton: optional, imported only when a kernel runs
    ok = q.shape[-1] in HEAD_DIMS and q.dtype in KERNEL_DTYPES and block_q in BLOCK_SIZES and block_k in BLOCK_SIZES
    return None if ok else (f"the Triton kernel takes head_dim in {HEAD_DIMS}, float16/bfloat16/float32 and block "
                            f"sizes in {BLOCK_SIZES}; got head_dim={q.shape[-1]}, {q.dtype}, block_q={block_q}, "
                            f"block_k={block_k}")


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int | None,
    sink: int = 0,
    global_positions: GlobalPositions = None,
    scale: float | None = None,
    backend: str | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention under a token-level local mask: sliding window, sinks, global tokens.

    The query at position ``p`` sees key ``j <= p`` when ``p - j < window`` (``window=None``:
    every causal key), ``j < sink``, or ``j`` or ``p`` is in ``global_positions`` (ints in
    [0, kv_len)). Longformer's window with global tokens and StreamingLLM's A-shape are
    special cases.

    q: (batch, heads, q_len, head_dim), the last ``q_len`` positions; k, v: (batch, kv_heads,
    kv_len, head_dim). Returns (out like q, pairs (batch, heads) float64: the exact pairs
    attended, the same on both backends).

    ``backend``: "auto", "reference" or "triton" (see :mod:`sparsa.backend`). The Triton path
    builds per-query-block key lists on the device and runs the block-sparse kernel with the
    element mask in the edge blocks (``block_q``/``block_k`` tile it); "auto" takes it on CUDA
    tensors it supports (head_dim 64/128, float16/bfloat16/float32).
    """
    b, h, _, lq, lk, _ = check_qkv(q, k, v)
    check_int("block_q", block_q, minimum=1)
    check_int("block_k", block_k, minimum=1)
    local = LocalMask.build(window, sink, global_positions, lk)
    if use_kernel(backend, q.device, lambda: _kernel_unsupported(q, block_q, block_k)):
        from .triton import local_attention_triton  # triton: optional, imported only when a kernel runs
        out = local_attention_triton(q, k, v, window=local.window, sink=local.sink,
                                     global_positions=local.globals, scale=scale,
                                     block_q=block_q, block_k=block_k)
        pairs = float(local_pairs(local, lq, lk))          # on the host: the count needs no device read
        return out, torch.full((b, h), pairs, dtype=torch.float64, device=q.device)
    return local_attention_ref(q, k, v, window=local.window, sink=local.sink, global_positions=local.globals,
                               scale=scale)


__all__ = ["LocalMask", "block_mask_from_indices", "block_sparse_attention", "block_sparse_attention_ref",
           "check_block_indices", "indices_from_block_mask", "local_attention", "local_attention_ref",
           "local_block_lists", "local_pairs", "normalize_block_indices", "num_blocks", "query_block_spans",
           "tile_pairs"]

"""Vertical-slash prefill attention (MInference's pattern) behind one dispatching function."""
from __future__ import annotations

import os

import torch

from ..._validation import check_qkv, check_scale
from ...backend import resolve_backend
from .reference import check_vs_indices, vertical_slash_attention_ref


def vertical_slash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    vertical_indices: torch.Tensor,
    slash_indices: torch.Tensor,
    *,
    scale: float | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention over the union of the listed key columns and diagonals.

    Args:
        q: (batch, heads, q_len, head_dim), the last ``q_len`` positions.
        k, v: (batch, kv_heads, kv_len, head_dim).
        vertical_indices: (batch, heads or kv_heads, n_vertical) absolute key positions; -1 unused.
        slash_indices: (batch, same heads, n_slash) diagonal offsets ``o >= 0`` (query at
            position ``p`` sees key ``p - o``); -1 unused.
        scale: softmax scale, default ``head_dim ** -0.5``.
        backend: "auto", "reference" or "triton" (see :mod:`sparsa.backend`). "auto" runs the
            Triton kernels (exact pairs) on CUDA tensors with head_dim 64/128 and float16/
            bfloat16/float32, the reference otherwise.

    Returns:
        (out like q, pairs (batch, heads) float64: query-key pairs attended per head).
    """
    check_qkv(q, k, v)
    scale = check_scale(scale, q.shape[-1])
    chosen = resolve_backend(backend, q.device)
    requested = backend if backend is not None else os.environ.get("SPARSA_BACKEND", "auto")
    if chosen == "triton":
        # "auto" falls back to the reference for inputs the kernel does not take
        from ..block_sparse.triton import HEAD_DIMS, KERNEL_DTYPES
        supported = q.shape[-1] in HEAD_DIMS and q.dtype in KERNEL_DTYPES
        if not supported and requested == "triton":
            raise ValueError(f"backend: the Triton kernel takes head_dim in {HEAD_DIMS} and float16/bfloat16/"
                             f"float32; got head_dim={q.shape[-1]}, {q.dtype}; use backend='reference' or 'auto'")
        if supported:
            from .convert import vertical_slash_pairs
            from .triton import vertical_slash_attention_triton, vertical_slash_layout
            layout = vertical_slash_layout(q, k, vertical_indices, slash_indices)
            out = vertical_slash_attention_triton(q, k, v, scale=scale, layout=layout)
            return out, vertical_slash_pairs(layout, q.shape[1])
    return vertical_slash_attention_ref(q, k, v, vertical_indices, slash_indices, scale=scale)


__all__ = ["check_vs_indices", "vertical_slash_attention", "vertical_slash_attention_ref"]

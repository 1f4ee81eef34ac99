"""Vertical-slash prefill attention (MInference's pattern) behind one dispatching function."""
from __future__ import annotations

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
        backend: "auto", "reference" or "triton" (see :mod:`sparsa.backend`).

    Returns:
        (out like q, pairs (batch, heads) float64: query-key pairs attended per head).
    """
    check_qkv(q, k, v)
    scale = check_scale(scale, q.shape[-1])
    chosen = resolve_backend(backend, q.device)
    if chosen == "triton" and backend == "triton":
        raise ValueError("backend: no Triton kernel for vertical-slash attention yet; use 'reference' or 'auto'")
    # "auto" on CUDA runs the reference until a kernel is registered here.
    return vertical_slash_attention_ref(q, k, v, vertical_indices, slash_indices, scale=scale)


__all__ = ["check_vs_indices", "vertical_slash_attention", "vertical_slash_attention_ref"]

"""Vertical-slash prefill attention (MInference's pattern) behind one dispatching function."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._validation import check_qkv, check_scale
from ...backend import use_kernel
from .._shared.kernel_inputs import HEAD_DIMS, KERNEL_DTYPES
from .._shared.masked import dense_attention
from .convert import (BLOCK_Q_CHOICES, VSLayout, dense_causal_pairs, prepare_vertical_slash, superset_pairs,
                      superset_routes_dense, vertical_slash_pairs, vertical_slash_superset_ref)
from .reference import check_vs_indices, check_vs_pair, vertical_slash_attention_ref


def dense_causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention (bottom-right aligned) with PyTorch SDPA, cuDNN first on CUDA.

    q: (B, H, q_len, D); k, v: (B, Hkv, kv_len, D). Returns the output like q.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    g = q.shape[1] // k.shape[1]
    if g > 1:
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    if q.shape[2] == k.shape[2]:
        kwargs: dict = {"is_causal": True}
    else:
        from torch.nn.attention.bias import causal_lower_right
        kwargs = {"attn_mask": causal_lower_right(q.shape[2], k.shape[2])}
    if q.is_cuda:
        try:
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return F.scaled_dot_product_attention(q, k, v, scale=scale, **kwargs)
        except RuntimeError:          # no cuDNN kernel for these inputs: PyTorch's own choice
            pass
    return F.scaled_dot_product_attention(q, k, v, scale=scale, **kwargs)


def vertical_slash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    vertical_indices: torch.Tensor,
    slash_indices: torch.Tensor,
    *,
    scale: float | None = None,
    backend: str | None = None,
    exact: bool = True,
    block_q: int | None = None,
    check_indices: bool = True,
    layout: VSLayout | None = None,
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
            Triton kernels on CUDA tensors with head_dim 64/128 and float16/bfloat16/float32,
            the reference otherwise.
        exact: True attends exactly the lines. False: MInference's superset semantics, every
            causal pair of the 64-key tiles covering the diagonals (blocks of ``block_q``
            query rows) plus the columns; when those tiles would compute at least
            ``DENSE_ROUTE_FRACTION`` of a dense causal pass, dense causal attention instead
            (cuDNN SDPA on CUDA). Both backends implement both semantics.
        block_q: query rows per tile row (64 or 128; default
            :func:`~sparsa.ops.vertical_slash.convert.default_block_q`); part of the result
            when ``exact`` is False.
        check_indices: False skips the range check of the index entries (a read-back to the
            host); only for lists known to be in range.
        layout: with ``exact=False``, the superset layout of these very lists, already built
            (:func:`~sparsa.ops.vertical_slash.convert.prepare_vertical_slash` with the same
            ``block_q``), so it is not built again.

    Returns:
        (out like q, pairs (batch, heads) float64: query-key pairs attended per head).
    """
    b, h, hkv, lq, lk, _ = check_qkv(q, k, v)
    scale = check_scale(scale, q.shape[-1])
    if not isinstance(exact, bool):
        raise TypeError(f"exact: expected a bool, got {type(exact).__name__}")
    if block_q is not None and (isinstance(block_q, bool) or block_q not in BLOCK_Q_CHOICES):
        raise ValueError(f"block_q: must be None or one of {BLOCK_Q_CHOICES}, got {block_q!r}")
    def unsupported() -> str | None:
        if q.shape[-1] in HEAD_DIMS and q.dtype in KERNEL_DTYPES:
            return None
        return (f"the Triton kernel takes head_dim in {HEAD_DIMS} and float16/bfloat16/float32; "
                f"got head_dim={q.shape[-1]}, {q.dtype}")

    if use_kernel(backend, q.device, unsupported):
        from .triton import vertical_slash_attention_triton, vertical_slash_layout   # triton: optional
        if layout is None or exact:
            layout = vertical_slash_layout(q, k, vertical_indices, slash_indices, block_q=block_q, exact=exact,
                                           check_indices=check_indices)
        if superset_routes_dense(layout):
            return dense_causal_sdpa(q, k, v, scale), dense_causal_pairs(b, h, lq, lk, q.device)
        out = vertical_slash_attention_triton(q, k, v, scale=scale, layout=layout)
        return out, vertical_slash_pairs(layout, h) if exact else superset_pairs(layout, h)
    if exact:
        return vertical_slash_attention_ref(q, k, v, vertical_indices, slash_indices, scale=scale)
    check_vs_pair(vertical_indices, slash_indices, b, h, hkv)
    if layout is None:
        layout = prepare_vertical_slash(vertical_indices, slash_indices, lq, lk, use_triton=False,
                                        block_q=block_q, exact=False, check_indices=check_indices)
    if superset_routes_dense(layout):
        return dense_attention(q, k, v, scale=scale), dense_causal_pairs(b, h, lq, lk, q.device)
    return vertical_slash_superset_ref(q, k, v, layout, scale=scale)


__all__ = ["check_vs_indices", "dense_causal_sdpa", "vertical_slash_attention", "vertical_slash_attention_ref"]

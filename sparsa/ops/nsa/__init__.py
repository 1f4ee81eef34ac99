"""Native Sparse Attention: compression, block selection, sliding window and gated mixing."""
from __future__ import annotations

import os

import torch

from ...backend import resolve_backend
from .config import CompressionParams, NSAConfig
from .reference import (NSAAux, compress_blocks, compressed_attention, nsa_attention_ref, nsa_decode_ref,
                        nsa_pairs_per_row, overlap_weights, select_blocks, selection_scores)


def nsa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor,
                  cfg: NSAConfig = NSAConfig(), *, backend: str | None = None,
                  **kwargs: object) -> torch.Tensor | tuple[torch.Tensor, NSAAux]:
    """Dispatching entry point of :func:`nsa_attention_ref` (same arguments and result).

    ``backend`` (see :mod:`sparsa.backend`): "auto" runs the Triton kernels
    (:mod:`sparsa.ops.nsa.triton`, forward and backward) on CUDA tensors they support and the
    reference otherwise (CPU, float64, head_dim other than 64/128, more than 32 query heads per
    KV head, geometries the kernels do not cover); "triton" raises a ValueError naming the
    reason instead of falling back; "reference" always runs the reference.
    """
    requested = backend if backend is not None else os.environ.get("SPARSA_BACKEND", "auto")
    if resolve_backend(backend, q.device) == "triton":
        from .triton import nsa_attention_triton, unsupported_reason
        reason = unsupported_reason(q, k, cfg) if isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) \
            and q.ndim == 4 and k.ndim == 4 else "q, k: expected 4-D tensors"
        if reason is None:
            return nsa_attention_triton(q, k, v, gates, cfg, **kwargs)  # type: ignore[arg-type]
        if requested == "triton":
            raise ValueError(f"backend: the Triton NSA kernels cannot take this input ({reason}); "
                             "use backend='reference' or 'auto'")
    return nsa_attention_ref(q, k, v, gates, cfg, **kwargs)  # type: ignore[arg-type]


def nsa_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor,
               cfg: NSAConfig = NSAConfig(), *, backend: str | None = None,
               **kwargs: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dispatching entry point of :func:`nsa_decode_ref` (same arguments and result triple).

    Backends as for :func:`nsa_attention`; the Triton path runs the split-KV decode kernels
    (:func:`sparsa.ops.nsa.triton.nsa_decode_triton`) and derives the positions read from the
    blocks it chose.
    """
    requested = backend if backend is not None else os.environ.get("SPARSA_BACKEND", "auto")
    if resolve_backend(backend, q.device) == "triton":
        from .triton import decode_read_positions, nsa_decode_triton, unsupported_reason
        ok = isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and q.ndim == 3 and k.ndim == 4
        reason = unsupported_reason(q[:, :, None], k, cfg) if ok else "q: expected (batch, heads, head_dim)"
        if reason is None:
            out, blocks = nsa_decode_triton(q, k, v, gates, cfg, return_blocks=True, **kwargs)  # type: ignore[misc]
            lk = k.shape[2]
            positions, tokens = decode_read_positions(blocks, cfg, lk, q.shape[1], cfg.n_compressed(lk))
            return out, positions, tokens
        if requested == "triton":
            raise ValueError(f"backend: the Triton NSA kernels cannot take this input ({reason}); "
                             "use backend='reference' or 'auto'")
    return nsa_decode_ref(q, k, v, gates, cfg, **kwargs)  # type: ignore[arg-type]


__all__ = ["CompressionParams", "NSAAux", "NSAConfig", "compress_blocks", "compressed_attention", "nsa_attention",
           "nsa_attention_ref", "nsa_decode", "nsa_decode_ref", "nsa_pairs_per_row", "overlap_weights", "select_blocks",
           "selection_scores"]

"""Native Sparse Attention: compression, block selection, sliding window and gated mixing."""
from __future__ import annotations

import torch

from ...backend import use_kernel
from .config import CompressionParams, NSAConfig
from .reference import (NSAAux, compress_blocks, compressed_attention, nsa_attention_ref, nsa_decode_ref,
                        nsa_pairs_per_row, overlap_weights, select_blocks, selection_scores)


def _kernels_cannot(reason: str | None) -> str | None:
    return None if reason is None else f"the Triton NSA kernels cannot take this input ({reason})"


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
    def unsupported() -> str | None:
        from .triton import unsupported_reason  # triton: optional, imported only when a kernel runs
        ok = isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and q.ndim == 4 and k.ndim == 4
        return _kernels_cannot(unsupported_reason(q, k, cfg) if ok else "q, k: expected 4-D tensors")

    if use_kernel(backend, q.device, unsupported):
        from .triton import nsa_attention_triton  # triton: optional, imported only when a kernel runs
        return nsa_attention_triton(q, k, v, gates, cfg, **kwargs)  # type: ignore[arg-type]
    return nsa_attention_ref(q, k, v, gates, cfg, **kwargs)  # type: ignore[arg-type]


def nsa_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor,
               cfg: NSAConfig = NSAConfig(), *, backend: str | None = None,
               **kwargs: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dispatching entry point of :func:`nsa_decode_ref` (same arguments and result triple).

    Backends as for :func:`nsa_attention`; the Triton path runs the split-KV decode kernels
    (:func:`sparsa.ops.nsa.triton.nsa_decode_triton`) and derives the positions read from the
    blocks it chose.
    """
    def unsupported() -> str | None:
        from .triton import unsupported_reason  # triton: optional, imported only when a kernel runs
        ok = isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and q.ndim == 3 and k.ndim == 4
        return _kernels_cannot(unsupported_reason(q[:, :, None], k, cfg) if ok
                               else "q: expected (batch, heads, head_dim)")

    if use_kernel(backend, q.device, unsupported):
        from .triton import decode_read_positions, nsa_decode_triton  # triton: optional
        out, blocks = nsa_decode_triton(q, k, v, gates, cfg, return_blocks=True, **kwargs)  # type: ignore[misc]
        lk = k.shape[2]
        positions, tokens = decode_read_positions(blocks, cfg, lk, q.shape[1], cfg.n_compressed(lk))
        return out, positions, tokens
    return nsa_decode_ref(q, k, v, gates, cfg, **kwargs)  # type: ignore[arg-type]


__all__ = ["CompressionParams", "NSAAux", "NSAConfig", "compress_blocks", "compressed_attention", "nsa_attention",
           "nsa_attention_ref", "nsa_decode", "nsa_decode_ref", "nsa_pairs_per_row", "overlap_weights", "select_blocks",
           "selection_scores"]

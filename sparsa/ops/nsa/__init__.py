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

    Only the reference exists so far: "auto" runs it on every device, "triton" is refused.
    """
    requested = backend if backend is not None else os.environ.get("SPARSA_BACKEND", "auto")
    if resolve_backend(backend, q.device) == "triton" and requested == "triton":
        raise ValueError("backend: no Triton kernel for nsa_attention yet; use 'reference' or 'auto'")
    return nsa_attention_ref(q, k, v, gates, cfg, **kwargs)  # type: ignore[arg-type]


__all__ = ["CompressionParams", "NSAAux", "NSAConfig", "compress_blocks", "compressed_attention", "nsa_attention",
           "nsa_attention_ref", "nsa_decode_ref", "nsa_pairs_per_row", "overlap_weights", "select_blocks",
           "selection_scores"]

"""Sparse decode: one query step reading a subset of the KV cache.

* :func:`sparse_decode_ref`: the subset as token positions of a dense cache (the spec of the
  decode-time methods);
* :func:`varlen_decode`: a per-KV-head variable-length store (evicting methods);
* :func:`paged_decode`, :func:`quest_page_scores`, :func:`quest_select`: a paged store read
  page by page (Quest), whose page bounds are stored natively or as int8 codes
  (:func:`quantize_bounds`).

Each dispatches between the PyTorch reference and the Triton kernel (``backend`` "auto",
"reference" or "triton"; see :mod:`sparsa.backend`). "auto" runs the kernel on CUDA tensors it
supports (head_dim 32/64/128/256, float16/bfloat16/float32) and the reference otherwise.
"""
from __future__ import annotations

import torch

from ...backend import resolve_backend, use_kernel
from ..kv_quant import QuantizedTensor
from .reference import (PAGE_BOUNDS, bounds_bytes_per_page, current_pages, default_bounds, dequantize_bounds,
                        gather_rows, h2o_victims_ref, paged_decode_ref, paged_rows, pages_to_tokens, quantize_bounds,
                        quest_page_scores_ref, quest_select_ref, resolve_bounds, sparse_decode_ref,
                        streaming_victims_ref, varlen_decode_ref)

KERNEL_HEAD_DIMS = (32, 64, 128, 256)


def use_triton(backend: str | None, q: torch.Tensor) -> bool:
    """True when the Triton kernels should run for query ``q`` under ``backend``.

    "triton" on an unsupported input raises a ValueError naming what is unsupported.
    """
    def unsupported() -> str | None:
        if q.shape[-1] in KERNEL_HEAD_DIMS and q.dtype in (torch.float16, torch.bfloat16, torch.float32):
            return None
        return (f"the Triton decode kernels take head_dim in {KERNEL_HEAD_DIMS} and float16/bfloat16/float32; "
                f"got head_dim={q.shape[-1]}, {q.dtype}")

    return use_kernel(backend, q.device, unsupported)


def varlen_decode(q: torch.Tensor, k: torch.Tensor | QuantizedTensor, v: torch.Tensor | QuantizedTensor,
                  start: torch.Tensor, length: torch.Tensor, *, scale: float | None = None,
                  max_len: int | None = None, backend: str | None = None) -> torch.Tensor:
    """Decode attention over a variable-length per-KV-head store; (B, H, D) like q.

    See :func:`~sparsa.ops.sparse_decode.reference.varlen_decode_ref` for the layout.
    """
    if use_triton(backend, q):
        from .triton import varlen_decode_triton
        out, _ = varlen_decode_triton(q, k, v, start.to(torch.int64), length.to(torch.int32), scale=scale,
                                      max_len=max_len)
        return out
    return varlen_decode_ref(q, k, v, start, length, scale=scale)


def paged_decode(q: torch.Tensor, k_pages, v_pages, page_table: torch.Tensor, seq_lens: torch.Tensor,
                 page_list: torch.Tensor, *, page_size: int, scale: float | None = None,
                 backend: str | None = None) -> torch.Tensor:
    """Decode attention over the listed pages of a paged store; (B, H, D) like q.

    page_list (B, Hkv, W): logical pages, valid entries first, -1 padded.
    """
    if use_triton(backend, q):
        from .triton import paged_decode_triton
        list_len = (page_list >= 0).sum(-1, dtype=torch.int32)
        return paged_decode_triton(q, k_pages, v_pages, page_table.to(torch.int32), seq_lens.to(torch.int64),
                                   page_list.to(torch.int32), list_len, page_size=page_size, scale=scale)
    return paged_decode_ref(q, k_pages, v_pages, page_table, seq_lens, page_list, page_size=page_size, scale=scale)


def quest_page_scores(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, page_table: torch.Tensor,
                      seq_lens: torch.Tensor, page_size: int, *, scale: torch.Tensor | None = None,
                      backend: str | None = None) -> torch.Tensor:
    """Quest page scores (B, Hkv, max_pages) float32; -inf where a page is not a candidate.

    kmin, kmax (pages, Hkv, D): bounds, or int8 codes with ``scale`` (pages, Hkv) float32
    (see :func:`~sparsa.ops.sparse_decode.reference.quest_page_scores_ref`).
    """
    if use_triton(backend, q):
        from .triton import quest_page_scores_triton
        return quest_page_scores_triton(q, kmin, kmax, page_table.to(torch.int32), seq_lens.to(torch.int64),
                                        page_size, scale=scale)
    return quest_page_scores_ref(q, kmin, kmax, page_table, seq_lens, page_size, scale=scale)


def quest_select(scores: torch.Tensor, seq_lens: torch.Tensor, page_size: int, n_select: torch.Tensor | int, *,
                 backend: str | None = None) -> torch.Tensor:
    """Quest's page list (B, Hkv, max(n_select) + 1) int32, -1 padded: top pages ascending, then
    the current page (every page when the current page index is <= n_select)."""
    if resolve_backend(backend, scores.device) == "triton":
        from .triton import quest_select_triton
        b = scores.shape[0]
        nsel = torch.as_tensor(n_select, device=scores.device, dtype=torch.int32).expand(b).contiguous()
        width = int(nsel.max()) + 1 if b else 1
        plist, _ = quest_select_triton(scores, seq_lens.to(torch.int64), page_size, nsel, width)
        return plist
    return quest_select_ref(scores, seq_lens, page_size, n_select)


__all__ = ["PAGE_BOUNDS", "bounds_bytes_per_page", "current_pages", "default_bounds", "dequantize_bounds",
           "gather_rows", "h2o_victims_ref", "paged_decode", "paged_decode_ref", "paged_rows", "pages_to_tokens",
           "quantize_bounds", "quest_page_scores", "quest_page_scores_ref", "quest_select", "quest_select_ref",
           "resolve_bounds", "sparse_decode_ref", "streaming_victims_ref", "use_triton", "varlen_decode",
           "varlen_decode_ref"]

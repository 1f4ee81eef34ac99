"""Sparse decode: one query step reading a subset of the KV cache.

* :func:`sparse_decode_ref`: the subset as token positions of a dense cache (the spec of the
  decode-time methods);
* :func:`varlen_decode_ref`: a per-KV-head variable-length store (evicting methods);
* :func:`paged_decode_ref`, :func:`quest_page_scores_ref`, :func:`quest_select_ref`: a paged store
  read page by page (Quest), whose page bounds are stored natively or as int8 codes
  (:func:`quantize_bounds`).

The Triton kernels of each are in :mod:`sparsa.ops.sparse_decode.triton`; the caches pick
between reference and kernel with :func:`use_triton` (``backend`` "auto", "reference" or
"triton"; see :mod:`sparsa.backend`). "auto" runs the kernel on CUDA tensors it supports
(head_dim 32/64/128/256, float16/bfloat16/float32) and the reference otherwise.
"""
from __future__ import annotations

import torch

from ...backend import use_kernel
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


__all__ = ["KERNEL_HEAD_DIMS", "PAGE_BOUNDS", "bounds_bytes_per_page", "current_pages", "default_bounds",
           "dequantize_bounds", "gather_rows", "h2o_victims_ref", "paged_decode_ref", "paged_rows", "pages_to_tokens",
           "quantize_bounds", "quest_page_scores_ref", "quest_select_ref", "resolve_bounds", "sparse_decode_ref",
           "streaming_victims_ref", "use_triton", "varlen_decode_ref"]

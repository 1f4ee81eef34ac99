"""SDPA execution of the reference ops: the masked executor and its scope, named here for the
package, plus the dense causal route.

The executor (PyTorch SDPA with a boolean mask, in the inputs' dtype, chunk by chunk of query
rows) is described and implemented in :mod:`sparsa.ops._shared.masked_sdpa`, beside the spec
:func:`~sparsa.ops.dense.reference.masked_attention`. Inside :func:`sdpa_masked_scope` (set by
:meth:`sparsa.methods.base.Method.__call__` when :func:`sparsa.backend.masked_executor` says
"sdpa") every reference op runs through it, with identical masks and so identical pair counts.
``backend="reference"`` keeps the spec.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._shared.masked_sdpa import _sdpa_dtype, masked_attention_sdpa, sdpa_masked_active, sdpa_masked_scope
from .._shared.masks import causal_pairs

__all__ = ["causal_attention_sdpa", "masked_attention_sdpa", "sdpa_masked_active", "sdpa_masked_scope"]


def causal_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                          scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense causal attention (bottom-right aligned) with SDPA, in q's dtype.

    q (B, H, q_len, D), k/v (B, Hkv, kv_len, D). Returns (out like q, pairs (B, H) float64).
    """
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    ct = _sdpa_dtype(q)
    qc, kc, vc = q.to(ct), k.to(ct), v.to(ct)
    gqa = h != hkv
    if lq == lk:
        o = F.scaled_dot_product_attention(qc, kc, vc, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        from torch.nn.attention.bias import causal_lower_right
        if gqa:
            kc, vc = kc.repeat_interleave(h // hkv, 1), vc.repeat_interleave(h // hkv, 1)
        o = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=causal_lower_right(lq, lk), scale=scale)
    pairs = torch.full((b, h), float(causal_pairs(lq, lk)), dtype=torch.float64, device=q.device)
    return o.to(q.dtype), pairs

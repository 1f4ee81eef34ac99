"""Dense causal attention: the baseline every method is measured against."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.dense.reference import causal_mask_fn, masked_attention
from ..ops.dense.sdpa import causal_attention_sdpa, sdpa_masked_active
from .base import AttentionStats, Method, prefill_stats
from .registry import register


@register
@dataclass
class Dense(Method):
    """Every query sees every earlier key. ``compression`` must be 1 (or unset)."""

    name = "dense"
    phase = "both"
    paper = "Vaswani et al., 2017"
    fast_masks = True

    def validate(self) -> None:
        if self.compression not in (None, 1.0):
            raise ValueError(f"compression: dense attention only has compression 1, got {self.compression}")

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                backend: str | None) -> tuple[torch.Tensor, AttentionStats]:
        lq, lk = q.shape[2], k.shape[2]
        if sdpa_masked_active():
            out, pairs = causal_attention_sdpa(q, k, v, scale=scale)
        else:
            out, pairs = masked_attention(q, k, v, causal_mask_fn(lq, lk, q.device), scale=scale)
        return out, prefill_stats(self.name, pairs, lq, lk, dense_fallback=False)

    def decode_tokens(self, context_len: int) -> int:
        return context_len

"""Dense causal attention: the baseline every method is measured against."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..cache.varlen import VarlenKVCache
from ..ops.dense.reference import causal_mask_fn, masked_attention
from ..ops.dense.sdpa import causal_attention_sdpa, sdpa_masked_active
from ..ops.kv_quant import QuantSpec
from .base import AttentionStats, Method, prefill_stats
from .decoder import VarlenDecoder, growing_reserve
from .registry import register


@register
@dataclass
class Dense(Method):
    """Every query sees every earlier key. ``compression`` must be 1 (or unset)."""

    name = "dense"
    phase = "both"
    paper = "Vaswani et al., 2017"
    fast_masks = True
    compacts = True      # its decoder keeps every token, in the per-head store

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

    def make_decoder(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, lengths: torch.Tensor | None,
                     scale: float, quant: QuantSpec | None, backend: str | None, reserve: int | None,
                     **options: Any) -> VarlenDecoder:
        """Every prompt token in a :class:`~sparsa.cache.VarlenKVCache`; each step appends and attends."""
        self.reject_options(options)
        res = growing_reserve(k.shape[2]) if reserve is None else reserve
        cache = VarlenKVCache.from_dense(k, v, None, lengths=lengths, quant=quant, reserve=res)
        return VarlenDecoder(self, cache, q.shape[1], scale, backend)

"""Ada-SnapKV: SnapKV with the layer's budget split adaptively across heads (Feng et al., Ada-KV, 2024)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import check_float
from ._scores import stable_topk_mask
from .registry import register
from .snapkv import _PromptCompressor


def head_floor(capacity: int, floor_ratio: float) -> int:
    """Tokens every KV head keeps at least: ``floor(floor_ratio * capacity)``."""
    return int(floor_ratio * capacity)


def adaptive_selection(scores: torch.Tensor, capacity: int, floor: int) -> torch.Tensor:
    """Split ``capacity * kv_heads`` kept tokens across the KV heads of each batch element.

    scores: (B, Hkv, C) candidate scores. Every head first keeps its top ``floor`` tokens; the
    rest of the layer's budget goes to the highest scores over all heads together (ties to the
    lower head, then the earlier token). Returns the (B, Hkv, C) bool selection; per head it is
    that head's top ``n_h`` tokens, with ``Σ_h n_h = min(capacity * Hkv, Hkv * C)`` and
    ``n_h >= min(floor, C)``.
    """
    b, hkv, c = scores.shape
    floor = min(floor, capacity, c)
    forced = stable_topk_mask(scores, floor)
    ranked = scores.masked_fill(forced, float("inf")).flatten(1)
    return stable_topk_mask(ranked, min(capacity * hkv, hkv * c)).view(b, hkv, c)


@register
@dataclass
class AdaSnapKV(_PromptCompressor):
    """SnapKV's scores with an adaptive per-head budget.

    The layer keeps ``capacity * kv_heads`` prompt tokens (per batch element) outside the
    observation window: each KV head is guaranteed ``floor(floor_ratio * capacity)`` of its
    best tokens and the remainder goes to the best scores across all heads, so heads whose
    attention is spread out keep more. Per-head cache lengths then differ (``-1`` padding in
    the decode state). Everything else (window, pooling, decoding, ``compression`` mapping onto
    the average ``capacity``) is :class:`SnapKV`'s. Defaults: ``window=32``, ``kernel=7``,
    ``capacity=1024``, ``floor_ratio=0.2`` (Ada-KV's safeguard).
    """

    name = "ada_snapkv"
    paper = "Feng et al., Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation, 2024"

    floor_ratio: float = 0.2

    def validate(self) -> None:
        super().validate()
        check_float("floor_ratio", self.floor_ratio, 0.0, 1.0)

    def select_prompt(self, scores: torch.Tensor, capacity: int) -> torch.Tensor:
        return adaptive_selection(scores, capacity, head_floor(capacity, self.floor_ratio))

    def random_counts(self, b: int, hkv: int, length: int, capacity: int, generator: torch.Generator,
                      device: torch.device) -> torch.Tensor:
        """Per-head budgets of the adaptive split of random scores whose spread differs per head."""
        spread = torch.exp(2.0 * torch.randn(b, hkv, 1, generator=generator, device=device))
        scores = torch.rand(b, hkv, length - self.window, generator=generator, device=device) ** spread
        return self.select_prompt(scores, capacity).sum(-1)

"""Masks of attention as functions of query rows: the vocabulary every op's reference and the
masked-attention executors share. Positions are bottom-right aligned: query row ``i`` of
``q_len`` rows over ``kv_len`` keys sits at absolute position ``kv_len - q_len + i``."""
from __future__ import annotations

from typing import Callable

import torch

# mask_fn(q_start, q_end) -> bool tensor broadcastable to (batch, heads, q_end - q_start, kv_len);
# its head dim may be heads, kv_heads (shared by each query group) or 1. True = attend.
MaskFn = Callable[[int, int], torch.Tensor]


def query_positions(q_len: int, kv_len: int, start: int = 0, end: int | None = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Absolute positions (int64) of query rows ``start:end``."""
    end = q_len if end is None else end
    return torch.arange(kv_len - q_len + start, kv_len - q_len + end, device=device)


def causal_mask_fn(q_len: int, kv_len: int, device: torch.device | str) -> MaskFn:
    """Mask function of plain causal attention (bottom-right aligned)."""
    cols = torch.arange(kv_len, device=device)

    def fn(s: int, e: int) -> torch.Tensor:
        rows = query_positions(q_len, kv_len, s, e, device)
        return (cols[None, :] <= rows[:, None])[None, None]

    return fn


def _group_mask(mask: torch.Tensor, heads: int, kv_heads: int) -> torch.Tensor:
    """Reshape a (B|1, H|Hkv|1, cq, kv_len) mask to (B|1, Hkv|1, G|1, cq, kv_len)."""
    if mask.ndim != 4:
        raise ValueError(f"mask: mask_fn must return a 4-D mask, got shape {tuple(mask.shape)}")
    mh = mask.shape[1]
    if mh == heads and heads != kv_heads:
        return mask.unflatten(1, (kv_heads, heads // kv_heads))
    if mh in (kv_heads, 1):
        return mask.unsqueeze(2)
    raise ValueError(f"mask: head dimension {mh} must be heads ({heads}), kv_heads ({kv_heads}) or 1")


def causal_pairs(q_len: int, kv_len: int) -> int:
    """Number of query-key pairs of the causal dense matrix: sum over rows of (position + 1)."""
    first = kv_len - q_len + 1
    return (first + kv_len) * q_len // 2

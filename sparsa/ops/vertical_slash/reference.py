"""Reference vertical-slash prefill attention (MInference's pattern; the kernel's spec).

``vertical_indices`` (batch, heads_x, n_vertical): absolute key positions (columns) that
every later query sees. ``slash_indices`` (batch, heads_x, n_slash): diagonal offsets
``o >= 0``; query at position ``p`` sees key ``p - o``. ``heads_x`` is heads or kv_heads;
unused slots hold -1. Causality is always applied.
"""
from __future__ import annotations

import torch

from .._shared.masked import masked_attention
from .._shared.masks import query_positions


def _membership(indices: torch.Tensor, size: int, name: str) -> torch.Tensor:
    """(B, Hx, N) int with -1 padding -> (B, Hx, size) bool table."""
    if indices.dtype not in (torch.int16, torch.int32, torch.int64):
        raise TypeError(f"{name}: dtype must be an integer type, got {indices.dtype}")
    if indices.numel() and (int(indices.min()) < -1 or int(indices.max()) >= size):
        raise ValueError(f"{name}: entries must be -1 (unused) or in [0, {size}), "
                         f"got range [{int(indices.min())}, {int(indices.max())}]")
    b, hx, _ = indices.shape
    table = torch.zeros(b, hx, size + 1, dtype=torch.bool, device=indices.device)
    idx = indices.to(torch.int64)
    table.scatter_(-1, torch.where(idx < 0, torch.full_like(idx, size), idx), True)
    return table[..., :size]


def check_vs_indices(name: str, indices: torch.Tensor, batch: int, heads: int, kv_heads: int) -> None:
    if not isinstance(indices, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(indices).__name__}")
    if indices.ndim != 3 or indices.shape[0] != batch or indices.shape[1] not in (heads, kv_heads):
        raise ValueError(f"{name}: expected shape (batch={batch}, heads={heads} or kv_heads={kv_heads}, n), "
                         f"got {tuple(indices.shape)}")


def check_vs_pair(vertical_indices: torch.Tensor, slash_indices: torch.Tensor, batch: int, heads: int,
                  kv_heads: int) -> None:
    """Check both index lists and that they share one head layout (heads or kv_heads)."""
    check_vs_indices("vertical_indices", vertical_indices, batch, heads, kv_heads)
    check_vs_indices("slash_indices", slash_indices, batch, heads, kv_heads)
    if vertical_indices.shape[1] != slash_indices.shape[1]:
        raise ValueError("slash_indices: head dimension must equal vertical_indices' "
                         f"({slash_indices.shape[1]} vs {vertical_indices.shape[1]})")


def vertical_slash_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    vertical_indices: torch.Tensor,
    slash_indices: torch.Tensor,
    *,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention over the union of the given columns and diagonals.

    Returns (out like q, pairs (batch, heads) float64).
    """
    b, h, lq, _ = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    check_vs_pair(vertical_indices, slash_indices, b, h, hkv)
    col_ok = _membership(vertical_indices, lk, "vertical_indices")      # (B, Hx, Lk)
    diag_ok = _membership(slash_indices, lk, "slash_indices")           # (B, Hx, Lk) over offsets
    cols = torch.arange(lk, device=q.device)

    def mask_fn(s: int, e: int) -> torch.Tensor:
        pos = query_positions(lq, lk, s, e, q.device)
        offset = pos[:, None] - cols[None, :]                           # (cq, Lk)
        causal = offset >= 0
        on_diag = diag_ok[:, :, offset.clamp_min(0)]                    # (B, Hx, cq, Lk)
        return (on_diag | col_ok[:, :, None, :]) & causal

    return masked_attention(q, k, v, mask_fn, scale=scale)

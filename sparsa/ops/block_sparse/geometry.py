"""Where query blocks fall among key blocks, and how many causal pairs each tile holds.

Query blocks are counted over query rows (row ``i`` is at position ``kv_len - q_len + i``);
key blocks over absolute key positions. When ``kv_len - q_len`` is not a multiple of the key
block, a query block straddles two key blocks; both are its "diagonal" blocks.
"""
from __future__ import annotations

import torch

from .indices import num_blocks


def query_block_spans(q_len: int, kv_len: int, block_q: int, block_k: int,
                      device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each query block: (first diagonal key block, last diagonal key block, rows).

    Each is an int64 tensor of shape (ceil(q_len / block_q),). The diagonal key blocks are the
    key blocks that hold the positions of the block's own rows.
    """
    nq = num_blocks(q_len, block_q)
    first_row = torch.arange(nq, device=device) * block_q
    last_row = torch.clamp(first_row + block_q, max=q_len) - 1
    offset = kv_len - q_len
    return (first_row + offset) // block_k, (last_row + offset) // block_k, last_row - first_row + 1


def _ramp_sum(n: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """sum_{j=1..n} min(j, width) for n >= 0 (0 for n <= 0)."""
    n = n.clamp_min(0)
    inside = torch.minimum(n, width)
    return inside * (inside + 1) // 2 + (n - inside) * width


def tile_pairs(q_len: int, kv_len: int, block_q: int, block_k: int,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Causal query-key pairs in each (query block, key block) tile, int64 (n_q_blocks, n_k_blocks)."""
    nq, nk = num_blocks(q_len, block_q), num_blocks(kv_len, block_k)
    offset = kv_len - q_len
    p0 = (torch.arange(nq, device=device) * block_q + offset)[:, None]
    p1 = (torch.clamp(torch.arange(nq, device=device) * block_q + block_q, max=q_len) - 1 + offset)[:, None]
    k0 = (torch.arange(nk, device=device) * block_k)[None, :]
    width = (torch.clamp(k0 + block_k, max=kv_len) - k0).expand(nq, nk)
    # a row at position p sees min(p + 1 - k0, width) keys of the tile (0 if negative)
    return _ramp_sum(p1 - k0 + 1, width) - _ramp_sum(p0 - k0, width)

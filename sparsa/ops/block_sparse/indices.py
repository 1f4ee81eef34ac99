"""Key-block index lists: validation and normalisation.

Format (shared by the reference and the kernels): ``block_indices`` is an integer tensor of
shape (batch, heads_x, n_query_blocks, max_blocks) where ``heads_x`` is either the number of
query heads or of KV heads (one list shared by a query group). Each row lists key-block
numbers in ascending order without repeats; unused slots hold -1 at the end of the row.
Query block ``qb`` covers query rows ``[qb*block_q, (qb+1)*block_q)``; key block ``kb``
covers key positions ``[kb*block_k, (kb+1)*block_k)``. Causality is always applied on top.
"""
from __future__ import annotations

import torch


def num_blocks(length: int, block: int) -> int:
    return (length + block - 1) // block


def check_block_indices(block_indices: torch.Tensor, *, batch: int, heads: int, kv_heads: int,
                        q_len: int, kv_len: int, block_q: int, block_k: int,
                        require_sorted: bool = True, check_values: bool = True) -> None:
    """Raise a ValueError/TypeError naming ``block_indices`` unless it is well formed.

    ``check_values=False`` checks the type, dtype and shape only (the entries' range and
    order need device-to-host reads).
    """
    if not isinstance(block_indices, torch.Tensor):
        raise TypeError(f"block_indices: expected a torch.Tensor, got {type(block_indices).__name__}")
    if block_indices.dtype not in (torch.int16, torch.int32, torch.int64):
        raise TypeError(f"block_indices: dtype must be int32 or int64, got {block_indices.dtype}")
    nq, nk = num_blocks(q_len, block_q), num_blocks(kv_len, block_k)
    if block_indices.ndim != 4 or block_indices.shape[0] != batch or block_indices.shape[2] != nq \
            or block_indices.shape[1] not in (heads, kv_heads):
        raise ValueError(
            f"block_indices: expected shape (batch={batch}, heads={heads} or kv_heads={kv_heads}, "
            f"n_query_blocks={nq}, max_blocks), got {tuple(block_indices.shape)}")
    if block_indices.numel() == 0 or not check_values:
        return
    if int(block_indices.min()) < -1 or int(block_indices.max()) >= nk:
        raise ValueError(f"block_indices: entries must be -1 (unused) or in [0, {nk}), "
                         f"got range [{int(block_indices.min())}, {int(block_indices.max())}]")
    if require_sorted:
        valid = block_indices >= 0
        # -1 only after the last valid entry
        if bool((valid[..., 1:] & ~valid[..., :-1]).any()):
            raise ValueError("block_indices: -1 padding must come after all valid entries of a row")
        both = valid[..., 1:] & valid[..., :-1]
        if bool(((block_indices[..., 1:] <= block_indices[..., :-1]) & both).any()):
            raise ValueError("block_indices: each row must be strictly increasing (sorted, no duplicates); "
                             "call normalize_block_indices() first")


def normalize_block_indices(block_indices: torch.Tensor) -> torch.Tensor:
    """Sort each row, drop repeats, move -1 padding to the end. Returns int32."""
    x = block_indices.to(torch.int64)
    big = torch.iinfo(torch.int64).max
    x = torch.where(x < 0, torch.full_like(x, big), x)
    x, _ = x.sort(dim=-1)
    dup = torch.zeros_like(x, dtype=torch.bool)
    dup[..., 1:] = x[..., 1:] == x[..., :-1]
    x = torch.where(dup, torch.full_like(x, big), x)
    x, _ = x.sort(dim=-1)
    return torch.where(x == big, torch.full_like(x, -1), x).to(torch.int32)


def block_mask_from_indices(block_indices: torch.Tensor, n_key_blocks: int) -> torch.Tensor:
    """Dense bool table (batch, heads_x, n_query_blocks, n_key_blocks) of the listed blocks."""
    b, hx, nq, _ = block_indices.shape
    table = torch.zeros(b, hx, nq, n_key_blocks + 1, dtype=torch.bool, device=block_indices.device)
    idx = block_indices.to(torch.int64)
    idx = torch.where(idx < 0, torch.full_like(idx, n_key_blocks), idx)
    table.scatter_(-1, idx, True)
    return table[..., :n_key_blocks]


def indices_from_block_mask(block_mask: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`block_mask_from_indices`: sorted lists padded with -1, int32."""
    nk = block_mask.shape[-1]
    ar = torch.arange(nk, device=block_mask.device).expand_as(block_mask)
    keyed = torch.where(block_mask, ar, torch.full_like(ar, nk))
    width = max(1, int(block_mask.sum(-1).max())) if block_mask.numel() else 1
    keyed, _ = keyed.sort(dim=-1)
    keyed = keyed[..., :width]
    return torch.where(keyed == nk, torch.full_like(keyed, -1), keyed).to(torch.int32)

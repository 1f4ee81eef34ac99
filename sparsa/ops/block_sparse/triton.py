"""Triton forward kernel of block-sparse prefill attention.

One program computes one query block for one query head, or, when the block lists are shared
by a KV head's query group (``heads_x == kv_heads``), for several heads of the group at once:
their rows are stacked along the tile's M dimension (``heads_per_program * block_q <= 128``
rows) so each key/value tile is loaded once for all of them. The program walks exactly the
listed key blocks of its row (a per-row count is computed beforehand), with a
FlashAttention-2 style online softmax in float32. Only the key blocks that reach past the
first row's position (the diagonal blocks, and a partial last block) are masked causally:
the sorted list is split into a prefix that every row sees whole and a masked suffix.

Optional element masking (``LOCAL``, a compile-time switch, so the plain path is unchanged):
a sliding window, sink positions and global positions (see
:mod:`sparsa.ops.block_sparse.local`) hide pairs inside the listed blocks. The lists are then
reordered so that the blocks whose every pair is kept come first (unmasked) and the edge
blocks after them (masked); only the edge blocks pay for the mask.

Layout is SDPA's: q (batch, heads, q_len, head_dim), k/v (batch, kv_heads, kv_len, head_dim);
queries are the last ``q_len`` positions (bottom-right aligned). Inputs may have any strides;
a tensor whose last dimension is not contiguous is copied once with ``.contiguous()``.

Supported: head_dim 64 or 128; float16 and bfloat16 (float32 too, with exact "ieee" dot
products: slow on a GPU, meant for checks); block sizes 16, 32, 64 or 128. CUDA tensors, or CPU
tensors under ``TRITON_INTERPRET=1`` (the Triton interpreter, for tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._validation import check_scale
from ...backend import triton_interpreted
from .._shared.kernel_inputs import (HEAD_DIMS, KERNEL_DTYPES, LOG2E, check_kernel_inputs, heads_per_program,
                                     last_dim_contiguous)
from .._shared.tiles import group_tile_rows, softmax_tile_update, store_group_tile
from .geometry import tile_pairs
from .indices import check_block_indices, num_blocks
from .local import GlobalPositions, LocalMask, local_block_lists, order_clean_first, query_block_positions

BLOCK_SIZES = (16, 32, 64, 128)


def block_counts(block_indices: torch.Tensor, q_len: int, kv_len: int, block_q: int,
                 block_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row counts of listed key blocks: (fully visible prefix, causally visible).

    block_indices: (B, Hx, NQ, max_blocks), sorted, -1 padded. Returns two int32 tensors of
    shape (B, Hx, NQ): the number of leading entries every row of the query block sees whole
    (no mask needed), and the number of entries any row of the block can see.
    """
    nq = block_indices.shape[2]
    idx = block_indices.to(torch.int64)
    first = torch.arange(nq, device=idx.device) * block_q + (kv_len - q_len)      # first row's position
    last = torch.clamp(first + block_q - 1, max=kv_len - 1)                         # last valid row's position
    valid = idx >= 0
    n_all = (valid & (idx * block_k <= last[:, None])).sum(-1, dtype=torch.int32)
    n_full = (valid & ((idx + 1) * block_k - 1 <= first[:, None])).sum(-1, dtype=torch.int32)
    return n_full, n_all


def block_sparse_pairs(block_indices: torch.Tensor, heads: int, q_len: int, kv_len: int, block_q: int,
                       block_k: int) -> torch.Tensor:
    """Causal query-key pairs attended per (batch, query head), float64, from the index lists.

    block_indices: (B, Hx, NQ, max_blocks) with Hx = heads or kv_heads (shared by a group;
    every head of the group then attends the same pairs). Cost: one gather of the index tensor.
    """
    b, hx, nq, width = block_indices.shape
    tiles = tile_pairs(q_len, kv_len, block_q, block_k, block_indices.device)     # (NQ, NK)
    idx = block_indices.to(torch.int64)
    rows = torch.arange(nq, device=idx.device)[:, None].expand(nq, width)
    per = tiles[rows, idx.clamp_min(0)]                                            # (B, Hx, NQ, W)
    total = torch.where(idx >= 0, per, torch.zeros_like(per)).sum(dim=(-1, -2)).to(torch.float64)
    if hx != heads:
        total = total.repeat_interleave(heads // hx, dim=1)
    return total


@triton.jit
def _block_sparse_fwd_kernel(
    Q, K, V, O, IDX, N_FULL, N_ALL, GLOB,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_ib, stride_ih, stride_iq,
    stride_cb, stride_ch,
    q_len, kv_len, n_qblocks, heads, qk_scale, window, sink,
    GROUP: tl.constexpr, HX_DIV: tl.constexpr, HPP: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
    LOCAL: tl.constexpr, HAS_GLOBAL: tl.constexpr,
):
    BLOCK_M: tl.constexpr = HPP * BLOCK_Q
    qb, b, hkv, hx, row, head, row_ok, pos, q = group_tile_rows(
        Q, stride_qb, stride_qh, stride_qm, q_len, kv_len, n_qblocks, heads,
        GROUP, HX_DIV, HPP, BLOCK_Q, HEAD_DIM, DOT_F32)
    d = tl.arange(0, HEAD_DIM)
    n = tl.arange(0, BLOCK_N)
    k_base = K + b * stride_kb + hkv * stride_kh
    v_base = V + b * stride_vb + hkv * stride_vh
    idx_row = IDX + b * stride_ib + hx * stride_ih + qb * stride_iq
    cnt_off = b * stride_cb + hx * stride_ch + qb
    n_full = tl.load(N_FULL + cnt_off)
    n_all = tl.load(N_ALL + cnt_off)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if HAS_GLOBAL:
        row_global = tl.load(GLOB + pos, mask=row_ok, other=0) != 0

    # key blocks every row sees whole: no mask
    for i in range(0, n_full):
        kb = tl.load(idx_row + i)
        kpos = kb * BLOCK_N + n
        k = tl.load(k_base + kpos[:, None] * stride_kn + d[None, :])
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        m_i, l_i, acc = softmax_tile_update(
            q, s, v_base + kpos[:, None] * stride_vn + d[None, :],
            None, m_i, l_i, acc, False, DOT_PRECISION)

    # blocks reaching past the first row's position, or cut by the element mask: masked
    # (covers keys >= kv_len too)
    for i in range(n_full, n_all):
        kb = tl.load(idx_row + i)
        kpos = kb * BLOCK_N + n
        k_ok = kpos < kv_len
        k = tl.load(k_base + kpos[:, None] * stride_kn + d[None, :], mask=k_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        visible = (kpos[None, :] <= pos[:, None]) & k_ok[None, :]
        if LOCAL:
            keep = ((pos[:, None] - kpos[None, :]) < window) | (kpos[None, :] < sink)
            if HAS_GLOBAL:
                key_global = tl.load(GLOB + kpos, mask=k_ok, other=0) != 0
                keep = keep | key_global[None, :] | row_global[:, None]
            visible = visible & keep
        s = tl.where(visible, s, float("-inf"))
        m_i, l_i, acc = softmax_tile_update(
            q, s, v_base + kpos[:, None] * stride_vn + d[None, :],
            k_ok[:, None], m_i, l_i, acc, True, DOT_PRECISION)

    store_group_tile(O, b, head, row, row_ok, acc, l_i, stride_ob, stride_oh, stride_om, HEAD_DIM)


def _launch_config(block_m: int, block_n: int, head_dim: int) -> tuple[int, int]:
    """(num_warps, num_stages) for a tile shape: 4 warps, 2 stages for large tiles (fastest for
    64 and 128 query rows; benchmarks/NOTES.md)."""
    num_warps = 4
    num_stages = 2 if head_dim * max(block_m, block_n) >= 128 * 128 else 3
    return num_warps, num_stages


def _check_block_sizes(block_q: int, block_k: int) -> None:
    if block_q not in BLOCK_SIZES:
        raise ValueError(f"block_q: the Triton kernel supports {BLOCK_SIZES}, got {block_q}")
    if block_k not in BLOCK_SIZES:
        raise ValueError(f"block_k: the Triton kernel supports {BLOCK_SIZES}, got {block_k}")


def launch_block_sparse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    n_full: torch.Tensor,
    n_all: torch.Tensor,
    *,
    block_q: int,
    block_k: int,
    scale: float,
    local: LocalMask | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Run the kernel on lists already ordered for it (no checks: callers validate).

    idx: int32 (B, Hx, NQ, W) with a contiguous last dimension (other strides may be 0, e.g.
    one list expanded over batch and heads); each row holds first its ``n_full`` unmasked
    blocks, then masked ones up to ``n_all``. n_full, n_all: int32 (B, Hx, NQ), contiguous
    along NQ. ``local``: the element mask applied in the masked blocks (``None``: causal only).
    Returns the output, shape and dtype of q.
    """
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    q, k, v = last_dim_contiguous(q), last_dim_contiguous(k), last_dim_contiguous(v)
    if idx.stride(-1) != 1:
        idx = idx.contiguous()
    hx = idx.shape[1]
    nq = num_blocks(lq, block_q)
    use_local = local is not None and local.active
    flags = local.global_flags(lk, q.device) if use_local else None
    glob = flags if flags is not None else idx        # never read without HAS_GLOBAL
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    hpp = heads_per_program(h, hx, hkv, block_q)
    warps, stages = _launch_config(hpp * block_q, block_k, d)
    grid = (nq, b * (h // hpp))
    _block_sparse_fwd_kernel[grid](
        q, k, v, out, idx, n_full, n_all, glob,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        idx.stride(0), idx.stride(1), idx.stride(2),
        n_full.stride(0), n_full.stride(1),
        lq, lk, nq, h, scale * LOG2E,
        local.window if use_local else lk, local.sink if use_local else 0,
        GROUP=h // hkv, HX_DIV=h // hx, HPP=hpp,
        BLOCK_Q=block_q, BLOCK_N=block_k, HEAD_DIM=d,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        DOT_F32=triton_interpreted() and q.dtype == torch.bfloat16,
        LOCAL=use_local, HAS_GLOBAL=flags is not None,
        num_warps=num_warps or warps, num_stages=num_stages or stages,
    )
    return out


def block_sparse_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_indices: torch.Tensor,
    *,
    block_q: int = 64,
    block_k: int = 64,
    scale: float | None = None,
    check_indices: bool = True,
    num_warps: int | None = None,
    num_stages: int | None = None,
    window: int | None = None,
    sink: int = 0,
    global_positions: GlobalPositions = None,
) -> torch.Tensor:
    """Block-sparse causal attention with the Triton kernel.

    q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads, kv_len, head_dim);
    block_indices: (batch, heads or kv_heads, ceil(q_len / block_q), max_blocks), rows sorted
    ascending, -1 padded (see :mod:`sparsa.ops.block_sparse.indices`).
    ``check_indices=False`` skips the index validation (it reads the indices back to the host).
    ``window``/``sink``/``global_positions``: optional element mask inside the listed blocks,
    as in :func:`~sparsa.ops.block_sparse.reference.block_sparse_attention_ref`.
    Returns the output, shape and dtype of q; rows that see no key are zeros.
    """
    b, h, hkv, lq, lk, d = check_kernel_inputs(q, k, v)
    _check_block_sizes(block_q, block_k)
    if check_indices:
        check_block_indices(block_indices, batch=b, heads=h, kv_heads=hkv, q_len=lq, kv_len=lk,
                            block_q=block_q, block_k=block_k)
    if block_indices.device != q.device:
        raise ValueError(f"block_indices: device must match q ({q.device}), got {block_indices.device}")
    sm_scale = check_scale(scale, d)
    local = LocalMask.build(window, sink, global_positions, lk)
    idx = block_indices.to(torch.int32).contiguous()
    if local.active:
        p0, p1 = query_block_positions(lq, lk, block_q, idx.device)
        idx, n_full, n_all = order_clean_first(idx, p0, p1, block_k, lk, local)
    else:
        n_full, n_all = block_counts(idx, lq, lk, block_q, block_k)
    return launch_block_sparse(q, k, v, idx, n_full, n_all, block_q=block_q, block_k=block_k, scale=sm_scale,
                               local=local, num_warps=num_warps, num_stages=num_stages)


def local_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int | None,
    sink: int = 0,
    global_positions: GlobalPositions = None,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Token-level local attention (window, sinks, global tokens) with the block-sparse kernel.

    Same pairs as :func:`~sparsa.ops.block_sparse.reference.local_attention_ref`. The key-block
    lists are built on q's device (:func:`~sparsa.ops.block_sparse.local.local_block_lists`),
    one list per query block shared by every batch row and head, so a KV head's query group
    is stacked in one program. q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads,
    kv_len, head_dim). Returns the output, shape and dtype of q.
    """
    b, h, hkv, lq, lk, d = check_kernel_inputs(q, k, v)
    _check_block_sizes(block_q, block_k)
    sm_scale = check_scale(scale, d)
    local = LocalMask.build(window, sink, global_positions, lk)
    idx, n_full, n_all = local_block_lists(local, lq, lk, block_q, block_k, q.device)
    nq = idx.shape[0]
    # one list for all: zero strides over batch and KV heads
    idx = idx[None, None].expand(b, hkv, nq, idx.shape[1])
    n_full = n_full[None, None].expand(b, hkv, nq)
    n_all = n_all[None, None].expand(b, hkv, nq)
    return launch_block_sparse(q, k, v, idx, n_full, n_all, block_q=block_q, block_k=block_k, scale=sm_scale,
                               local=local, num_warps=num_warps, num_stages=num_stages)


__all__ = ["BLOCK_SIZES", "HEAD_DIMS", "KERNEL_DTYPES", "block_counts", "block_sparse_attention_triton",
           "block_sparse_pairs", "check_kernel_inputs", "heads_per_program", "launch_block_sparse",
           "local_attention_triton"]

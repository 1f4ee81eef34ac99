"""Triton kernels of vertical-slash prefill attention (forward) and of its index conversion.

Conversion (:func:`slash_tiles_triton`): one program per (batch, head_x, group of 128 query
blocks) walks the head's diagonals (sorted by descending offset) once; each lane keeps one
query block's greedy state (covered-up-to position, tile count) and writes the start of a
new 64-key tile when a diagonal's key range is not yet covered. See
:mod:`sparsa.ops.vertical_slash.convert` for the rule and its torch spec.

Attention (:func:`vertical_slash_attention_triton`): one program per query block of 64 rows
and query head (or per group of heads stacked along M when the lists are shared by a KV
head's group, as in the block-sparse kernel). Pass 1 loops over the block's tiles (64 keys
starting anywhere), masking causally, masking out the vertical columns (pass 2 owns them)
and, with ``exact=True``, keeping only pairs whose offset ``p - c`` is a chosen diagonal (a
gather from a per-head uint8 table of offsets). Pass 2 gathers the head's sorted columns 64
at a time, up to the last column the block can see, masked causally. Online softmax in
float32 across both passes; rows that see no key output zeros.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._validation import check_scale
from ...backend import triton_interpreted
from ..block_sparse.triton import LOG2E, check_kernel_inputs, heads_per_program, last_dim_contiguous
from .convert import VS_BLOCK, VSLayout, prepare_vertical_slash
from .reference import check_vs_indices

CONVERT_LANES = 128


@triton.jit
def _slash_tiles_kernel(
    SL, NSL, TS, TC,
    stride_sb, stride_sh, stride_tb, stride_th, stride_tq, stride_cb, stride_ch,
    n_qblocks, q_len, kv_len, heads_x,
    LANES: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(1)
    b = (pid // heads_x).to(tl.int64)
    hx = (pid % heads_x).to(tl.int64)
    qb = tl.program_id(0) * LANES + tl.arange(0, LANES)
    q_ok = qb < n_qblocks
    p0 = kv_len - q_len + qb * BLOCK
    end = tl.minimum(p0 + BLOCK, kv_len)          # one past the block's last visible position
    covered = tl.zeros([LANES], dtype=tl.int32)
    count = tl.zeros([LANES], dtype=tl.int32)
    n_slash = tl.load(NSL + pid)          # slash_count is contiguous (B, Hx)
    sl_row = SL + b * stride_sb + hx * stride_sh
    ts_row = TS + b * stride_tb + hx * stride_th + qb.to(tl.int64) * stride_tq
    for i in range(0, n_slash):
        o = tl.load(sl_row + i)
        need = q_ok & (end - o > covered)
        start = tl.maximum(tl.maximum(p0 - o, 0), covered)
        tl.store(ts_row + count, start, mask=need)
        count += need.to(tl.int32)
        covered = tl.where(need, start + BLOCK, covered)
    tl.store(TC + b * stride_cb + hx * stride_ch + qb, count, mask=q_ok)


def slash_tiles_triton(slash: torch.Tensor, slash_count: torch.Tensor, q_len: int, kv_len: int,
                       block: int = VS_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of :func:`~sparsa.ops.vertical_slash.convert.slash_tiles_reference`.

    slash: (B, Hx, NS) int32 offsets sorted descending; slash_count: (B, Hx) int32.
    Returns (tile_start (B, Hx, NQ, max_tiles) int32, -1 padded; tile_count (B, Hx, NQ) int32).
    """
    b, hx, ns = slash.shape
    nq = (q_len + block - 1) // block
    width = max(1, min(ns, (kv_len + block - 1) // block))
    slash = slash.to(torch.int32).contiguous()
    slash_count = slash_count.to(torch.int32).contiguous()
    tile_start = torch.full((b, hx, nq, width), -1, dtype=torch.int32, device=slash.device)
    tile_count = torch.empty((b, hx, nq), dtype=torch.int32, device=slash.device)
    grid = (triton.cdiv(nq, CONVERT_LANES), b * hx)
    _slash_tiles_kernel[grid](
        slash, slash_count, tile_start, tile_count,
        slash.stride(0), slash.stride(1), tile_start.stride(0), tile_start.stride(1), tile_start.stride(2),
        tile_count.stride(0), tile_count.stride(1),
        nq, q_len, kv_len, hx, LANES=CONVERT_LANES, BLOCK=block, num_warps=4,
    )
    return tile_start, tile_count


@triton.jit
def _vs_fwd_kernel(
    Q, K, V, O, TS, TC, COLS, BC, DIAG, COLT,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_tb, stride_th, stride_tq,
    stride_cb, stride_ch,
    stride_lb, stride_lh,
    stride_xb, stride_xh,
    q_len, kv_len, n_qblocks, heads, qk_scale,
    GROUP: tl.constexpr, HX_DIV: tl.constexpr, HPP: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    EXACT: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
):
    BLOCK_M: tl.constexpr = HPP * BLOCK_Q
    qb = n_qblocks - 1 - tl.program_id(0)
    pid = tl.program_id(1)
    progs_per_batch = heads // HPP
    b = (pid // progs_per_batch).to(tl.int64)
    h0 = (pid % progs_per_batch) * HPP
    hkv = (h0 // GROUP).to(tl.int64)
    hx = (h0 // HX_DIV).to(tl.int64)

    r = tl.arange(0, BLOCK_M)
    row = qb * BLOCK_Q + (r % BLOCK_Q)
    head = (h0 + r // BLOCK_Q).to(tl.int64)
    d = tl.arange(0, HEAD_DIM)
    n = tl.arange(0, BLOCK_N)
    row_ok = row < q_len
    pos = kv_len - q_len + row

    q = tl.load(Q + b * stride_qb + head[:, None] * stride_qh + row[:, None] * stride_qm + d[None, :],
                mask=row_ok[:, None], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    k_base = K + b * stride_kb + hkv * stride_kh
    v_base = V + b * stride_vb + hkv * stride_vh
    ts_row = TS + b * stride_tb + hx * stride_th + qb * stride_tq
    cnt_off = b * stride_cb + hx * stride_ch + qb
    n_tiles = tl.load(TC + cnt_off)
    n_cols = tl.load(BC + cnt_off)
    cols_row = COLS + b * stride_lb + hx * stride_lh
    diag_row = DIAG + b * stride_xb + hx * stride_xh
    colt_row = COLT + b * stride_xb + hx * stride_xh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # pass 1: tiles of 64 keys covering the diagonals
    for i in range(0, n_tiles):
        start = tl.load(ts_row + i)
        kpos = start + n
        k_ok = kpos < kv_len
        k = tl.load(k_base + kpos[:, None] * stride_kn + d[None, :], mask=k_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        not_col = tl.load(colt_row + kpos, mask=k_ok, other=1) == 0
        visible = (kpos[None, :] <= pos[:, None]) & not_col[None, :]
        if EXACT:
            offset = tl.minimum(tl.maximum(pos[:, None] - kpos[None, :], 0), kv_len - 1)
            visible = visible & (tl.load(diag_row + offset) != 0)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + kpos[:, None] * stride_vn + d[None, :], mask=k_ok[:, None], other=0.0)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype).to(q.dtype), v.to(q.dtype), acc, input_precision=DOT_PRECISION)
        m_i = m_new

    # pass 2: the vertical columns this block can see, 64 at a time
    for j in range(0, n_cols, BLOCK_N):
        c_ok = j + n < n_cols
        cpos = tl.load(cols_row + j + n, mask=c_ok, other=0)
        k = tl.load(k_base + cpos[:, None] * stride_kn + d[None, :], mask=c_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        visible = (cpos[None, :] <= pos[:, None]) & c_ok[None, :]
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cpos[:, None] * stride_vn + d[None, :], mask=c_ok[:, None], other=0.0)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype).to(q.dtype), v.to(q.dtype), acc, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    o_ptrs = O + b * stride_ob + head[:, None] * stride_oh + row[:, None] * stride_om + d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None])


def vertical_slash_layout(q: torch.Tensor, k: torch.Tensor, vertical_indices: torch.Tensor,
                          slash_indices: torch.Tensor) -> VSLayout:
    """Validate the index lists against q/k and convert them on the device (Triton conversion)."""
    b, h, lq, _ = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    check_vs_indices("vertical_indices", vertical_indices, b, h, hkv)
    check_vs_indices("slash_indices", slash_indices, b, h, hkv)
    if vertical_indices.shape[1] != slash_indices.shape[1]:
        raise ValueError("slash_indices: head dimension must equal vertical_indices' "
                         f"({slash_indices.shape[1]} vs {vertical_indices.shape[1]})")
    for name, x in (("vertical_indices", vertical_indices), ("slash_indices", slash_indices)):
        if x.device != q.device:
            raise ValueError(f"{name}: device must match q ({q.device}), got {x.device}")
    return prepare_vertical_slash(vertical_indices, slash_indices, lq, lk, use_triton=True)


def vertical_slash_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    vertical_indices: torch.Tensor | None = None,
    slash_indices: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    exact: bool = True,
    layout: VSLayout | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Vertical-slash causal attention with the Triton kernels.

    q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads, kv_len, head_dim);
    vertical_indices: (batch, heads or kv_heads, n_vertical) key columns; slash_indices:
    (batch, heads or kv_heads, n_slash) diagonal offsets (query position - key position);
    -1 marks unused slots. ``layout``: an already converted :class:`VSLayout` (the indices are
    then not needed). ``exact=True`` attends exactly the columns and diagonals (as
    :func:`~sparsa.ops.vertical_slash.reference.vertical_slash_attention_ref`);
    ``exact=False`` attends every causal pair of the 64-key tiles too (MInference's superset,
    see :func:`~sparsa.ops.vertical_slash.convert.vertical_slash_superset_ref`).
    Returns the output, shape and dtype of q.
    """
    b, h, hkv, lq, lk, d = check_kernel_inputs(q, k, v)
    if layout is None:
        if vertical_indices is None or slash_indices is None:
            raise TypeError("vertical_indices, slash_indices: required when no layout is given")
        layout = vertical_slash_layout(q, k, vertical_indices, slash_indices)
    elif layout.q_len != lq or layout.kv_len != lk or layout.tile_count.shape[0] != b \
            or layout.tile_count.shape[1] not in (h, hkv):
        raise ValueError("layout: built for other shapes than q/k")
    if not isinstance(exact, bool):
        raise TypeError(f"exact: expected a bool, got {type(exact).__name__}")
    sm_scale = check_scale(scale, d)
    q, k, v = last_dim_contiguous(q), last_dim_contiguous(k), last_dim_contiguous(v)
    hx = layout.tile_count.shape[1]
    nq = layout.n_query_blocks
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    hpp = heads_per_program(h, hx, hkv, VS_BLOCK)
    ts, tc, cols, bc = layout.tile_start, layout.tile_count, layout.columns, layout.block_columns
    diag, colt = layout.diag_table, layout.column_table
    grid = (nq, b * (h // hpp))
    _vs_fwd_kernel[grid](
        q, k, v, out, ts, tc, cols, bc, diag, colt,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        ts.stride(0), ts.stride(1), ts.stride(2),
        tc.stride(0), tc.stride(1),
        cols.stride(0), cols.stride(1),
        diag.stride(0), diag.stride(1),
        lq, lk, nq, h, sm_scale * LOG2E,
        GROUP=h // hkv, HX_DIV=h // hx, HPP=hpp,
        BLOCK_Q=VS_BLOCK, BLOCK_N=VS_BLOCK, HEAD_DIM=d,
        EXACT=exact, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        DOT_F32=triton_interpreted() and q.dtype == torch.bfloat16,
        num_warps=num_warps or (8 if hpp * VS_BLOCK >= 128 else 4), num_stages=num_stages or 2,
    )
    return out


__all__ = ["slash_tiles_triton", "vertical_slash_attention_triton", "vertical_slash_layout"]

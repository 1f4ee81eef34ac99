"""Triton kernel of vertical-slash prefill attention (forward); the index conversion's kernel is
:mod:`sparsa.ops.vertical_slash.convert_triton`.

Attention (:func:`vertical_slash_attention_triton`): one program per query block of
``block_q`` rows (64 or 128) and query head (or per group of heads stacked along M when the
lists are shared by a KV head's group and ``block_q`` is 64, as in the block-sparse kernel).
Loop 1 runs the clean tiles with no mask; loop 2 the masked tiles: the vertical columns masked
out (pass 3 owns them) and the causal mask or, for tiles flagged by the conversion with
``exact=True``, only pairs whose offset ``p - c`` is a chosen diagonal (a 64-bit window of a
bit-packed offset table per row, then a shift and mask per element). Pass 3 gathers the head's
sorted columns 64 at a time up to the last one the block can see; the chunks wholly before
the block's first row run unmasked. Online softmax in float32 throughout; rows that see no
key output zeros.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._validation import check_scale
from ...backend import triton_interpreted
from .._shared.kernel_inputs import LOG2E, check_kernel_inputs, heads_per_program, last_dim_contiguous
from .._shared.tiles import group_tile_rows, softmax_tile_update, store_group_tile
from .convert import BLOCK_Q_CHOICES, VSLayout, prepare_vertical_slash
from .convert_triton import slash_tiles_triton
from .reference import check_vs_pair
from .runs import DIAG_PAD, GATHER_BIT, VS_TILE


@triton.jit
def _chosen_offsets(bits_row, rel, n, PAD: tl.constexpr, BLOCK_N: tl.constexpr):
    """(M, BLOCK_N) bool: whether offset ``rel[m] - n`` is chosen, from the packed table.

    ``rel``: (M,) int32 row position minus the tile's first key. The offsets a row meets in
    the tile are ``rel - BLOCK_N + 1 .. rel``: a 64-bit window of the table starting at bit
    ``PAD + rel - BLOCK_N + 1``, read as three 32-bit words and shifted into two halves
    (``lo``: the window's bits 0-31, ``hi``: bits 32-63); column ``n`` is window bit
    ``BLOCK_N - 1 - n``. Offsets below zero have no bit (causal).
    """
    tl.static_assert(BLOCK_N == 64)
    first = rel - (BLOCK_N - 1) + PAD
    word = bits_row + (first >> 5)
    sh = (first & 31).to(tl.uint32)
    inv = 31 - sh
    w0 = tl.load(word).to(tl.uint32, bitcast=True)
    w1 = tl.load(word + 1).to(tl.uint32, bitcast=True)
    w2 = tl.load(word + 2).to(tl.uint32, bitcast=True)
    # (w << 1) << inv is w << (32 - sh) without a shift by 32 when sh == 0
    lo = (w0 >> sh) | ((w1 << 1) << inv)
    hi = (w1 >> sh) | ((w2 << 1) << inv)
    half = tl.where(n[None, :] < 32, hi[:, None], lo[:, None])
    bit = ((31 - n) & 31).to(tl.uint32)
    return ((half >> bit[None, :]) & 1) != 0


@triton.jit
def _vs_fwd_kernel(
    Q, K, V, O, TILES, NCLEAN, NMASKED, COLS, BC, BCB, BITS, COLT,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_tb, stride_th, stride_tq,
    stride_cb, stride_ch,
    stride_lb, stride_lh,
    stride_db, stride_dh,
    stride_xb, stride_xh,
    q_len, kv_len, n_qblocks, heads, width, qk_scale,
    GROUP: tl.constexpr, HX_DIV: tl.constexpr, HPP: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    EXACT: tl.constexpr, GATHER: tl.constexpr, PAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
):
    BLOCK_M: tl.constexpr = HPP * BLOCK_Q
    qb, b, hkv, hx, row, head, row_ok, pos, q = group_tile_rows(
        Q, stride_qb, stride_qh, stride_qm, q_len, kv_len, n_qblocks, heads,
        GROUP, HX_DIV, HPP, BLOCK_Q, HEAD_DIM, DOT_F32)
    d = tl.arange(0, HEAD_DIM)
    n = tl.arange(0, BLOCK_N)
    k_base = K + b * stride_kb + hkv * stride_kh
    v_base = V + b * stride_vb + hkv * stride_vh
    t_row = TILES + b * stride_tb + hx * stride_th + qb * stride_tq
    cnt_off = b * stride_cb + hx * stride_ch + qb
    n_clean = tl.load(NCLEAN + cnt_off)
    n_masked = tl.load(NMASKED + cnt_off)
    n_cols = tl.load(BC + cnt_off)
    n_cols_below = tl.load(BCB + cnt_off)
    cols_row = COLS + b * stride_lb + hx * stride_lh
    bits_row = BITS + b * stride_db + hx * stride_dh
    colt_row = COLT + b * stride_xb + hx * stride_xh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # 1: clean tiles (before every row, no column inside, every offset chosen): no mask
    for i in range(0, n_clean):
        kpos = tl.load(t_row + i) + n
        k = tl.load(k_base + kpos[:, None] * stride_kn + d[None, :])
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        m_i, l_i, acc = softmax_tile_update(
            q, s, v_base + kpos[:, None] * stride_vn + d[None, :],
            None, m_i, l_i, acc, False, DOT_PRECISION)

    # 2: masked tiles: columns out; causal, or (flagged tiles) only the chosen offsets
    for i in range(width - n_masked, width):
        code = tl.load(t_row + i)
        start = code & (GATHER - 1)
        kpos = start + n
        k_ok = kpos < kv_len
        k = tl.load(k_base + kpos[:, None] * stride_kn + d[None, :], mask=k_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        not_col = tl.load(colt_row + kpos, mask=k_ok, other=1) == 0
        if EXACT:
            if code >= GATHER:
                visible = _chosen_offsets(bits_row, pos - start, n, PAD, BLOCK_N) & not_col[None, :]
            else:
                visible = (kpos[None, :] <= pos[:, None]) & not_col[None, :]
        else:
            visible = (kpos[None, :] <= pos[:, None]) & not_col[None, :]
        s = tl.where(visible, s, float("-inf"))
        m_i, l_i, acc = softmax_tile_update(
            q, s, v_base + kpos[:, None] * stride_vn + d[None, :],
            k_ok[:, None], m_i, l_i, acc, True, DOT_PRECISION)

    # 3: vertical columns, 64 at a time; whole chunks before the first row need no mask
    n_plain = (n_cols_below // BLOCK_N) * BLOCK_N
    for j in range(0, n_plain, BLOCK_N):
        cpos = tl.load(cols_row + j + n)
        k = tl.load(k_base + cpos[:, None] * stride_kn + d[None, :])
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        m_i, l_i, acc = softmax_tile_update(
            q, s, v_base + cpos[:, None] * stride_vn + d[None, :],
            None, m_i, l_i, acc, False, DOT_PRECISION)
    for j in range(n_plain, n_cols, BLOCK_N):
        c_ok = j + n < n_cols
        cpos = tl.load(cols_row + j + n, mask=c_ok, other=0)
        k = tl.load(k_base + cpos[:, None] * stride_kn + d[None, :], mask=c_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        visible = (cpos[None, :] <= pos[:, None]) & c_ok[None, :]
        s = tl.where(visible, s, float("-inf"))
        m_i, l_i, acc = softmax_tile_update(
            q, s, v_base + cpos[:, None] * stride_vn + d[None, :],
            c_ok[:, None], m_i, l_i, acc, True, DOT_PRECISION)

    store_group_tile(O, b, head, row, row_ok, acc, l_i, stride_ob, stride_oh, stride_om, HEAD_DIM)


def vertical_slash_layout(q: torch.Tensor, k: torch.Tensor, vertical_indices: torch.Tensor,
                          slash_indices: torch.Tensor, *, block_q: int | None = None,
                          exact: bool = True, check_indices: bool = True) -> VSLayout:
    """Validate the index lists against q/k and convert them on the device (Triton conversion).

    See :func:`~sparsa.ops.vertical_slash.convert.prepare_vertical_slash` for ``block_q``,
    ``exact`` and ``check_indices``. Returns the :class:`VSLayout` the attention kernel reads.
    """
    b, h, lq, _ = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    check_vs_pair(vertical_indices, slash_indices, b, h, hkv)
    for name, x in (("vertical_indices", vertical_indices), ("slash_indices", slash_indices)):
        if x.device != q.device:
            raise ValueError(f"{name}: device must match q ({q.device}), got {x.device}")
    return prepare_vertical_slash(vertical_indices, slash_indices, lq, lk, use_triton=True, block_q=block_q,
                                  exact=exact, check_indices=check_indices)


def vertical_slash_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    vertical_indices: torch.Tensor | None = None,
    slash_indices: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    exact: bool = True,
    block_q: int | None = None,
    layout: VSLayout | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Vertical-slash causal attention with the Triton kernels.

    q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads, kv_len, head_dim);
    vertical_indices: (batch, heads or kv_heads, n_vertical) key columns; slash_indices:
    (batch, heads or kv_heads, n_slash) diagonal offsets (query position - key position);
    -1 marks unused slots. ``exact=True`` attends exactly the columns and diagonals (as
    :func:`~sparsa.ops.vertical_slash.reference.vertical_slash_attention_ref`);
    ``exact=False`` attends every causal pair of the 64-key tiles too (MInference's superset,
    see :func:`~sparsa.ops.vertical_slash.convert.vertical_slash_superset_ref`).
    ``block_q``: query rows per program (64 or 128; default
    :func:`~sparsa.ops.vertical_slash.convert.default_block_q`). ``layout``: an already
    converted :class:`VSLayout` (then the indices are not needed, and ``exact``/``block_q``
    come from it). ``num_warps``/``num_stages`` override the launch configuration (default 4
    warps, 2 stages).
    Returns the output, shape and dtype of q.
    """
    b, h, hkv, lq, lk, d = check_kernel_inputs(q, k, v)
    if layout is None:
        if vertical_indices is None or slash_indices is None:
            raise TypeError("vertical_indices, slash_indices: required when no layout is given")
        layout = vertical_slash_layout(q, k, vertical_indices, slash_indices, block_q=block_q, exact=exact)
    elif layout.q_len != lq or layout.kv_len != lk or layout.tiles.shape[0] != b \
            or layout.tiles.shape[1] not in (h, hkv):
        raise ValueError("layout: built for other shapes than q/k")
    if layout.block_q not in BLOCK_Q_CHOICES:
        raise ValueError(f"block_q: must be one of {BLOCK_Q_CHOICES}, got {layout.block_q}")
    sm_scale = check_scale(scale, d)
    q, k, v = last_dim_contiguous(q), last_dim_contiguous(k), last_dim_contiguous(v)
    hx = layout.tiles.shape[1]
    nq = layout.n_query_blocks
    bq = layout.block_q
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    hpp = heads_per_program(h, hx, hkv, bq)
    tiles, cc, mc = layout.tiles, layout.clean_count, layout.masked_count
    cols, bc, bcb = layout.columns, layout.block_columns, layout.block_columns_below
    bits, colt = layout.diag_bits, layout.column_table
    grid = (nq, b * (h // hpp))
    _vs_fwd_kernel[grid](
        q, k, v, out, tiles, cc, mc, cols, bc, bcb, bits, colt,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        tiles.stride(0), tiles.stride(1), tiles.stride(2),
        cc.stride(0), cc.stride(1),
        cols.stride(0), cols.stride(1),
        bits.stride(0), bits.stride(1),
        colt.stride(0), colt.stride(1),
        lq, lk, nq, h, tiles.shape[-1], sm_scale * LOG2E,
        GROUP=h // hkv, HX_DIV=h // hx, HPP=hpp,
        BLOCK_Q=bq, BLOCK_N=VS_TILE, HEAD_DIM=d,
        EXACT=layout.exact, GATHER=GATHER_BIT, PAD=DIAG_PAD,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        DOT_F32=triton_interpreted() and q.dtype == torch.bfloat16,
        num_warps=num_warps or 4, num_stages=num_stages or 2,
    )
    return out


__all__ = ["slash_tiles_triton", "vertical_slash_attention_triton", "vertical_slash_layout"]

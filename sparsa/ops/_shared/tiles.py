"""Triton steps of a query tile shared by the prefill attention kernels (block-sparse and
vertical-slash): the grouped query tile, one online-softmax step, the normalised store."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def softmax_tile_update(q, s, v_ptrs, v_mask, m_i, l_i, acc, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One online-softmax step of a query tile over one key tile (log2 domain).

    ``s``: (M, N) scaled scores (``-inf`` where hidden when ``MASKED``); ``v_ptrs``/``v_mask``:
    the tile's values (the mask is used only when ``MASKED``). Returns (m_i, l_i, acc) updated.
    A masked row that has seen nothing yet keeps ``m_i = -inf`` without producing NaN.
    """
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if MASKED:
        v = tl.load(v_ptrs, mask=v_mask, other=0.0)
    else:
        v = tl.load(v_ptrs)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype).to(q.dtype), v.to(q.dtype), acc, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def group_tile_rows(Q, stride_qb, stride_qh, stride_qm, q_len, kv_len, n_qblocks, heads,
                    GROUP: tl.constexpr, HX_DIV: tl.constexpr, HPP: tl.constexpr, BLOCK_Q: tl.constexpr,
                    HEAD_DIM: tl.constexpr, DOT_F32: tl.constexpr):
    """The query tile of this program: HPP heads of one KV group x BLOCK_Q rows of query block
    ``qb`` (the heaviest, last blocks first). Returns (qb, b, hkv, hx, row, head, row_ok, pos, q):
    q (HPP * BLOCK_Q, HEAD_DIM), rows past q_len zero; pos = each row's key position."""
    qb = n_qblocks - 1 - tl.program_id(0)
    pid = tl.program_id(1)
    progs_per_batch = heads // HPP
    b = (pid // progs_per_batch).to(tl.int64)
    h0 = (pid % progs_per_batch) * HPP
    hkv = (h0 // GROUP).to(tl.int64)
    hx = (h0 // HX_DIV).to(tl.int64)
    r = tl.arange(0, HPP * BLOCK_Q)
    row = qb * BLOCK_Q + (r % BLOCK_Q)
    head = (h0 + r // BLOCK_Q).to(tl.int64)
    d = tl.arange(0, HEAD_DIM)
    row_ok = row < q_len
    pos = kv_len - q_len + row
    q = tl.load(Q + b * stride_qb + head[:, None] * stride_qh + row[:, None] * stride_qm + d[None, :],
                mask=row_ok[:, None], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    return qb, b, hkv, hx, row, head, row_ok, pos, q


@triton.jit
def store_group_tile(O, b, head, row, row_ok, acc, l_i, stride_ob, stride_oh, stride_om, HEAD_DIM: tl.constexpr):
    """Normalise the accumulated tile (rows with no key give 0) and store it in O."""
    d = tl.arange(0, HEAD_DIM)
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    o_ptrs = O + b * stride_ob + head[:, None] * stride_oh + row[:, None] * stride_om + d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None])


__all__ = ["group_tile_rows", "softmax_tile_update", "store_group_tile"]

"""Triton backward kernels of Native Sparse Attention (prefill).

The forward saves, per branch, the output (q's dtype) and the log2-domain row statistics
``lse2``; the backward recomputes probabilities from them (FlashAttention-2 style) with
float32 accumulation everywhere. With ``do`` the gradient of the mixed output and ``g_b`` a
branch's gate, the branch sees ``do_b = g_b * do``, and:

* gates: ``dg_b = rowsum(do * o_b)``; ``delta_b = rowsum(do_b * o_b) = g_b * dg_b``
  (:func:`preprocess`, one pass over do and the three outputs);
* compression and window (:func:`band_dq`, :func:`band_dkdv`): dQ programs walk key tiles
  for a tile of queries (a KV group's heads stacked); dK/dV programs walk the query tiles that
  see a key tile, a group's heads accumulating in registers. A compressed key is seen by every
  later query, so that range is cut into chunks of :data:`Q_CHUNK` queries whose programs add
  their float32 results atomically (a handful per key tile); window tiles need no split;
* selection: dQ (:func:`selection_dq`) walks each query's selected blocks like the forward.
  dK/dV (:func:`selection_dkdv`) inverts the block lists (:func:`inverted_index`): for every
  (batch, KV head, block) the sorted list of queries that chose it, cut into segments of at
  most ``segment`` queries. A program takes one segment; a block chosen by few queries is
  one segment and its program stores its float32 result, only the blocks that many queries
  chose (the forced first and local blocks) are split and add their segments atomically.

dQ accumulates the three branches into one float32 buffer (the kernels run in sequence and
add to it); dK/dV of the selection and window branches share one float32 buffer when they
read the same keys.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_fwd import (LAUNCH, LOG2E, _pow2, _selection_rows, _union_lists, _union_next, dot_flags,
                         selection_tile, tile_rows)

MODE_CMP = 0
MODE_WIN = 1
SEGMENT = 256  # queries per selection dK/dV program; longer lists are split
Q_CHUNK = 2048  # queries per compression dK/dV program (a key tile's range is split beyond)


@triton.jit
def _preprocess_kernel(
    DO, OC, OS, OW, GATES, DG, DELTA,
    sdb, sdh, sdt, sob, soh, sot, sgb, sgh, sgt, sgc, s_br, s_b, s_h,
    q_len, heads,
    BT: tl.constexpr, D: tl.constexpr, HAS_WIN: tl.constexpr,
):
    tb = tl.program_id(0)
    pid = tl.program_id(1)
    b = (pid // heads).to(tl.int64)
    h = (pid % heads).to(tl.int64)
    t = tb * BT + tl.arange(0, BT)
    ok = t < q_len
    t64 = t.to(tl.int64)
    d = tl.arange(0, D)
    do = tl.load(DO + b * sdb + h * sdh + t64[:, None] * sdt + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    o_off = b * sob + h * soh + t64[:, None] * sot + d[None, :]
    g_ptr = GATES + b * sgb + h * sgh + t64 * sgt
    st_off = b * s_b + h * s_h + t64
    for br in tl.static_range(3):
        if br == 0:
            o = tl.load(OC + o_off, mask=ok[:, None], other=0.0).to(tl.float32)
        elif br == 1:
            o = tl.load(OS + o_off, mask=ok[:, None], other=0.0).to(tl.float32)
        else:
            if HAS_WIN:
                o = tl.load(OW + o_off, mask=ok[:, None], other=0.0).to(tl.float32)
            else:
                o = tl.zeros([BT, D], dtype=tl.float32)
        dg = tl.sum(do * o, 1)
        gate = tl.load(g_ptr + br * sgc, mask=ok, other=0.0).to(tl.float32)
        tl.store(DG + br * s_br + st_off, dg, mask=ok)
        tl.store(DELTA + br * s_br + st_off, gate * dg, mask=ok)


@triton.jit
def _visible(pos, kk, kv_bound, window, MODE: tl.constexpr, STRIDE: tl.constexpr, CBLOCK: tl.constexpr):
    """Visibility of key kk to the row at pos (compressed token kk ends at or before pos / key kk
    in the window), broadcast: pass pos[:, None], kk[None, :] for a (rows, keys) tile and
    pos[None, :], kk[:, None] for a key-major one."""
    if MODE == 0:
        return (kk * STRIDE + (CBLOCK - 1) <= pos) & (kk < kv_bound)
    else:
        diff = pos - kk
        return (diff >= 0) & (diff < window)


@triton.jit
def _dkdv_step(k, v, q, do, lse, delta, vis_t, dk, dv, qk_scale, DT: tl.constexpr, PREC: tl.constexpr):
    """Add one query tile's share to a key tile's dK (before the softmax scale) and dV.

    Computed key-major (scores as keys x rows) so that the probabilities and their gradient
    feed the dK / dV products without a transpose of a register tile; q and dO are used
    transposed only as loaded operands. k, v: (keys, D); q, do: (rows, D); vis_t: (keys, rows).
    """
    s_t = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale
    p_t = tl.where(vis_t, tl.exp2(s_t - lse[None, :]), 0.0)
    dv = tl.dot(p_t.to(DT), do, dv, input_precision=PREC)
    dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)
    ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(DT), q, dk, input_precision=PREC)
    return dk, dv


@triton.jit
def _row_grads_in(Q, DO, LSE, DELTA, GATES, b, head, t, row_ok,
                  sqb, sqh, sqt, sdb, sdh, sdt, slb, slh, sgb, sgh, sgt,
                  BRANCH: tl.constexpr, D: tl.constexpr, DT: tl.constexpr):
    """What a backward tile needs of its query rows (head, t vectors of the same length): q, the
    branch's gated output gradient do, and the rows' lse and delta (inf / 0 past row_ok)."""
    d = tl.arange(0, D)
    t64 = t.to(tl.int64)
    q = tl.load(Q + b * sqb + head[:, None] * sqh + t64[:, None] * sqt + d[None, :],
                mask=row_ok[:, None], other=0.0).to(DT)
    gate = tl.load(GATES + b * sgb + head * sgh + t64 * sgt + BRANCH, mask=row_ok, other=0.0).to(tl.float32)
    do = tl.load(DO + b * sdb + head[:, None] * sdh + t64[:, None] * sdt + d[None, :],
                 mask=row_ok[:, None], other=0.0)
    do = (do.to(tl.float32) * gate[:, None]).to(DT)
    lse = tl.load(LSE + b * slb + head * slh + t, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + b * slb + head * slh + t, mask=row_ok, other=0.0)
    return q, do, lse, delta


@triton.jit
def _band_dq_kernel(
    Q, K, V, DO, LSE, DELTA, GATES, DQ,
    sqb, sqh, sqt, skb, skh, skn, svb, svh, svn, sdb, sdh, sdt, slb, slh, sgb, sgh, sgt,
    sxb, sxh, sxt,
    q_len, kv_len, n_keys, kv_heads, window, qk_scale, sm_scale,
    MODE: tl.constexpr, BRANCH: tl.constexpr, ACCUM: tl.constexpr,
    G: tl.constexpr, GP: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr, D: tl.constexpr,
    STRIDE: tl.constexpr, CBLOCK: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
):
    M: tl.constexpr = GP * BQ
    qt = tl.num_programs(0) - 1 - tl.program_id(0)
    pid = tl.program_id(1)
    b = (pid // kv_heads).to(tl.int64)
    kh = pid % kv_heads
    off = kv_len - q_len
    r = tl.arange(0, M)
    g = r // BQ
    t = qt * BQ + r % BQ
    row_ok = (g < G) & (t < q_len)
    head = (kh * G + g).to(tl.int64)
    t64 = t.to(tl.int64)
    pos = off + t
    d = tl.arange(0, D)
    n = tl.arange(0, BN)

    q, do, lse, delta = _row_grads_in(Q, DO, LSE, DELTA, GATES, b, head, t, row_ok, sqb, sqh, sqt, sdb, sdh, sdt,
                                      slb, slh, sgb, sgh, sgt, BRANCH, D, DT)
    k_base = K + b * skb + kh.to(tl.int64) * skh
    v_base = V + b * svb + kh.to(tl.int64) * svh

    p_first = off + qt * BQ
    p_last = off + tl.minimum(qt * BQ + BQ, q_len) - 1
    if MODE == 0:
        lo = 0
        hi = tl.where(p_last + 1 >= CBLOCK, (p_last + 1 - CBLOCK) // STRIDE + 1, 0)
        hi = tl.minimum(hi, n_keys)
    else:
        lo = (tl.maximum(p_first - window + 1, 0) // BN) * BN
        hi = p_last + 1
    dq = tl.zeros([M, D], dtype=tl.float32)
    for k0 in range(lo, hi, BN):
        kk = k0 + n
        k_ok = kk < hi
        k = tl.load(k_base + kk[:, None].to(tl.int64) * skn + d[None, :], mask=k_ok[:, None], other=0.0).to(DT)
        v = tl.load(v_base + kk[:, None].to(tl.int64) * svn + d[None, :], mask=k_ok[:, None], other=0.0).to(DT)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        vis = _visible(pos[:, None], kk[None, :], hi, window, MODE, STRIDE, CBLOCK) & row_ok[:, None]
        p = tl.where(vis, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(DT), k, dq, input_precision=PREC)
    dq = dq * sm_scale
    dq_ptrs = DQ + b * sxb + head[:, None] * sxh + t64[:, None] * sxt + d[None, :]
    if ACCUM:
        dq += tl.load(dq_ptrs, mask=row_ok[:, None], other=0.0)
    tl.store(dq_ptrs, dq, mask=row_ok[:, None])


@triton.jit
def _band_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, GATES, DK, DV,
    sqb, sqh, sqt, skb, skh, skn, svb, svh, svn, sdb, sdh, sdt, slb, slh, sgb, sgh, sgt,
    sxb, sxh, sxn,
    q_len, kv_len, n_keys, kv_heads, window, qk_scale, sm_scale, q_chunk,
    MODE: tl.constexpr, BRANCH: tl.constexpr, ACCUM: tl.constexpr, SPLIT: tl.constexpr,
    G: tl.constexpr, GP: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr, D: tl.constexpr,
    STRIDE: tl.constexpr, CBLOCK: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
):
    M: tl.constexpr = GP * BQ
    kb = tl.program_id(0)
    pid = tl.program_id(1)
    split = tl.program_id(2)
    b = (pid // kv_heads).to(tl.int64)
    kh = pid % kv_heads
    off = kv_len - q_len
    n = tl.arange(0, BN)
    kk = kb * BN + n
    k_ok = kk < n_keys
    d = tl.arange(0, D)
    k = tl.load(K + b * skb + kh.to(tl.int64) * skh + kk[:, None].to(tl.int64) * skn + d[None, :],
                mask=k_ok[:, None], other=0.0).to(DT)
    v = tl.load(V + b * svb + kh.to(tl.int64) * svh + kk[:, None].to(tl.int64) * svn + d[None, :],
                mask=k_ok[:, None], other=0.0).to(DT)
    if MODE == 0:
        t_lo = tl.maximum(kb * BN * STRIDE + (CBLOCK - 1) - off, 0)
        t_hi = q_len
    else:
        t_lo = tl.maximum(kb * BN - off, 0)
        t_hi = tl.minimum(kb * BN + BN + window - 1 - off, q_len)
    t_lo = (t_lo // BQ) * BQ + split * q_chunk       # this program's share of the queries
    t_hi = tl.minimum(t_hi, t_lo + q_chunk)

    r = tl.arange(0, M)
    g = r // BQ
    head = (kh * G + g).to(tl.int64)
    dk = tl.zeros([BN, D], dtype=tl.float32)
    dv = tl.zeros([BN, D], dtype=tl.float32)
    for t0 in range(t_lo, t_hi, BQ):
        t = t0 + r % BQ
        row_ok = (g < G) & (t < q_len)
        pos = off + t
        q, do, lse, delta = _row_grads_in(Q, DO, LSE, DELTA, GATES, b, head, t, row_ok, sqb, sqh, sqt, sdb, sdh,
                                          sdt, slb, slh, sgb, sgh, sgt, BRANCH, D, DT)
        vis_t = _visible(pos[None, :], kk[:, None], n_keys, window, MODE, STRIDE, CBLOCK) & row_ok[None, :]
        dk, dv = _dkdv_step(k, v, q, do, lse, delta, vis_t, dk, dv, qk_scale, DT, PREC)
    dk = dk * sm_scale
    x_off = b * sxb + kh.to(tl.int64) * sxh + kk[:, None].to(tl.int64) * sxn + d[None, :]
    if SPLIT:
        # several programs share a key tile (a few per tile: low contention); the buffers hold
        # zeros or the contribution of another branch
        ok = (k_ok & (n * 0 + t_lo < t_hi))[:, None] & (d[None, :] < D)
        tl.atomic_add(DK + x_off, dk, mask=ok)
        tl.atomic_add(DV + x_off, dv, mask=ok)
    else:
        if ACCUM:
            dk += tl.load(DK + x_off, mask=k_ok[:, None], other=0.0)
            dv += tl.load(DV + x_off, mask=k_ok[:, None], other=0.0)
        tl.store(DK + x_off, dk, mask=k_ok[:, None])
        tl.store(DV + x_off, dv, mask=k_ok[:, None])


@triton.jit
def _selection_dq_kernel(
    Q, K, V, IDX, DO, LSE, DELTA, GATES, DQ,
    sqb, sqh, sqt, skb, skh, skn, svb, svh, svn, sib, sih, sit, sdb, sdh, sdt, slb, slh, sgb, sgh, sgt,
    sxb, sxh, sxt,
    q_len, kv_len, kv_heads, qk_scale, sm_scale,
    ACCUM: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, BQ: tl.constexpr, M: tl.constexpr,
    SB: tl.constexpr, D: tl.constexpr, NSW: tl.constexpr, NSWP: tl.constexpr, DT: tl.constexpr,
    PREC: tl.constexpr,
):
    qt = tl.program_id(0)
    pid = tl.program_id(1)
    b = (pid // kv_heads).to(tl.int64)
    kh = pid % kv_heads
    # rows as in the forward: BQ queries x the group's heads, walking the union of their blocks
    qi, t, row_ok, head = _selection_rows(qt, kh, q_len, G, GP, BQ, M)
    pos = kv_len - q_len + t
    d = tl.arange(0, D)
    n = tl.arange(0, SB)
    q, do, lse, delta = _row_grads_in(Q, DO, LSE, DELTA, GATES, b, head, t, row_ok, sqb, sqh, sqt, sdb, sdh, sdt,
                                      slb, slh, sgb, sgh, sgt, 1, D, DT)
    k_base = K + b * skb + kh.to(tl.int64) * skh
    v_base = V + b * svb + kh.to(tl.int64) * svh
    vals, n_union = _union_lists(IDX + b * sib + kh.to(tl.int64) * sih, sit, qt, q_len, BQ, NSW, NSWP)

    dq = tl.zeros([M, D], dtype=tl.float32)
    for _ in range(0, n_union):
        blk, row_chose, vals = _union_next(vals, qi, BQ)
        kpos = blk * SB + n
        k_ok = kpos < kv_len
        k = tl.load(k_base + kpos[:, None].to(tl.int64) * skn + d[None, :], mask=k_ok[:, None], other=0.0).to(DT)
        v = tl.load(v_base + kpos[:, None].to(tl.int64) * svn + d[None, :], mask=k_ok[:, None], other=0.0).to(DT)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        vis = row_chose[:, None] & (kpos[None, :] <= pos[:, None]) & row_ok[:, None]
        p = tl.where(vis, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(DT), k, dq, input_precision=PREC)
    dq = dq * sm_scale
    dq_ptrs = DQ + b * sxb + head[:, None] * sxh + t[:, None].to(tl.int64) * sxt + d[None, :]
    if ACCUM:
        dq += tl.load(dq_ptrs, mask=row_ok[:, None], other=0.0)
    tl.store(dq_ptrs, dq, mask=row_ok[:, None])


@triton.jit
def _selection_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, GATES, DK, DV, SEG_BH, SEG_J, SEG_ST, SEG_EN, SEG_ONE, TLIST,
    sqb, sqh, sqt, skb, skh, skn, svb, svh, svn, sdb, sdh, sdt, slb, slh, sgb, sgh, sgt,
    sxb, sxh, sxn,
    q_len, kv_len, kv_heads, qk_scale, sm_scale,
    G: tl.constexpr, GP: tl.constexpr, BQ: tl.constexpr, SB: tl.constexpr, D: tl.constexpr,
    DT: tl.constexpr, PREC: tl.constexpr,
):
    M: tl.constexpr = GP * BQ
    sg = tl.program_id(0)
    bh = tl.load(SEG_BH + sg)
    blk = tl.load(SEG_J + sg)
    st = tl.load(SEG_ST + sg)
    en = tl.load(SEG_EN + sg)
    one = tl.load(SEG_ONE + sg)
    b = (bh // kv_heads).to(tl.int64)
    kh = bh % kv_heads
    off = kv_len - q_len
    n = tl.arange(0, SB)
    d = tl.arange(0, D)
    kpos = blk * SB + n
    k_ok = kpos < kv_len
    k = tl.load(K + b * skb + kh.to(tl.int64) * skh + kpos[:, None].to(tl.int64) * skn + d[None, :],
                mask=k_ok[:, None], other=0.0).to(DT)
    v = tl.load(V + b * svb + kh.to(tl.int64) * svh + kpos[:, None].to(tl.int64) * svn + d[None, :],
                mask=k_ok[:, None], other=0.0).to(DT)
    r = tl.arange(0, M)
    g = r // BQ
    head = (kh * G + g).to(tl.int64)
    dk = tl.zeros([SB, D], dtype=tl.float32)
    dv = tl.zeros([SB, D], dtype=tl.float32)
    for e0 in range(st, en, BQ):
        e = e0 + r % BQ
        e_ok = e < en
        row_ok = (g < G) & e_ok
        t = tl.load(TLIST + e, mask=e_ok, other=0)
        pos = off + t
        q, do, lse, delta = _row_grads_in(Q, DO, LSE, DELTA, GATES, b, head, t, row_ok, sqb, sqh, sqt, sdb, sdh,
                                          sdt, slb, slh, sgb, sgh, sgt, 1, D, DT)
        vis_t = (kpos[:, None] <= pos[None, :]) & row_ok[None, :]
        dk, dv = _dkdv_step(k, v, q, do, lse, delta, vis_t, dk, dv, qk_scale, DT, PREC)
    dk = dk * sm_scale
    x_off = b * sxb + kh.to(tl.int64) * sxh + kpos[:, None].to(tl.int64) * sxn + d[None, :]
    ok = (k_ok & (n * 0 + en > st))[:, None] & (d[None, :] < D)  # scalar test widened first
    if one != 0:
        tl.store(DK + x_off, dk, mask=ok)
        tl.store(DV + x_off, dv, mask=ok)
    else:
        tl.atomic_add(DK + x_off, dk, mask=ok)
        tl.atomic_add(DV + x_off, dv, mask=ok)


# ----------------------------------------------------------------------------- launchers

def preprocess(do: torch.Tensor, o_cmp: torch.Tensor, o_slc: torch.Tensor, o_win: torch.Tensor | None,
               gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dg, delta), both (3, B, H, T) float32: rowsum(do * o_b) and g_b times it.

    do: (B, H, T, D), last dim contiguous; o_*: contiguous like do (o_win None = zeros)."""
    b, h, lq, d = do.shape
    dg = torch.empty(3, b, h, lq, device=do.device, dtype=torch.float32)
    delta = torch.empty_like(dg)
    bt = 64
    ow = o_slc if o_win is None else o_win
    _preprocess_kernel[(triton.cdiv(lq, bt), b * h)](
        do, o_cmp, o_slc, ow, gates, dg, delta,
        do.stride(0), do.stride(1), do.stride(2), o_cmp.stride(0), o_cmp.stride(1), o_cmp.stride(2),
        gates.stride(0), gates.stride(1), gates.stride(2), gates.stride(3),
        dg.stride(0), dg.stride(1), dg.stride(2), lq, h,
        BT=bt, D=d, HAS_WIN=o_win is not None, num_warps=4,
    )
    return dg, delta


def _common(q, k, v, do, lse, gates):
    return (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
            lse.stride(0), lse.stride(1), gates.stride(0), gates.stride(1), gates.stride(2))


def band_dq(q, k, v, do, lse, delta, gates, dq, *, mode: int, branch: int, accumulate: bool, kv_len: int,
            window: int, cfg, scale: float, interpreted: bool) -> None:
    """Add (or write) the dQ of the compression (mode 0, k/v compressed) or window (mode 1) branch
    into ``dq`` (B, H, T, D) float32. lse, delta: (B, H, T) float32 of that branch."""
    b, h, lq, d = q.shape
    hkv, n_keys = k.shape[1], k.shape[2]
    group = h // hkv
    rows, warps, stages, bn = LAUNCH["band_dq"]
    gp, bq = tile_rows(group, rows)
    dt, prec = dot_flags(q, interpreted)
    _band_dq_kernel[(triton.cdiv(lq, bq), b * hkv)](
        q, k, v, do, lse, delta, gates, dq, *_common(q, k, v, do, lse, gates),
        dq.stride(0), dq.stride(1), dq.stride(2),
        lq, kv_len, n_keys, hkv, window, scale * LOG2E, scale,
        MODE=mode, BRANCH=branch, ACCUM=accumulate, G=group, GP=gp, BQ=bq, BN=bn, D=d,
        STRIDE=cfg.stride, CBLOCK=cfg.block, DT=dt, PREC=prec,
        num_warps=warps, num_stages=stages,
    )


def band_dkdv(q, k, v, do, lse, delta, gates, dk, dv, *, mode: int, branch: int, accumulate: bool, kv_len: int,
              window: int, cfg, scale: float, interpreted: bool) -> None:
    """Write (or add) dK, dV of the compression (mode 0) or window (mode 1) branch into the
    float32 buffers dk, dv shaped like k.

    Compression key tiles are seen by all later queries: their query range is cut into chunks
    of :data:`Q_CHUNK` handled by separate programs, which add their results atomically (a
    handful per tile), so with more than one chunk ``dk``/``dv`` must hold zeros or the sum
    to add to, whatever ``accumulate`` says."""
    b, h, lq, d = q.shape
    hkv, n_keys = k.shape[1], k.shape[2]
    if n_keys == 0:
        return
    group = h // hkv
    rows, warps, stages, bn = LAUNCH["band_dkdv"]
    gp, bq = tile_rows(group, rows)
    # a compressed key tile is seen by every later query: split that range over programs
    chunk = max(bq, (Q_CHUNK // bq) * bq) if mode == MODE_CMP else lq + bq
    n_split = triton.cdiv(lq, chunk)
    dt, prec = dot_flags(q, interpreted)
    _band_dkdv_kernel[(triton.cdiv(n_keys, bn), b * hkv, n_split)](
        q, k, v, do, lse, delta, gates, dk, dv, *_common(q, k, v, do, lse, gates),
        dk.stride(0), dk.stride(1), dk.stride(2),
        lq, kv_len, n_keys, hkv, window, scale * LOG2E, scale, chunk,
        MODE=mode, BRANCH=branch, ACCUM=accumulate, SPLIT=n_split > 1, G=group, GP=gp, BQ=bq, BN=bn, D=d,
        STRIDE=cfg.stride, CBLOCK=cfg.block, DT=dt, PREC=prec,
        num_warps=warps, num_stages=stages,
    )


def selection_dq(q, k, v, idx, do, lse, delta, gates, dq, *, sel_block: int, scale: float, accumulate: bool,
                 interpreted: bool) -> None:
    """Add (or write) the selection branch's dQ into ``dq`` (B, H, T, D) float32."""
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    group = h // hkv
    nsw = idx.shape[-1]
    rows, warps, stages = LAUNCH["slc_dq"]
    gp, bq = selection_tile(group, nsw, rows)
    dt, prec = dot_flags(q, interpreted)
    _selection_dq_kernel[(triton.cdiv(lq, bq), b * hkv)](
        q, k, v, idx, do, lse, delta, gates, dq,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), idx.stride(0), idx.stride(1), idx.stride(2),
        do.stride(0), do.stride(1), do.stride(2), lse.stride(0), lse.stride(1),
        gates.stride(0), gates.stride(1), gates.stride(2), dq.stride(0), dq.stride(1), dq.stride(2),
        lq, lk, hkv, scale * LOG2E, scale,
        ACCUM=accumulate, G=group, GP=gp, BQ=bq, M=max(16, gp * bq), SB=sel_block, D=d, NSW=nsw, NSWP=_pow2(nsw),
        DT=dt, PREC=prec, num_warps=warps, num_stages=stages,
    )


def inverted_index(idx: torch.Tensor, n_blocks: int, segment: int) -> tuple[torch.Tensor, ...]:
    """Which queries chose each block, as segments of at most ``segment`` queries.

    idx: (B, Hkv, T, NSW) int32 block lists (-1 = unused); n_blocks: selection blocks per row.
    Returns (seg_bh, seg_block, seg_start, seg_end, seg_single, t_list), int32: segment s covers
    ``t_list[seg_start[s]:seg_end[s]]`` (query rows, ascending) of block ``seg_block[s]`` of
    (batch * kv_heads + kv_head) ``seg_bh[s]``; ``seg_single`` is 1 where the block has one
    segment. The number of segments is a static upper bound (no host synchronisation):
    unused ones are empty (start == end).
    """
    b, hkv, lq, nsw = idx.shape
    bh = b * hkv
    n_keys = bh * n_blocks
    flat = idx.reshape(bh, lq * nsw).to(torch.int64)
    key = torch.where(flat >= 0, flat + torch.arange(bh, device=idx.device)[:, None] * n_blocks, n_keys).reshape(-1)
    key_sorted, order = torch.sort(key, stable=True)
    t_list = ((order % (lq * nsw)) // nsw).to(torch.int32)
    counts = torch.bincount(key, minlength=n_keys + 1)[:n_keys]
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    n_seg = (counts + segment - 1) // segment
    seg_end_cum = torch.cumsum(n_seg, 0)
    max_seg = n_keys + -(-flat.numel() // segment)
    s = torch.arange(max_seg, device=idx.device)
    owner = torch.searchsorted(seg_end_cum, s, right=True)
    valid = owner < n_keys
    owner = owner.clamp(max=n_keys - 1)
    local = s - (seg_end_cum[owner] - n_seg[owner])
    seg_start = starts[owner] + local * segment
    seg_end = torch.where(valid, torch.minimum(seg_start + segment, ends[owner]), seg_start)
    seg_start = torch.where(valid, seg_start, 0)
    seg_end = torch.where(valid, seg_end, 0)
    single = (n_seg[owner] == 1) & valid
    return (torch.div(owner, n_blocks, rounding_mode="floor").to(torch.int32), (owner % n_blocks).to(torch.int32),
            seg_start.to(torch.int32), seg_end.to(torch.int32), single.to(torch.int32), t_list)


def selection_dkdv(q, k, v, idx, do, lse, delta, gates, dk, dv, *, sel_block: int, scale: float,
                   interpreted: bool, segment: int | None = None) -> None:
    """Write the selection branch's dK, dV into the zero-initialised float32 buffers dk, dv.

    ``segment``: queries per program (default :data:`SEGMENT`)."""
    segment = SEGMENT if segment is None else segment
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    group = h // hkv
    rows, warps, stages = LAUNCH["slc_dkdv"]
    gp, bq = tile_rows(group, rows)
    n_blocks = -(-lk // sel_block)
    seg_bh, seg_j, seg_st, seg_en, seg_one, t_list = inverted_index(idx, n_blocks, segment)
    dt, prec = dot_flags(q, interpreted)
    _selection_dkdv_kernel[(seg_bh.numel(),)](
        q, k, v, do, lse, delta, gates, dk, dv, seg_bh, seg_j, seg_st, seg_en, seg_one, t_list,
        *_common(q, k, v, do, lse, gates), dk.stride(0), dk.stride(1), dk.stride(2),
        lq, lk, hkv, scale * LOG2E, scale,
        G=group, GP=gp, BQ=bq, SB=sel_block, D=d, DT=dt, PREC=prec,
        num_warps=warps, num_stages=stages,
    )


__all__ = ["band_dkdv", "band_dq", "inverted_index", "preprocess", "selection_dkdv", "selection_dq"]

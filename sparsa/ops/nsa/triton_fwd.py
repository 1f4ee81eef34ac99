"""Triton forward kernels of Native Sparse Attention (prefill): compression + top-k, window, selection.

Layout is SDPA's: q (batch, heads, q_len, head_dim), k/v (batch, kv_heads, kv_len, head_dim);
query row ``t`` sits at position ``kv_len - q_len + t``. Every kernel puts the query heads of
one KV group in the same tile, so each key/value tile is loaded once for the whole group.
Softmax statistics are kept in the log2 domain: ``lse2 = log2(sum(exp2(s * scale * log2(e))))``,
``+inf`` for a row that sees no key (its probabilities are then exactly zero).

* :func:`cmp_topk_fwd` — compression attention and block selection in one kernel. A program
  takes ``BQ`` consecutive queries of one KV group (``GP * BQ`` rows). Pass 1 walks the
  compressed tokens for the row statistics; pass 2 walks them again, accumulates the output
  with the now exact probabilities and turns each tile of probabilities into selection-block
  scores (overlap weights applied by a small matrix product, summed over the group's heads),
  which it merges into a running per-query top-k. Neither the probabilities nor the
  (q_len x blocks) score matrix ever reach memory.
* :func:`window_fwd` — sliding-window attention, same tiling.
* :func:`selection_fwd` — one program per (BQ consecutive queries, KV head): their rows (the
  group's heads for each query) walk the union of the queries' selected blocks, each block
  loaded once and masked for the queries that did not choose it. Its epilogue mixes the three
  branches with the gates.

Top-k keys are int64: the float32 bit pattern of the (non-negative) block score in the high
word, ``2**31 - 1 - block`` in the low word, so comparing keys orders by score and, on ties,
by lower block first, like the reference's stable sort; forced blocks score ``+inf``. The
running list is kept unsorted and updated by insertion (:func:`_topk_merge`): only as many
steps as a tile has candidates above the list's minimum, and never more than the list's length
(faster than sorting networks; timings in benchmarks/NOTES.md).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634

# Launch shapes (rows per program = a KV group's heads x queries; num_warps; num_stages; for the
# band kernels also keys per tile) of every prefill kernel: the fastest for head_dim 128 on Hopper
# at 64K (`sparsa bench nsa --sweep`; head_dim 64 uses them too; timings in benchmarks/NOTES.md).
LAUNCH: dict[str, tuple[int, ...]] = {
    "cmp": (64, 4, 3),         # compression + top-k
    "win": (64, 4, 3),         # sliding window forward
    "slc": (16, 4, 2),         # selection forward (rows: see selection_tile)
    "band_dq": (128, 8, 3, 64),    # compression / window dQ
    "band_dkdv": (32, 8, 3, 128),  # compression / window dK, dV
    "slc_dq": (16, 4, 2),      # selection dQ (rows as the selection forward)
    "slc_dkdv": (64, 4, 2),    # selection dK, dV (per segment of an inverted list)
}


# ----------------------------------------------------------------------------- shared jit helpers

@triton.jit
def _pack_keys(score, j, eligible, forced):
    """int64 top-k keys of block scores (see the module docstring); ineligible blocks get
    distinct keys below every list sentinel, so they are never taken."""
    bits = tl.maximum(score, 0.0).to(tl.int32, bitcast=True)
    bits = tl.where(forced, 0x7F800000, bits)
    key = (bits.to(tl.int64) << 32) | (2147483647 - j).to(tl.int64)
    return tl.where(eligible, key, -(1 << 40) - j.to(tl.int64))


@triton.jit
def _key_block(key):
    """Block index of a key >= 0."""
    return 2147483647 - key.to(tl.int32)  # the low word (truncation keeps it)


@triton.jit
def _topk_init(ROWS: tl.constexpr, NSP: tl.constexpr, NS: tl.constexpr):
    """An empty top list (ROWS, NSP): distinct negative sentinels in the NS live slots, int64 max
    in the padding slots (never the minimum, so never replaced)."""
    slot = tl.arange(0, NSP)[None, :]
    top = tl.where(slot < NS, -1 - slot.to(tl.int64), 9223372036854775807)
    return tl.broadcast_to(top, (ROWS, NSP))


@triton.jit
def _topk_merge(top, cand):
    """Merge candidate keys (ROWS, N) into an unsorted top list (ROWS, NSP) of distinct keys.

    Repeatedly moves each row's largest candidate into the slot of its smallest kept key while
    it is larger; the loop runs as many times as the row with the most candidates above its
    current minimum needs, and at most the list's length: candidates arrive in descending order,
    so an inserted one is never evicted by a later one and, once the list holds only inserted
    keys, no further candidate beats its minimum. Keys are distinct, so each step touches one
    slot per row.
    """
    n_ins = tl.max(tl.sum((cand > tl.min(top, 1)[:, None]).to(tl.int32), 1), 0)
    n_ins = tl.minimum(n_ins, top.shape[1])
    for _ in range(n_ins):
        c_max = tl.max(cand, 1)
        t_min = tl.min(top, 1)
        better = c_max > t_min
        top = tl.where((top == t_min[:, None]) & better[:, None], c_max[:, None], top)
        cand = tl.where(cand == c_max[:, None], -9223372036854775807, cand)
    return top


@triton.jit
def _sorted_indices(top, NSP: tl.constexpr, NS: tl.constexpr):
    """Block indices of a top list (ROWS, NSP) with NS live slots, ascending, -1 padded at the end."""
    slot = tl.arange(0, NSP)[None, :]
    idx = tl.where((top >= 0) & (slot < NS), _key_block(top), 2147483647)
    out = tl.full(idx.shape, -1, dtype=tl.int32)
    for s in tl.static_range(NSP):
        mn = tl.min(idx, 1)
        out = tl.where(slot == s, mn[:, None], out)
        idx = tl.where(idx == mn[:, None], 2147483647, idx)
    return tl.where(out == 2147483647, -1, out)


@triton.jit
def _selection_rows(qt, kh, q_len, G: tl.constexpr, GP: tl.constexpr, BQ: tl.constexpr, M: tl.constexpr):
    """Rows of a selection tile: BQ consecutive queries x the group's heads (padded to GP),
    query-major, then padding up to M >= 16 rows. Returns (qi the row's query in the tile, t its
    query index, row_ok, head int64)."""
    r = tl.arange(0, M)
    qi = r // GP
    t = qt * BQ + qi
    row_ok = (r % GP < G) & (qi < BQ) & (t < q_len)
    return qi, t, row_ok, (kh * G + r % GP).to(tl.int64)


@triton.jit
def _union_lists(idx_base, sit, qt, q_len, BQ: tl.constexpr, NSW: tl.constexpr, NSWP: tl.constexpr):
    """The block lists of queries qt*BQ .. qt*BQ + BQ - 1 (idx_base: their KV head's index rows):
    (vals (BQ, NSWP) with unused entries 2**31 - 1, the number of distinct blocks among them)."""
    qq = tl.arange(0, BQ)
    slots = tl.arange(0, NSWP)
    tq = qt * BQ + qq
    lists = tl.load(idx_base + tq[:, None].to(tl.int64) * sit + slots[None, :],
                    mask=(tq < q_len)[:, None] & (slots < NSW)[None, :], other=-1)
    vals = tl.where(lists >= 0, lists, 2147483647)
    flat = tl.reshape(vals, (BQ * NSWP,))
    z = tl.arange(0, BQ * NSWP)
    seen_before = tl.max(((flat[:, None] == flat[None, :]) & (z[None, :] < z[:, None])).to(tl.int32), 1)
    return vals, tl.sum(((flat < 2147483647) & (seen_before == 0)).to(tl.int32), 0)


@triton.jit
def _union_next(vals, qi, BQ: tl.constexpr):
    """Take the smallest block left in vals: (block, which tile rows chose it (rows of query
    qi), vals without it)."""
    blk = tl.min(tl.min(vals, 1), 0)
    chose = tl.max((vals == blk).to(tl.int32), 1)
    qq = tl.arange(0, BQ)
    rows = tl.sum(tl.where(qq[None, :] == qi[:, None], chose[None, :], 0), 1) > 0
    return blk, rows, tl.where(vals == blk, 2147483647, vals)


# ----------------------------------------------------------------------------- compression + top-k

@triton.jit
def _group_query_tile(Q, qt, sqb, sqh, sqt, q_len, kv_len, kv_heads,
                      G: tl.constexpr, GP: tl.constexpr, BQ: tl.constexpr, D: tl.constexpr, DT: tl.constexpr):
    """The query tile of query block ``qt`` for program axis 1 = (batch, KV head): the KV
    group's G heads (padded to GP) x BQ rows. Returns (b, kh, off, r, t, row_ok, head, pos, q):
    r the tile row, t its query index, pos its key position (off = kv_len - q_len), q (GP * BQ, D)
    in DT, zero on padding rows."""
    pid = tl.program_id(1)
    b = (pid // kv_heads).to(tl.int64)
    kh = pid % kv_heads
    off = kv_len - q_len
    r = tl.arange(0, GP * BQ)
    g = r // BQ
    t = qt * BQ + r % BQ
    row_ok = (g < G) & (t < q_len)
    head = (kh * G + g).to(tl.int64)
    pos = off + t
    d = tl.arange(0, D)
    q = tl.load(Q + b * sqb + head[:, None] * sqh + t[:, None].to(tl.int64) * sqt + d[None, :],
                mask=row_ok[:, None], other=0.0)
    return b, kh, off, r, t, row_ok, head, pos, q.to(DT)


@triton.jit
def _cmp_topk_fwd_kernel(
    Q, KC, VC, O, LSE, IDX, KEYS,
    sqb, sqh, sqt, skb, skh, skn, svb, svh, svn, sob, soh, sot, slb, slh, sib, sih, sit, syb, syt,
    q_len, kv_len, n_cmp, kv_heads, qk_scale, qt_base,
    G: tl.constexpr, GP: tl.constexpr, BQ: tl.constexpr, BC: tl.constexpr, D: tl.constexpr,
    STRIDE: tl.constexpr, CBLOCK: tl.constexpr, SEL: tl.constexpr, R: tl.constexpr, C: tl.constexpr,
    BS: tl.constexpr, NS: tl.constexpr, NSP: tl.constexpr, NSW: tl.constexpr,
    N_INIT: tl.constexpr, N_LOCAL: tl.constexpr,
    DT: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr, TOPK: tl.constexpr, KEYS_OUT: tl.constexpr,
):
    M: tl.constexpr = GP * BQ
    qt = qt_base + tl.num_programs(0) - 1 - tl.program_id(0)          # longest rows first
    b, kh, off, r, t, row_ok, head, pos, q = _group_query_tile(Q, qt, sqb, sqh, sqt, q_len, kv_len, kv_heads,
                                                               G, GP, BQ, D, DT)
    d = tl.arange(0, D)
    c = tl.arange(0, BC)
    kc_base = KC + b * skb + kh.to(tl.int64) * skh
    vc_base = VC + b * svb + kh.to(tl.int64) * svh

    p_last = off + tl.minimum(qt * BQ + BQ, q_len) - 1
    n_vis = tl.where(p_last + 1 >= CBLOCK, (p_last + 1 - CBLOCK) // STRIDE + 1, 0)
    n_vis = tl.minimum(n_vis, n_cmp)

    # pass 1: row statistics
    m_i = tl.full([M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([M], dtype=tl.float32)
    for i0 in range(0, n_vis, BC):
        i = i0 + c
        kc = tl.load(kc_base + i[:, None].to(tl.int64) * skn + d[None, :], mask=(i < n_cmp)[:, None], other=0.0)
        s = tl.dot(q, tl.trans(kc.to(DT)), input_precision=PREC) * qk_scale
        vis = (i[None, :] * STRIDE + (CBLOCK - 1) <= pos[:, None]) & (i[None, :] < n_cmp)
        s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2(m_i - m_use) + tl.sum(tl.exp2(s - m_use[:, None]), 1)
        m_i = m_new
    lse = tl.where(l_i > 0.0, m_i + tl.log2(tl.where(l_i > 0.0, l_i, 1.0)), float("inf"))

    # pass 2: output with exact probabilities, block scores, running top-k
    acc = tl.zeros([M, D], dtype=tl.float32)
    rq = tl.arange(0, BQ)
    pos_q = off + qt * BQ + rq
    cur = pos_q // SEL
    p_last_blk = p_last // SEL
    jl = tl.arange(0, BS)
    # overlap (in strides) of compressed token i0 + a with selection block j0 + b, i0 = j0 * R
    wa = c[:, None]
    w = tl.minimum(wa + C, (jl[None, :] + 1) * R) - tl.maximum(wa, jl[None, :] * R)
    w = tl.maximum(w, 0).to(tl.float32)
    w_spill = tl.maximum(c + C - BS * R, 0).to(tl.float32)  # into block j0 + BS (C <= R + 1)
    carry = tl.zeros([BQ], dtype=tl.float32)
    top = _topk_init(BQ, NSP, NS)
    for j0 in range(0, p_last_blk + 1, BS):
        i = j0 * R + c
        i_ok = i < n_cmp
        kc = tl.load(kc_base + i[:, None].to(tl.int64) * skn + d[None, :], mask=i_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(kc.to(DT)), input_precision=PREC) * qk_scale
        vis = (i[None, :] * STRIDE + (CBLOCK - 1) <= pos[:, None]) & i_ok[None, :] & row_ok[:, None]
        p = tl.where(vis, tl.exp2(s - lse[:, None]), 0.0)
        vc = tl.load(vc_base + i[:, None].to(tl.int64) * svn + d[None, :], mask=i_ok[:, None], other=0.0)
        acc = tl.dot(p.to(DT), vc.to(DT), acc, input_precision=PREC)

        if TOPK:
            if SPLIT:
                # float32 accuracy from bf16 matrix units: p = hi + mid + lo, w is exact in bf16
                wb = w.to(tl.bfloat16)
                p_hi = p.to(tl.bfloat16)
                rest = p - p_hi.to(tl.float32)
                p_mid = rest.to(tl.bfloat16)
                p_lo = (rest - p_mid.to(tl.float32)).to(tl.bfloat16)
                blk = tl.dot(p_hi, wb)
                blk = tl.dot(p_mid, wb, blk)
                blk = tl.dot(p_lo, wb, blk)
            else:
                blk = tl.dot(p, w, input_precision="ieee")
            score = tl.sum(tl.reshape(blk, (GP, BQ, BS)), axis=0)                       # (BQ, BS)
            spill = tl.sum(tl.reshape(tl.sum(p * w_spill[None, :], 1), (GP, BQ)), axis=0)
            score = score + tl.where(jl[None, :] == 0, carry[:, None], 0.0)
            carry = spill

            j = j0 + jl[None, :]
            eligible = j <= cur[:, None]
            forced = eligible & ((j < N_INIT) | (j > cur[:, None] - N_LOCAL))
            keys = _pack_keys(score, j, eligible, forced)
            if KEYS_OUT:  # the caller takes the top-k of the stored keys
                tl.store(KEYS + tl.program_id(1).to(tl.int64) * syb + ((qt - qt_base) * BQ + rq)[:, None] * syt + j,
                         keys, mask=(qt * BQ + rq < q_len)[:, None])
            else:
                top = _topk_merge(top, keys)

    o_ptrs = O + b * sob + head[:, None] * soh + t[:, None].to(tl.int64) * sot + d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + b * slb + head * slh + t, lse, mask=row_ok)

    if not KEYS_OUT:
        slot = tl.arange(0, NSP)[None, :]
        idx = _sorted_indices(top, NSP, NS)
        tq = qt * BQ + rq
        i_ptrs = IDX + b * sib + kh.to(tl.int64) * sih + tq[:, None].to(tl.int64) * sit + slot
        tl.store(i_ptrs, idx, mask=(tq[:, None] < q_len) & (slot < NSW))


# ----------------------------------------------------------------------------- sliding window

@triton.jit
def _window_fwd_kernel(
    Q, K, V, O, LSE,
    sqb, sqh, sqt, skb, skh, skn, svb, svh, svn, sob, soh, sot, slb, slh,
    q_len, kv_len, kv_heads, window, qk_scale,
    G: tl.constexpr, GP: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr, D: tl.constexpr,
    DT: tl.constexpr, PREC: tl.constexpr,
):
    M: tl.constexpr = GP * BQ
    qt = tl.program_id(0)
    b, kh, off, r, t, row_ok, head, pos, q = _group_query_tile(Q, qt, sqb, sqh, sqt, q_len, kv_len, kv_heads,
                                                               G, GP, BQ, D, DT)
    d = tl.arange(0, D)
    n = tl.arange(0, BN)
    k_base = K + b * skb + kh.to(tl.int64) * skh
    v_base = V + b * svb + kh.to(tl.int64) * svh

    p_first = off + qt * BQ
    p_last = off + tl.minimum(qt * BQ + BQ, q_len) - 1
    lo = tl.maximum(p_first - window + 1, 0)
    lo = (lo // BN) * BN
    m_i = tl.full([M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([M], dtype=tl.float32)
    acc = tl.zeros([M, D], dtype=tl.float32)
    for k0 in range(lo, p_last + 1, BN):
        kpos = k0 + n
        k_ok = kpos <= p_last
        k = tl.load(k_base + kpos[:, None].to(tl.int64) * skn + d[None, :], mask=k_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k.to(DT)), input_precision=PREC) * qk_scale
        diff = pos[:, None] - kpos[None, :]
        s = tl.where((diff >= 0) & (diff < window), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + kpos[:, None].to(tl.int64) * svn + d[None, :], mask=k_ok[:, None], other=0.0)
        acc = tl.dot(p.to(DT), v.to(DT), acc * alpha[:, None], input_precision=PREC)
        m_i = m_new
    ok = l_i > 0.0
    out = acc / tl.where(ok, l_i, 1.0)[:, None]
    lse = tl.where(ok, m_i + tl.log2(tl.where(ok, l_i, 1.0)), float("inf"))
    tl.store(O + b * sob + head[:, None] * soh + t[:, None].to(tl.int64) * sot + d[None, :],
             out.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + b * slb + head * slh + t, lse, mask=row_ok)


# ----------------------------------------------------------------------------- selection + gates

@triton.jit
def _selection_fwd_kernel(
    Q, K, V, IDX, O, LSE, OUT, OC, OW, GATES,
    sqb, sqh, sqt, skb, skh, skn, svb, svh, svn, sib, sih, sit, sob, soh, sot, slb, slh,
    sgb, sgh, sgt, sgc,
    q_len, kv_len, kv_heads, qk_scale,
    G: tl.constexpr, GP: tl.constexpr, BQ: tl.constexpr, M: tl.constexpr, SB: tl.constexpr, D: tl.constexpr,
    NSW: tl.constexpr, NSWP: tl.constexpr, HAS_WIN: tl.constexpr,
    DT: tl.constexpr, PREC: tl.constexpr,
):
    qt = tl.program_id(0)
    pid = tl.program_id(1)
    b = (pid // kv_heads).to(tl.int64)
    kh = pid % kv_heads
    off = kv_len - q_len

    qi, t, row_ok, head = _selection_rows(qt, kh, q_len, G, GP, BQ, M)
    pos = off + t
    t64 = t.to(tl.int64)
    d = tl.arange(0, D)
    n = tl.arange(0, SB)
    q = tl.load(Q + b * sqb + head[:, None] * sqh + t64[:, None] * sqt + d[None, :], mask=row_ok[:, None],
                other=0.0).to(DT)
    k_base = K + b * skb + kh.to(tl.int64) * skh
    v_base = V + b * svb + kh.to(tl.int64) * svh

    # the tile's queries' block lists; the loop walks their union in ascending order, each
    # block loaded once for every query that chose it (neighbouring queries mostly agree)
    vals, n_union = _union_lists(IDX + b * sib + kh.to(tl.int64) * sih, sit, qt, q_len, BQ, NSW, NSWP)

    m_i = tl.full([M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([M], dtype=tl.float32)
    acc = tl.zeros([M, D], dtype=tl.float32)
    for _ in range(0, n_union):
        blk, row_chose, vals = _union_next(vals, qi, BQ)
        kpos = blk * SB + n
        k_ok = kpos < kv_len
        k = tl.load(k_base + kpos[:, None].to(tl.int64) * skn + d[None, :], mask=k_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k.to(DT)), input_precision=PREC) * qk_scale
        s = tl.where(row_chose[:, None] & (kpos[None, :] <= pos[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + kpos[:, None].to(tl.int64) * svn + d[None, :], mask=k_ok[:, None], other=0.0)
        acc = tl.dot(p.to(DT), v.to(DT), acc * alpha[:, None], input_precision=PREC)
        m_i = m_new
    ok = l_i > 0.0
    o = acc / tl.where(ok, l_i, 1.0)[:, None]
    lse = tl.where(ok, m_i + tl.log2(tl.where(ok, l_i, 1.0)), float("inf"))
    o_off = b * sob + head[:, None] * soh + t64[:, None] * sot + d[None, :]
    tl.store(O + o_off, o.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + b * slb + head * slh + t64, lse, mask=row_ok)

    # gate mixing: out = g_cmp * o_cmp + g_slc * o_slc + g_win * o_win
    g_ptr = GATES + b * sgb + head * sgh + t64 * sgt
    g0 = tl.load(g_ptr, mask=row_ok, other=0.0).to(tl.float32)
    g1 = tl.load(g_ptr + sgc, mask=row_ok, other=0.0).to(tl.float32)
    oc = tl.load(OC + o_off, mask=row_ok[:, None], other=0.0).to(tl.float32)
    mixed = g0[:, None] * oc + g1[:, None] * o
    if HAS_WIN:
        g2 = tl.load(g_ptr + 2 * sgc, mask=row_ok, other=0.0).to(tl.float32)
        ow = tl.load(OW + o_off, mask=row_ok[:, None], other=0.0).to(tl.float32)
        mixed += g2[:, None] * ow
    tl.store(OUT + o_off, mixed.to(OUT.dtype.element_ty), mask=row_ok[:, None])


# ----------------------------------------------------------------------------- launchers

def _pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def selection_tile(group: int, nsw: int, rows: int) -> tuple[int, int]:
    """(GP, BQ) of a selection tile: the group padded to a power of two and about rows / GP
    queries, at least 1 and at most 64 / NSWP (the union count compares BQ * NSWP list entries
    pairwise). Several queries per tile pay where neighbouring queries choose mostly the same
    blocks (trained models); with unrelated choices (random inputs) the union is nearly the sum
    of the lists and every block is computed for all the tile's rows. The default of 16 rows is
    one query per tile for groups of 16 heads or more; a smaller group fills the 16 rows with
    consecutive queries rather than padding (on random inputs the same work as padding)."""
    gp = _pow2(group)
    return gp, max(1, min(rows // gp, 64 // _pow2(nsw)))


def tile_rows(group: int, rows: int = 128) -> tuple[int, int]:
    """(GP, BQ): the group padded to a power of two and the queries per tile, GP * BQ >= 16."""
    gp = _pow2(group)
    bq = max(1, rows // gp)
    while gp * bq < 16:
        bq *= 2
    return gp, bq


# Selection blocks per tile of the compression + top-k pass (at least; at least 64 compressed
# tokens too). A tile runs at most n_select insertion steps, so wider tiles take fewer steps per
# block but hold larger score tiles.
TOPK_TILE_BLOCKS = 16

# Where the compression pass's top-k is taken: in the kernel (a running list merged tile by
# tile), or, when False, by torch.topk over int64 keys the kernel stores for a chunk of query
# rows at a time (at most TOPK_KEYS_BYTES of keys per chunk).
TOPK_IN_KERNEL = True
TOPK_KEYS_BYTES = 1 << 29


def select_tile(r: int) -> tuple[int, int]:
    """(BS, BC): selection blocks and compressed tokens per tile of the top-k pass."""
    bs = max(TOPK_TILE_BLOCKS, 64 // r)
    return bs, bs * r


_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def dot_flags(x: torch.Tensor, interpreted: bool) -> tuple[tl.dtype, str]:
    """(DT, PREC): the dot operand type (float32 under the interpreter, which has no bf16
    matrix product, and for fp32 input; else x's dtype) and the dot precision."""
    f32 = interpreted or x.dtype == torch.float32
    return (tl.float32 if f32 else _TL_DTYPES[x.dtype]), ("ieee" if f32 else "tf32")


def cmp_topk_fwd(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, *, kv_len: int, cfg, scale: float,
                 interpreted: bool, topk: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compression branch and block selection.

    q: (B, H, T, D); k_cmp, v_cmp: (B, Hkv, n_cmp, D) in q's dtype (n_cmp may be 0).
    Returns (o_cmp (B, H, T, D) q's dtype, lse2 (B, H, T) float32, block indices
    (B, Hkv, T, min(n_select, n_sel_blocks)) int32, ascending, -1 padded).
    ``topk=False`` skips the block scores and the top-k (the indices are then meaningless): it
    measures what the fused selection costs.
    """
    b, h, lq, d = q.shape
    hkv, n_cmp = k_cmp.shape[1], k_cmp.shape[2]
    group = h // hkv
    rows, warps, stages = LAUNCH["cmp"]
    gp, bq = tile_rows(group, rows)
    r_ = cfg.sel_block // cfg.stride
    c_ = cfg.block // cfg.stride
    nsp = _pow2(cfg.n_select)
    bs, bc = select_tile(r_)
    nsw = min(cfg.n_select, cfg.n_sel_blocks(kv_len))
    if n_cmp == 0:  # nothing to read, but the kernel needs valid pointers
        k_cmp = q.new_zeros(b, hkv, 1, d)
        v_cmp = k_cmp
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(b, h, lq, device=q.device, dtype=torch.float32)
    idx = torch.empty(b, hkv, lq, nsw, device=q.device, dtype=torch.int32)
    dt, prec = dot_flags(q, interpreted)
    keys_out = topk and not TOPK_IN_KERNEL
    nselp = triton.cdiv(cfg.n_sel_blocks(kv_len), bs) * bs
    rows_chunk = triton.cdiv(lq, bq) * bq
    keys = idx  # unused pointer unless keys_out
    if keys_out:
        rows_chunk = min(rows_chunk, max(bq, TOPK_KEYS_BYTES // (8 * b * hkv * nselp) // bq * bq))
        keys = torch.empty(b * hkv, rows_chunk, nselp, device=q.device, dtype=torch.int64)
    for t0 in range(0, lq, rows_chunk):
        n_rows = min(rows_chunk, lq - t0)
        if keys_out:
            keys.fill_(-(1 << 62))  # blocks after a row's last one are never written: not eligible
        _cmp_topk_fwd_kernel[(triton.cdiv(n_rows, bq), b * hkv)](
            q, k_cmp, v_cmp, o, lse, idx, keys,
            q.stride(0), q.stride(1), q.stride(2), k_cmp.stride(0), k_cmp.stride(1), k_cmp.stride(2),
            v_cmp.stride(0), v_cmp.stride(1), v_cmp.stride(2), o.stride(0), o.stride(1), o.stride(2),
            lse.stride(0), lse.stride(1), idx.stride(0), idx.stride(1), idx.stride(2),
            keys.stride(0), keys.stride(1),
            lq, kv_len, n_cmp, hkv, scale * LOG2E, t0 // bq,
            G=group, GP=gp, BQ=bq, BC=bc, D=d, STRIDE=cfg.stride, CBLOCK=cfg.block, SEL=cfg.sel_block,
            R=r_, C=c_, BS=bs, NS=cfg.n_select, NSP=nsp, NSW=nsw,
            N_INIT=cfg.n_forced_init, N_LOCAL=cfg.n_forced_local,
            DT=dt, PREC=prec, SPLIT=dt != tl.float32, TOPK=topk, KEYS_OUT=keys_out,
            num_warps=warps, num_stages=stages,
        )
        if keys_out:
            idx[:, :, t0:t0 + n_rows] = _top_blocks(keys[:, :n_rows], cfg.n_select, nsw).view(b, hkv, n_rows, nsw)
    return o, lse, idx


def _top_blocks(keys: torch.Tensor, n_select: int, nsw: int) -> torch.Tensor:
    """Blocks of the ``n_select`` largest keys (..., n) of each row: ascending, -1 padded, int32,
    ``nsw`` columns. Keys < 0 (not eligible) are never chosen."""
    top = torch.topk(keys, min(n_select, keys.shape[-1]), dim=-1, sorted=False).values
    none = torch.iinfo(torch.int32).max
    blk = torch.where(top >= 0, 2147483647 - (top & 0xFFFFFFFF), none).sort(-1).values[..., :nsw]
    return torch.where(blk == none, -1, blk).to(torch.int32)


def window_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int, scale: float,
               interpreted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sliding-window branch: keys (p - window, p]. Returns (o (B, H, T, D), lse2 (B, H, T) float32)."""
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    group = h // hkv
    rows, warps, stages = LAUNCH["win"]
    gp, bq = tile_rows(group, rows)
    bn = 64
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(b, h, lq, device=q.device, dtype=torch.float32)
    dt, prec = dot_flags(q, interpreted)
    grid = (triton.cdiv(lq, bq), b * hkv)
    _window_fwd_kernel[grid](
        q, k, v, o, lse,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        lse.stride(0), lse.stride(1),
        lq, lk, hkv, window, scale * LOG2E,
        G=group, GP=gp, BQ=bq, BN=bn, D=d, DT=dt, PREC=prec,
        num_warps=warps, num_stages=stages,
    )
    return o, lse


def selection_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor,
                  o_cmp: torch.Tensor, o_win: torch.Tensor | None, *, sel_block: int, scale: float,
                  interpreted: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Selected-block branch and the gated mix.

    idx: (B, Hkv, T, NSW) int32 from :func:`cmp_topk_fwd`; gates (B, H, T, 3); o_cmp, o_win like q
    (o_win None: window branch off). Returns (out like q, o_slc like q, lse2 (B, H, T) float32).
    """
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    group = h // hkv
    rows, warps, stages = LAUNCH["slc"]
    nsw = idx.shape[-1]
    gp, bq = selection_tile(group, nsw, rows)
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    out = torch.empty_like(o)
    lse = torch.empty(b, h, lq, device=q.device, dtype=torch.float32)
    ow = o_cmp if o_win is None else o_win
    dt, prec = dot_flags(q, interpreted)
    grid = (triton.cdiv(lq, bq), b * hkv)
    _selection_fwd_kernel[grid](
        q, k, v, idx, o, lse, out, o_cmp, ow, gates,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), idx.stride(0), idx.stride(1), idx.stride(2),
        o.stride(0), o.stride(1), o.stride(2), lse.stride(0), lse.stride(1),
        gates.stride(0), gates.stride(1), gates.stride(2), gates.stride(3),
        lq, lk, hkv, scale * LOG2E,
        G=group, GP=gp, BQ=bq, M=max(16, gp * bq), SB=sel_block, D=d, NSW=nsw, NSWP=_pow2(nsw),
        HAS_WIN=o_win is not None,
        DT=dt, PREC=prec,
        num_warps=warps, num_stages=stages,
    )
    return out, o, lse


__all__ = ["LAUNCH", "LOG2E", "cmp_topk_fwd", "dot_flags", "select_tile", "selection_fwd", "selection_tile",
           "tile_rows", "window_fwd"]

"""Triton decode step of Native Sparse Attention: one query per sequence, KV loop split across programs.

Per (batch, KV head) the group's query heads share one tile (padded to 16 rows). Four launches:

1. ``_dec_cmp_kernel`` (chunks of compressed tokens, then window chunks x batch*kv_heads): each
   compressed chunk loops over sub-tiles (64 tokens by default) with an online softmax (max, sum,
   unnormalised output per chunk). Per sub-tile it also stores what each group of R = sel_block
   / stride tokens adds to the block scores (overlap-weighted probabilities relative to the
   sub-tile's row maximum, kept beside them): the top-k then reads R times fewer floats than
   the scores. The window branch does not depend on the selection, so its chunks run here too
   (fewer, longer ones when the batch alone fills the GPU).
2. ``_dec_topk_kernel`` (chunks of selection blocks x batch*kv_heads): merges the compressed
   partials into the exact log-sum-exp, rescales the group sums into block scores (summed over
   the group's heads) and keeps the chunk's top ``n_select`` keys (same int64 keys as the
   prefill kernel: ties go to the lower block, forced blocks first).
3. ``_dec_sparse_kernel`` (selection splits x batch*kv_heads): each program merges the chunk
   lists into the final top-k and attends its share of the chosen blocks.
4. ``_dec_combine_kernel`` (batch*heads): merges the partials of the three branches for one
   query head (each branch's partials loaded at once) and mixes them with the gates.

Only the compressed tokens, the selected blocks and the window are read from the cache. Four
launches beat the fused and merged variants tried (benchmarks/NOTES.md).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_fwd import LOG2E, _key_block, _pack_keys, _pow2, _sorted_indices, _topk_init, _topk_merge, dot_flags


# Every decode kernel names its scalar arguments that follow the cache length in
# do_not_specialize: Triton compiles a kernel variant per pattern of its int arguments (equal to
# 1, divisible by 16) unless told not to, so these would compile new variants while generating
# (a position divisible by 16 every 16 steps, and so on), each costing far more than the step.
@triton.jit(do_not_specialize=["n_cmp", "n_grp", "ngrp_pad", "nsub_all", "nc1", "pos", "window"])
def _dec_cmp_kernel(
    Q, KC, VC, KW, VW, TBUF, MSUB, WE, MPART, LPART, APART,
    sqb, sqh, skb, skh, skn, svb, svh, svn, swb, swh, swn, sxb, sxh, sxn,
    n_cmp, n_grp, ngrp_pad, nsub_all, nc1, pos, window, kv_heads, qk_scale,
    G: tl.constexpr, MP: tl.constexpr, D: tl.constexpr, R: tl.constexpr, NGS: tl.constexpr,
    NSUB: tl.constexpr, E: tl.constexpr, WCH: tl.constexpr, WT: tl.constexpr, DT: tl.constexpr,
    PREC: tl.constexpr,
):
    c = tl.program_id(0)
    n_parts = tl.num_programs(0)
    bh = tl.program_id(1)
    bh64 = bh.to(tl.int64)
    b = (bh // kv_heads).to(tl.int64)
    kh = (bh % kv_heads).to(tl.int64)
    r = tl.arange(0, MP)
    row_ok = r < G
    d = tl.arange(0, D)
    q = tl.load(Q + b * sqb + (kh * G + r)[:, None] * sqh + d[None, :], mask=row_ok[:, None], other=0.0).to(DT)
    m_i = tl.full([MP], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([MP], dtype=tl.float32)
    acc = tl.zeros([MP, D], dtype=tl.float32)
    if c < nc1:
        # a sub-tile holds NGS groups of R compressed tokens; group g (tokens [g*R, g*R + R))
        # starts inside selection block g
        col = tl.arange(0, NGS * R)
        kc_base = KC + b * skb + kh * skh
        vc_base = VC + b * svb + kh * svh
        for u in range(NSUB):
            sub = c * NSUB + u
            i = sub * NGS * R + col
            ok = i < n_cmp
            kc = tl.load(kc_base + i[:, None].to(tl.int64) * skn + d[None, :], mask=ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(kc.to(DT)), input_precision=PREC) * qk_scale
            s = tl.where(ok[None, :], s, float("-inf"))
            m_loc = tl.max(s, 1)
            m_loc_use = tl.where(m_loc == float("-inf"), 0.0, m_loc)
            p = tl.exp2(s - m_loc_use[:, None])
            # what each group adds to the scores of its own block (e = 0) and of the E - 1
            # blocks after it, relative to the sub-tile's row maximum (stored beside it)
            p3 = tl.reshape(p, (MP, NGS, R))
            gg = sub * NGS + tl.arange(0, NGS)
            for e in tl.static_range(E):
                we = tl.load(WE + e * R + tl.arange(0, R))
                te = tl.sum(p3 * we[None, None, :], 2)
                tl.store(TBUF + ((e * tl.num_programs(1) + bh64) * G + r[:, None]) * ngrp_pad + gg[None, :], te,
                         mask=row_ok[:, None])
            tl.store(MSUB + (bh64 * nsub_all + sub) * MP + r, m_loc)
            m_new = tl.maximum(m_i, m_loc)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_use)
            # m_loc, not m_loc_use: a sub-tile past the last token (m_loc = -inf, p = 0) gets
            # factor 0, not exp2(0 - m_use), which overflows for very negative running maxima
            beta = tl.exp2(m_loc - m_use)
            p = p * beta[:, None]
            l_i = l_i * alpha + tl.sum(p, 1)
            vc = tl.load(vc_base + i[:, None].to(tl.int64) * svn + d[None, :], mask=ok[:, None], other=0.0)
            acc = tl.dot(p.to(DT), vc.to(DT), acc * alpha[:, None], input_precision=PREC)
            m_i = m_new
    else:
        # the sliding window does not depend on the selection: its chunks run in this launch,
        # WCH keys each, in tiles of WT
        for w0 in tl.static_range(0, WCH, WT):
            kpos = pos - window + 1 + (c - nc1) * WCH + w0 + tl.arange(0, WT)
            k_ok = (kpos >= 0) & (kpos <= pos)
            m_i, l_i, acc = _attend(q, KW + b * swb + kh * swh, VW + b * sxb + kh * sxh, kpos, k_ok, swn, sxn,
                                    m_i, l_i, acc, d, qk_scale, DT, PREC)
    part = (bh64 * n_parts + c) * MP + r
    tl.store(MPART + part, m_i)
    tl.store(LPART + part, l_i)
    tl.store(APART + part[:, None] * D + d[None, :], acc)


@triton.jit(do_not_specialize=["n_grp", "ngrp_pad", "nsub_all", "n_parts1", "nc1", "pos"])
def _dec_topk_kernel(
    TBUF, MSUB, MPART, LPART, CAND,
    n_grp, ngrp_pad, nsub_all, n_parts1, nc1, pos,
    G: tl.constexpr, MP: tl.constexpr, NCP: tl.constexpr, BSD: tl.constexpr, NS: tl.constexpr, NSP: tl.constexpr,
    NGS: tl.constexpr, E: tl.constexpr, SEL: tl.constexpr, N_INIT: tl.constexpr, N_LOCAL: tl.constexpr,
):
    c2 = tl.program_id(0)
    nc2 = tl.num_programs(0)
    bh = tl.program_id(1).to(tl.int64)
    r = tl.arange(0, MP)
    row_ok = r < G
    cc = tl.arange(0, NCP)
    part = (bh * n_parts1 + cc[None, :]) * MP + r[:, None]
    c_ok = cc[None, :] < nc1
    m_p = tl.load(MPART + part, mask=c_ok, other=float("-inf"))
    l_p = tl.load(LPART + part, mask=c_ok, other=0.0)
    m = tl.max(m_p, 1)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    l = tl.sum(l_p * tl.exp2(m_p - m_use[:, None]), 1)
    lse = tl.where(l > 0.0, m_use + tl.log2(tl.where(l > 0.0, l, 1.0)), float("inf"))

    j = c2 * BSD + tl.arange(0, BSD)
    score = tl.zeros([BSD], dtype=tl.float32)
    for e in tl.static_range(E):
        g = j - e
        ok = row_ok[:, None] & ((g >= 0) & (g < n_grp))[None, :]
        te = tl.load(TBUF + ((e * tl.num_programs(1) + bh) * G + r[:, None]) * ngrp_pad + g[None, :], mask=ok,
                     other=0.0)
        ms = tl.load(MSUB + (bh * nsub_all + g[None, :] // NGS) * MP + r[:, None], mask=ok, other=float("-inf"))
        score += tl.sum(tl.where(ok, te * tl.exp2(ms - lse[:, None]), 0.0), 0)
    cur = pos // SEL
    eligible = j <= cur
    forced = eligible & ((j < N_INIT) | (j > cur - N_LOCAL))
    keys = tl.reshape(_pack_keys(score, j, eligible, forced), (1, BSD))
    top = _topk_merge(_topk_init(1, NSP, NS), keys)
    tl.store(CAND + (bh * nc2 + c2) * NSP + tl.arange(0, NSP)[None, :], top)


@triton.jit
def _attend(q, k_base, v_base, kpos, k_ok, skn, svn, m_i, l_i, acc, d, qk_scale,
            DT: tl.constexpr, PREC: tl.constexpr):
    """One online-softmax step of q (rows, D) over the keys at kpos (masked by k_ok)."""
    k = tl.load(k_base + kpos[:, None].to(tl.int64) * skn + d[None, :], mask=k_ok[:, None], other=0.0)
    s = tl.dot(q, tl.trans(k.to(DT)), input_precision=PREC) * qk_scale
    s = tl.where(k_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + kpos[:, None].to(tl.int64) * svn + d[None, :], mask=k_ok[:, None], other=0.0)
    acc = tl.dot(p.to(DT), v.to(DT), acc * alpha[:, None], input_precision=PREC)
    return m_new, l_i, acc


@triton.jit(do_not_specialize=["n_chunks2", "pos"])
def _dec_sparse_kernel(
    Q, K, V, CAND, IDX, MPART, LPART, APART,
    sqb, sqh, skb, skh, skn, svb, svh, svn, sib, sih,
    n_chunks2, pos, kv_heads, qk_scale,
    G: tl.constexpr, MP: tl.constexpr, D: tl.constexpr, SB: tl.constexpr, NS: tl.constexpr, NSP: tl.constexpr,
    NSW: tl.constexpr, NCP2: tl.constexpr, BPS: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
):
    sp = tl.program_id(0)
    nsp_all = tl.num_programs(0)
    bh = tl.program_id(1)
    bh64 = bh.to(tl.int64)
    b = (bh // kv_heads).to(tl.int64)
    kh = (bh % kv_heads).to(tl.int64)
    r = tl.arange(0, MP)
    row_ok = r < G
    d = tl.arange(0, D)
    q = tl.load(Q + b * sqb + (kh * G + r)[:, None] * sqh + d[None, :], mask=row_ok[:, None], other=0.0)
    q = q.to(DT)
    m_i = tl.full([MP], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([MP], dtype=tl.float32)
    acc = tl.zeros([MP, D], dtype=tl.float32)
    cc = tl.arange(0, NCP2 * NSP)[None, :]
    # chunk lists hold sentinels < 0 in unused slots (made distinct here) and int64 max in
    # padding slots (not loaded): neither beats a real key
    cand = tl.load(CAND + bh64 * n_chunks2 * NSP + cc, mask=(cc < n_chunks2 * NSP) & (cc % NSP < NS),
                   other=-(1 << 62))
    top2 = _topk_merge(_topk_init(1, NSP, NS), tl.where(cand < 0, -(1 << 62) - cc.to(tl.int64), cand))
    slot2 = tl.arange(0, NSP)[None, :]
    if sp == 0:
        tl.store(IDX + b * sib + kh * sih + slot2, _sorted_indices(top2, NSP, NS), mask=slot2 < NSW)
    slot = tl.arange(0, NSP)
    top = tl.reshape(top2, (NSP,))
    k_base = K + b * skb + kh * skh
    v_base = V + b * svb + kh * svh
    n = tl.arange(0, SB)
    for u in tl.static_range(BPS):
        s_id = sp * BPS + u
        key = tl.sum(tl.where(slot == s_id, top, 0), 0)
        if (key >= 0) & (s_id < NS):  # padding slots hold int64 max: excluded by s_id < NS
            kpos = _key_block(key) * SB + n
            m_i, l_i, acc = _attend(q, k_base, v_base, kpos, kpos <= pos, skn, svn, m_i, l_i, acc, d,
                                    qk_scale, DT, PREC)
    part = (bh64 * nsp_all + sp) * MP + r
    tl.store(MPART + part, m_i)
    tl.store(LPART + part, l_i)
    tl.store(APART + part[:, None] * D + d[None, :], acc)


@triton.jit
def _merge(MPART, LPART, APART, base, lo, hi, row, d, MP: tl.constexpr, D: tl.constexpr, NP: tl.constexpr):
    """Merge the partial softmax results lo..hi-1 (at most NP) of one query row in one step;
    returns its normalised output (D,)."""
    c = lo + tl.arange(0, NP)
    ok = c < hi
    part = (base + c) * MP + row
    m = tl.load(MPART + part, mask=ok, other=float("-inf"))
    l = tl.load(LPART + part, mask=ok, other=0.0)
    a = tl.load(APART + part[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
    mx = tl.max(m, 0)
    w = tl.exp2(m - tl.where(mx == float("-inf"), 0.0, mx))
    den = tl.sum(l * w, 0)
    acc = tl.sum(a * w[:, None], 0)
    return acc / tl.where(den > 0.0, den, 1.0)


@triton.jit(do_not_specialize=["nc1", "n_parts1", "n_parts2"])
def _dec_combine_kernel(
    M1, L1, A1, M2, L2, A2, GATES, OUT,
    sgb, sgh, sgc, sob, soh, nc1, n_parts1, n_parts2, kv_heads, heads,
    G: tl.constexpr, MP: tl.constexpr, D: tl.constexpr, NP1: tl.constexpr, NP2: tl.constexpr, NP3: tl.constexpr,
):
    pid = tl.program_id(0)                      # one (batch, query head)
    b = pid // heads
    h = pid % heads
    bh64 = (b * kv_heads + h // G).to(tl.int64)
    row = h % G
    d = tl.arange(0, D)
    o_cmp = _merge(M1, L1, A1, bh64 * n_parts1, 0, nc1, row, d, MP, D, NP1)
    o_win = _merge(M1, L1, A1, bh64 * n_parts1, nc1, n_parts1, row, d, MP, D, NP3)
    o_slc = _merge(M2, L2, A2, bh64 * n_parts2, 0, n_parts2, row, d, MP, D, NP2)
    g_ptr = GATES + b.to(tl.int64) * sgb + h.to(tl.int64) * sgh
    g0 = tl.load(g_ptr).to(tl.float32)
    g1 = tl.load(g_ptr + sgc).to(tl.float32)
    g2 = tl.load(g_ptr + 2 * sgc).to(tl.float32)
    out = g0 * o_cmp + g1 * o_slc + g2 * o_win
    tl.store(OUT + b.to(tl.int64) * sob + h.to(tl.int64) * soh + d, out.to(OUT.dtype.element_ty))


# Launch shapes, the fastest for head_dim 128 on Hopper at 64K, batch 1 and 16 (`sparsa bench nsa
# --sweep`; timings in benchmarks/NOTES.md): compressed launch (tokens per sub-tile, window keys per
# tile, num_warps); selection launch num_warps; the most sub-tiles one compressed program walks;
# top-k and combine launch num_warps. One warp for the last three: their merges are chains of small
# reductions, which then need no cross-warp steps.
DEC_CMP_LAUNCH = (64, 64, 4)
DEC_SPARSE_WARPS = 1
DEC_MAX_NSUB = 8
# partials of the compressed branch, at most: the merges take this fixed width (not the count's
# power of two), so the kernels do not recompile as the count grows with the cache
DEC_MAX_CMP_PARTS = 32
DEC_TOPK_WARPS = 1
DEC_COMBINE_WARPS = 1

_WEIGHTS: dict[tuple[int, int, str], torch.Tensor] = {}


def group_weights(r_: int, c_: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(E, r_) float32 weights: entry [e, t] is the overlap (in strides) of compressed token
    ``g*r_ + t`` with selection block ``g + e``; E = 1 + ceil((c_ - 1) / r_) (2 at most, as the
    kernels need c_ - 1 <= r_). r_ = sel_block / stride, c_ = block / stride. Cached per
    geometry and device, so a decode step makes no host-to-device copy."""
    key = (r_, c_, str(device))
    if key not in _WEIGHTS:
        n_e = 1 + -(-(c_ - 1) // r_)
        w = torch.zeros(n_e, r_, dtype=torch.float32)
        for e in range(n_e):
            for t in range(r_):
                delta = t - r_ * e           # token offset from the block's first key, in strides
                w[e, t] = max(0, min(delta + c_, r_) - max(delta, 0))
        _WEIGHTS[key] = w.to(device)
    return _WEIGHTS[key]


def nsa_decode_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, k_cmp: torch.Tensor,
                   v_cmp: torch.Tensor, k_win: torch.Tensor, v_win: torch.Tensor, *, cfg, scale: float,
                   interpreted: bool, target_programs: int = 264) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step (see the module docstring).

    q: (B, H, D); k, v, k_win, v_win: (B, Hkv, S, D), last dim contiguous; k_cmp, v_cmp:
    (B, Hkv, n_cmp, D) in q's dtype; gates (B, H, 3). ``target_programs``: the split sizes
    are chosen so that each launch has about this many programs (two waves of an H100).
    Returns (out (B, H, D) q's dtype, block indices (B, Hkv, min(n_select, n_sel)) int32).
    """
    b, h, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    n_cmp = k_cmp.shape[2]
    group = h // hkv
    mp = max(16, _pow2(group))
    bh = b * hkv
    dev = q.device
    pos = lk - 1
    dt, prec = dot_flags(q, interpreted)
    qk_scale = scale * LOG2E
    if n_cmp == 0:
        k_cmp = q.new_zeros(b, hkv, 1, d)
        v_cmp = k_cmp

    # launch 1: compressed tokens in sub-tiles of NGS groups (DEC_CMP_LAUNCH[0] tokens, or R if larger), NSUB
    # sub-tiles per program: enough programs to fill the GPU, at most DEC_MAX_CMP_PARTS partials to merge
    r_, c_ = cfg.sel_block // cfg.stride, cfg.block // cfg.stride
    we = group_weights(r_, c_, dev)
    n_e = we.shape[0]
    sub_tokens, wt, cmp_warps = DEC_CMP_LAUNCH
    ngs = max(1, sub_tokens // r_)
    n_grp = triton.cdiv(n_cmp, r_)
    need = triton.cdiv(max(n_grp, 1), ngs)
    nsub = 1
    while nsub < DEC_MAX_NSUB and bh * triton.cdiv(need, 2 * nsub) >= target_programs:
        nsub *= 2
    while triton.cdiv(need, nsub) > DEC_MAX_CMP_PARTS:
        nsub *= 2
    nc1 = triton.cdiv(need, nsub)
    nsub_all = nc1 * nsub
    ngrp_pad = nsub_all * ngs
    window = min(cfg.window, lk)
    # window chunks: longer while the window alone still gives a quarter of the target programs
    wch = wt
    while 2 * wch <= _pow2(window) and bh * triton.cdiv(window, 2 * wch) >= target_programs // 4:
        wch *= 2
    nwin = triton.cdiv(window, wch) if window > 0 else 0
    tbuf = torch.empty(n_e, bh, group, ngrp_pad, device=dev, dtype=torch.float32)
    msub = torch.empty(bh, nsub_all, mp, device=dev, dtype=torch.float32)
    m1 = torch.empty(bh, nc1 + nwin, mp, device=dev, dtype=torch.float32)
    l1 = torch.empty_like(m1)
    a1 = torch.empty(bh, nc1 + nwin, mp, d, device=dev, dtype=torch.float32)
    _dec_cmp_kernel[(nc1 + nwin, bh)](
        q, k_cmp, v_cmp, k_win, v_win, tbuf, msub, we, m1, l1, a1,
        q.stride(0), q.stride(1), k_cmp.stride(0), k_cmp.stride(1), k_cmp.stride(2),
        v_cmp.stride(0), v_cmp.stride(1), v_cmp.stride(2),
        k_win.stride(0), k_win.stride(1), k_win.stride(2), v_win.stride(0), v_win.stride(1), v_win.stride(2),
        n_cmp, n_grp, ngrp_pad, nsub_all, nc1, pos, window, hkv, qk_scale,
        G=group, MP=mp, D=d, R=r_, NGS=ngs, NSUB=nsub, E=n_e, WCH=wch, WT=wt, DT=dt, PREC=prec, num_warps=cmp_warps,
    )

    # launch 2: block scores and a top-k list per chunk of selection blocks
    n_sel = cfg.n_sel_blocks(lk)
    nsp = _pow2(cfg.n_select)
    bsd = max(64, min(256, _pow2(triton.cdiv(n_sel, 8))))   # at most ~8 candidate lists to merge
    nc2 = triton.cdiv(n_sel, bsd)
    cand = torch.empty(bh, nc2, nsp, device=dev, dtype=torch.int64)
    _dec_topk_kernel[(nc2, bh)](
        tbuf, msub, m1, l1, cand, n_grp, ngrp_pad, nsub_all, nc1 + nwin, nc1, pos,
        G=group, MP=mp, NCP=DEC_MAX_CMP_PARTS, BSD=bsd, NS=cfg.n_select, NSP=nsp, NGS=ngs, E=n_e, SEL=cfg.sel_block,
        N_INIT=cfg.n_forced_init, N_LOCAL=cfg.n_forced_local, num_warps=DEC_TOPK_WARPS,
    )

    # launch 3: the selected blocks, BPS per program
    bps = 2 if bh * triton.cdiv(cfg.n_select, 2) >= target_programs else 1
    nspl = triton.cdiv(cfg.n_select, bps)
    nsw = min(cfg.n_select, n_sel)
    idx = torch.empty(b, hkv, nsw, device=dev, dtype=torch.int32)
    m2 = torch.empty(bh, nspl, mp, device=dev, dtype=torch.float32)
    l2 = torch.empty_like(m2)
    a2 = torch.empty(bh, nspl, mp, d, device=dev, dtype=torch.float32)
    _dec_sparse_kernel[(nspl, bh)](
        q, k, v, cand, idx, m2, l2, a2,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        idx.stride(0), idx.stride(1), nc2, pos, hkv, qk_scale,
        G=group, MP=mp, D=d, SB=cfg.sel_block, NS=cfg.n_select, NSP=nsp, NSW=nsw, NCP2=_pow2(nc2), BPS=bps,
        DT=dt, PREC=prec, num_warps=DEC_SPARSE_WARPS,
    )

    # launch 4: merge the branches and mix them, one program per (batch, query head)
    out = torch.empty(b, h, d, device=dev, dtype=q.dtype)
    _dec_combine_kernel[(b * h,)](
        m1, l1, a1, m2, l2, a2, gates, out,
        gates.stride(0), gates.stride(1), gates.stride(2), out.stride(0), out.stride(1),
        nc1, nc1 + nwin, nspl, hkv, h,
        G=group, MP=mp, D=d, NP1=DEC_MAX_CMP_PARTS, NP2=_pow2(nspl), NP3=_pow2(max(nwin, 1)), num_warps=DEC_COMBINE_WARPS,
    )
    return out, idx


__all__ = ["nsa_decode_fwd"]

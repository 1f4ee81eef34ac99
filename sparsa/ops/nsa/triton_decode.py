"""Triton decode step of Native Sparse Attention: one query per sequence, KV loop split across programs.

Per (batch, KV head) the group's query heads share one tile (padded to 16 rows). Four launches:

1. ``_dec_cmp_kernel`` (chunks of compressed tokens x batch*kv_heads): raw scores of the chunk
   (kept for the top-k, float32 (batch*kv_heads, group, n_cmp)) and a partial softmax
   (max, sum, unnormalised output) per chunk.
2. ``_dec_topk_kernel`` (chunks of selection blocks x batch*kv_heads): merges the partial
   statistics into the exact log-sum-exp, turns the scores into block scores (each block sums
   the probabilities of the compressed tokens overlapping it, weighted by overlap / stride,
   over the group's heads) and keeps the chunk's top ``n_select`` keys (same int64 keys as the
   prefill kernel: ties go to the lower block, forced blocks first).
3. ``_dec_sparse_kernel`` (selection splits + window chunks x batch*kv_heads): each selection
   program merges the chunk lists into the final top-k and attends its share of the chosen
   blocks; each window program attends a chunk of the window; partial softmax out.
4. ``_dec_combine_kernel`` (batch*heads): merges the partials of each branch in one step
   (all partials of a query row loaded at once) and mixes them with the gates.

Only the compressed tokens, the selected blocks and the window are read from the cache.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_fwd import LOG2E, _key_block, _pack_keys, _pow2, _sorted_indices, _topk_init, _topk_merge, dot_flags


@triton.jit
def _dec_cmp_kernel(
    Q, KC, VC, SBUF, MPART, LPART, APART,
    sqb, sqh, skb, skh, skn, svb, svh, svn,
    n_cmp, kv_heads, qk_scale,
    G: tl.constexpr, MP: tl.constexpr, CH: tl.constexpr, D: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
):
    c = tl.program_id(0)
    nc = tl.num_programs(0)
    bh = tl.program_id(1)
    b = (bh // kv_heads).to(tl.int64)
    kh = (bh % kv_heads).to(tl.int64)
    r = tl.arange(0, MP)
    row_ok = r < G
    d = tl.arange(0, D)
    i = c * CH + tl.arange(0, CH)
    ok = i < n_cmp
    q = tl.load(Q + b * sqb + (kh * G + r)[:, None] * sqh + d[None, :], mask=row_ok[:, None], other=0.0).to(DT)
    kc = tl.load(KC + b * skb + kh * skh + i[:, None].to(tl.int64) * skn + d[None, :], mask=ok[:, None], other=0.0)
    s = tl.dot(q, tl.trans(kc.to(DT)), input_precision=PREC) * qk_scale
    s = tl.where(ok[None, :], s, float("-inf"))
    bh64 = bh.to(tl.int64)
    tl.store(SBUF + bh64 * G * n_cmp + r[:, None] * n_cmp + i[None, :], s, mask=row_ok[:, None] & ok[None, :])
    m = tl.max(s, 1)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    p = tl.exp2(s - m_use[:, None])
    vc = tl.load(VC + b * svb + kh * svh + i[:, None].to(tl.int64) * svn + d[None, :], mask=ok[:, None], other=0.0)
    acc = tl.dot(p.to(DT), vc.to(DT), input_precision=PREC)
    part = (bh64 * nc + c) * MP + r
    tl.store(MPART + part, m)
    tl.store(LPART + part, tl.sum(p, 1))
    tl.store(APART + part[:, None] * D + d[None, :], acc)


@triton.jit
def _dec_topk_kernel(
    SBUF, MPART, LPART, WTAPS, CAND,
    n_cmp, n_chunks, pos,
    G: tl.constexpr, MP: tl.constexpr, NCP: tl.constexpr, BSD: tl.constexpr, NS: tl.constexpr, NSP: tl.constexpr,
    R: tl.constexpr, C: tl.constexpr, NTAP: tl.constexpr, SEL: tl.constexpr,
    N_INIT: tl.constexpr, N_LOCAL: tl.constexpr,
):
    c2 = tl.program_id(0)
    nc2 = tl.num_programs(0)
    bh = tl.program_id(1).to(tl.int64)
    r = tl.arange(0, MP)
    row_ok = r < G
    cc = tl.arange(0, NCP)
    part = (bh * n_chunks + cc[None, :]) * MP + r[:, None]
    c_ok = cc[None, :] < n_chunks
    m_p = tl.load(MPART + part, mask=c_ok, other=float("-inf"))
    l_p = tl.load(LPART + part, mask=c_ok, other=0.0)
    m = tl.max(m_p, 1)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    l = tl.sum(l_p * tl.exp2(m_p - m_use[:, None]), 1)
    lse = tl.where(l > 0.0, m_use + tl.log2(tl.where(l > 0.0, l, 1.0)), float("inf"))

    j = c2 * BSD + tl.arange(0, BSD)
    score = tl.zeros([BSD], dtype=tl.float32)
    for tap in tl.static_range(NTAP):
        i = j * R - (C - 1) + tap
        ok = (i >= 0) & (i < n_cmp)
        w = tl.load(WTAPS + tap)
        sv = tl.load(SBUF + bh * G * n_cmp + r[:, None] * n_cmp + i[None, :], mask=row_ok[:, None] & ok[None, :],
                     other=float("-inf"))
        score += w * tl.sum(tl.exp2(sv - lse[:, None]), 0)
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


@triton.jit
def _dec_sparse_kernel(
    Q, K, V, KW, VW, CAND, IDX, MPART, LPART, APART,
    sqb, sqh, skb, skh, skn, svb, svh, svn, swb, swh, swn, sxb, sxh, sxn, sib, sih,
    n_chunks2, pos, window, kv_heads, qk_scale,
    G: tl.constexpr, MP: tl.constexpr, D: tl.constexpr, SB: tl.constexpr, NS: tl.constexpr, NSP: tl.constexpr,
    NSW: tl.constexpr, NCP2: tl.constexpr, BPS: tl.constexpr, NSPL: tl.constexpr, WCH: tl.constexpr,
    DT: tl.constexpr, PREC: tl.constexpr,
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
    if sp < NSPL:
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
    else:
        kw_base = KW + b * swb + kh * swh
        vw_base = VW + b * sxb + kh * sxh
        kpos = pos - window + 1 + (sp - NSPL) * WCH + tl.arange(0, WCH)
        k_ok = (kpos >= 0) & (kpos <= pos)
        m_i, l_i, acc = _attend(q, kw_base, vw_base, kpos, k_ok, swn, sxn, m_i, l_i, acc, d, qk_scale, DT, PREC)
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


@triton.jit
def _dec_combine_kernel(
    M1, L1, A1, M2, L2, A2, GATES, OUT,
    sgb, sgh, sgc, sob, soh,
    n_chunks1, n_parts2, kv_heads, heads,
    G: tl.constexpr, MP: tl.constexpr, D: tl.constexpr, NSPL: tl.constexpr,
    NP1: tl.constexpr, NP2: tl.constexpr, NP3: tl.constexpr,
):
    pid = tl.program_id(0)                      # one (batch, query head)
    b = pid // heads
    h = pid % heads
    bh64 = (b * kv_heads + h // G).to(tl.int64)
    row = h % G
    d = tl.arange(0, D)
    o_cmp = _merge(M1, L1, A1, bh64 * n_chunks1, 0, n_chunks1, row, d, MP, D, NP1)
    o_slc = _merge(M2, L2, A2, bh64 * n_parts2, 0, NSPL, row, d, MP, D, NP2)
    o_win = _merge(M2, L2, A2, bh64 * n_parts2, NSPL, n_parts2, row, d, MP, D, NP3)
    g_ptr = GATES + b.to(tl.int64) * sgb + h.to(tl.int64) * sgh
    g0 = tl.load(g_ptr).to(tl.float32)
    g1 = tl.load(g_ptr + sgc).to(tl.float32)
    g2 = tl.load(g_ptr + 2 * sgc).to(tl.float32)
    out = g0 * o_cmp + g1 * o_slc + g2 * o_win
    tl.store(OUT + b.to(tl.int64) * sob + h.to(tl.int64) * soh + d, out.to(OUT.dtype.element_ty))


_TAPS: dict[tuple[int, int, str], torch.Tensor] = {}


def _tap_weights(cfg, device: torch.device) -> torch.Tensor:
    """Overlap (in strides) of compressed token ``j*R - (C-1) + tap`` with selection block j
    (cached per geometry and device: a decode step makes no host-to-device copy)."""
    r_, c_ = cfg.sel_block // cfg.stride, cfg.block // cfg.stride
    key = (r_, c_, str(device))
    if key not in _TAPS:
        w = [max(0, min(delta + c_, r_) - max(delta, 0)) for delta in range(-(c_ - 1), r_)]
        _TAPS[key] = torch.tensor(w, dtype=torch.float32, device=device)
    return _TAPS[key]


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

    # chunks of compressed tokens: enough programs to fill the GPU, at most 32 partials to merge
    ch = 256
    while ch > 16 and bh * triton.cdiv(max(n_cmp, 1), ch) < target_programs:
        ch //= 2
    ch = max(ch, min(256, _pow2(triton.cdiv(max(n_cmp, 1), 32))))
    nc1 = triton.cdiv(max(n_cmp, 1), ch)
    sbuf = torch.empty(bh * group * max(n_cmp, 1), device=dev, dtype=torch.float32)
    m1 = torch.empty(bh, nc1, mp, device=dev, dtype=torch.float32)
    l1 = torch.empty_like(m1)
    a1 = torch.empty(bh, nc1, mp, d, device=dev, dtype=torch.float32)
    _dec_cmp_kernel[(nc1, bh)](
        q, k_cmp, v_cmp, sbuf, m1, l1, a1,
        q.stride(0), q.stride(1), k_cmp.stride(0), k_cmp.stride(1), k_cmp.stride(2),
        v_cmp.stride(0), v_cmp.stride(1), v_cmp.stride(2),
        n_cmp, hkv, qk_scale, G=group, MP=mp, CH=ch, D=d, DT=dt, PREC=prec, num_warps=4,
    )

    r_, c_ = cfg.sel_block // cfg.stride, cfg.block // cfg.stride
    n_sel = cfg.n_sel_blocks(lk)
    nsp = _pow2(cfg.n_select)
    bsd = max(64, min(256, _pow2(triton.cdiv(n_sel, 8))))   # at most ~8 candidate lists to merge
    nc2 = triton.cdiv(n_sel, bsd)
    cand = torch.empty(bh, nc2, nsp, device=dev, dtype=torch.int64)
    _dec_topk_kernel[(nc2, bh)](
        sbuf, m1, l1, _tap_weights(cfg, dev), cand, n_cmp, nc1, pos,
        G=group, MP=mp, NCP=_pow2(nc1), BSD=bsd, NS=cfg.n_select, NSP=nsp, R=r_, C=c_, NTAP=c_ + r_ - 1,
        SEL=cfg.sel_block,
        N_INIT=cfg.n_forced_init, N_LOCAL=cfg.n_forced_local, num_warps=4,
    )

    bps = 2 if bh * triton.cdiv(cfg.n_select, 2) >= target_programs else 1
    nspl = triton.cdiv(cfg.n_select, bps)
    wch = 64 * bps
    nwin = triton.cdiv(min(cfg.window, lk), wch) if cfg.window > 0 else 0
    nsw = min(cfg.n_select, n_sel)
    idx = torch.empty(b, hkv, nsw, device=dev, dtype=torch.int32)
    m2 = torch.empty(bh, nspl + nwin, mp, device=dev, dtype=torch.float32)
    l2 = torch.empty_like(m2)
    a2 = torch.empty(bh, nspl + nwin, mp, d, device=dev, dtype=torch.float32)
    window = min(cfg.window, lk)
    _dec_sparse_kernel[(nspl + nwin, bh)](
        q, k, v, k_win, v_win, cand, idx, m2, l2, a2,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        k_win.stride(0), k_win.stride(1), k_win.stride(2), v_win.stride(0), v_win.stride(1), v_win.stride(2),
        idx.stride(0), idx.stride(1),
        nc2, pos, window, hkv, qk_scale,
        G=group, MP=mp, D=d, SB=cfg.sel_block, NS=cfg.n_select, NSP=nsp, NSW=nsw, NCP2=_pow2(nc2), BPS=bps,
        NSPL=nspl, WCH=wch, DT=dt, PREC=prec, num_warps=4,
    )

    out = torch.empty(b, h, d, device=dev, dtype=q.dtype)
    _dec_combine_kernel[(b * h,)](
        m1, l1, a1, m2, l2, a2, gates, out,
        gates.stride(0), gates.stride(1), gates.stride(2), out.stride(0), out.stride(1),
        nc1, nspl + nwin, hkv, h, G=group, MP=mp, D=d, NSPL=nspl,
        NP1=_pow2(nc1), NP2=_pow2(nspl), NP3=_pow2(max(nwin, 1)), num_warps=4,
    )
    return out, idx


__all__ = ["nsa_decode_fwd"]

"""Decode attention over compact KV caches (see reference.py for the spec).

:func:`varlen_decode_triton` / :func:`paged_decode_triton`: one decode query per head over a
variable-length per-KV-head store, or over a list of pages of a paged store. One program
handles one KV head's whole query group (its rows padded to 16 for the matrix units) and one
split of the tokens (split-K, "flash decoding"); a small second kernel merges the splits.
Keys and values may be int8 / int4 codes: they are dequantized in registers (fused), so the
cache is read once at its stored width. With ``logits`` given, the scaled scores of every
row are written out, so that H2O's attention mass is accumulated later from those scores
and the softmax normaliser, without reading the cache a second time.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ...backend import triton_interpreted
from .triton_common import (LAUNCH, LOG2E, _dequant_groups, _load_codes, _pow2, _Store, check_kernel_query,
                            group_rows, split_plan)


@triton.jit
def _decode_kernel(
    Q, K, KS, KZ, V, VS, VZ,
    START, LEN, PLIST, NLIST, TABLE, SEQ,
    PO, PM, PL, LOGITS,
    stride_qb, stride_qh, stride_plist, stride_table, logit_rows,
    kv_heads, chunk, qk_scale,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, DSTORE: tl.constexpr,
    QUANT: tl.constexpr, NG: tl.constexpr, GS: tl.constexpr, HAS_ZERO: tl.constexpr,
    PAGED: tl.constexpr, PAGE: tl.constexpr, WRITE_LOGITS: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, F32: tl.constexpr,
    PER_TOKEN: tl.constexpr, GROUPED: tl.constexpr,
):
    """PER_TOKEN: quantized with one scale per token; GROUPED: quantized with channel groups."""
    DH: tl.constexpr = D // 2
    r = tl.program_id(0)
    s = tl.program_id(1)
    n_splits = tl.num_programs(1)
    b = r // kv_heads
    kvh = r % kv_heads
    g = tl.arange(0, GP)
    g_ok = g < G
    dh = tl.arange(0, DH)
    n = tl.arange(0, BLOCK_N)

    q_rows = Q + b.to(tl.int64) * stride_qb + (kvh * G + g).to(tl.int64)[:, None] * stride_qh
    q_lo = tl.load(q_rows + dh[None, :], mask=g_ok[:, None], other=0.0)
    q_hi = tl.load(q_rows + DH + dh[None, :], mask=g_ok[:, None], other=0.0)
    # per-token scales factor out of the dot products: q·(c s + z) = s (q·c) + z Σq
    q_sum = tl.sum(q_lo.to(tl.float32), 1) + tl.sum(q_hi.to(tl.float32), 1)
    if F32:
        q_lo = q_lo.to(tl.float32)
        q_hi = q_hi.to(tl.float32)

    if PAGED:
        seq = tl.load(SEQ + b).to(tl.int64)
        total = tl.load(NLIST + r) * PAGE
        base = 0
    else:
        seq = 0
        base = tl.load(START + r).to(tl.int64)
        total = tl.load(LEN + r)
    lo = s * chunk
    hi = tl.minimum(lo + chunk, total)

    m_i = tl.full([GP], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GP], dtype=tl.float32)
    acc_lo = tl.zeros([GP, DH], dtype=tl.float32)
    acc_hi = tl.zeros([GP, DH], dtype=tl.float32)

    for j0 in range(lo, hi, BLOCK_N):
        j = j0 + n
        ok = j < hi
        if PAGED:
            li = j // PAGE
            off = j % PAGE
            lp = tl.load(PLIST + r.to(tl.int64) * stride_plist + li, mask=ok, other=-1)
            ok = ok & (lp >= 0) & (lp.to(tl.int64) * PAGE + off < seq)
            phys = tl.load(TABLE + b.to(tl.int64) * stride_table + lp, mask=ok, other=0).to(tl.int64)
            rows = (phys * kv_heads + kvh) * PAGE + off
        else:
            rows = base + j
        k_lo, k_hi = _load_codes(K, rows, ok, dh, DH, DSTORE, QUANT)
        if GROUPED:
            k_lo = _dequant_groups(k_lo, KS, KZ, rows, ok, dh, NG, GS, HAS_ZERO)
            k_hi = _dequant_groups(k_hi, KS, KZ, rows, ok, DH + dh, NG, GS, HAS_ZERO)
        sc = tl.dot(q_lo, tl.trans(k_lo.to(q_lo.dtype)), input_precision=DOT_PRECISION)
        sc = tl.dot(q_hi, tl.trans(k_hi.to(q_lo.dtype)), sc, input_precision=DOT_PRECISION)
        if PER_TOKEN:
            sc = sc * tl.load(KS + rows, mask=ok, other=0.0).to(tl.float32)[None, :]
            if HAS_ZERO:
                sc += q_sum[:, None] * tl.load(KZ + rows, mask=ok, other=0.0).to(tl.float32)[None, :]
        sc = tl.where(ok[None, :], sc * qk_scale, float("-inf"))
        if WRITE_LOGITS:
            tl.store(LOGITS + g.to(tl.int64)[:, None] * logit_rows + rows[None, :], sc,
                     mask=g_ok[:, None] & ok[None, :])
        m_new = tl.maximum(m_i, tl.max(sc, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(sc - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_lo, v_hi = _load_codes(V, rows, ok, dh, DH, DSTORE, QUANT)
        acc_lo = acc_lo * alpha[:, None]
        acc_hi = acc_hi * alpha[:, None]
        if PER_TOKEN:
            vs = tl.load(VS + rows, mask=ok, other=0.0).to(tl.float32)
            if HAS_ZERO:
                zterm = tl.sum(p * tl.load(VZ + rows, mask=ok, other=0.0).to(tl.float32)[None, :], 1)
                acc_lo += zterm[:, None]
                acc_hi += zterm[:, None]
            p = p * vs[None, :]
        if GROUPED:
            v_lo = _dequant_groups(v_lo, VS, VZ, rows, ok, dh, NG, GS, HAS_ZERO)
            v_hi = _dequant_groups(v_hi, VS, VZ, rows, ok, DH + dh, NG, GS, HAS_ZERO)
        pp = p.to(q_lo.dtype)
        acc_lo = tl.dot(pp, v_lo.to(q_lo.dtype), acc_lo, input_precision=DOT_PRECISION)
        acc_hi = tl.dot(pp, v_hi.to(q_lo.dtype), acc_hi, input_precision=DOT_PRECISION)
        m_i = m_new

    # partial results of the group's real rows only
    part = (r * n_splits + s).to(tl.int64)
    o_ptrs = PO + (part * G + g)[:, None] * D + dh[None, :]
    tl.store(o_ptrs, acc_lo, mask=g_ok[:, None])
    tl.store(o_ptrs + DH, acc_hi, mask=g_ok[:, None])
    tl.store(PM + part * G + g, m_i, mask=g_ok)
    tl.store(PL + part * G + g, l_i, mask=g_ok)


@triton.jit
def _combine_kernel(PO, PM, PL, OUT, LSE, stride_ob, stride_oh, kv_heads, n_splits,
                    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, SP: tl.constexpr):
    r = tl.program_id(0)
    b = r // kv_heads
    kvh = r % kv_heads
    g = tl.arange(0, GP)
    g_ok = g < G
    d = tl.arange(0, D)
    sp = tl.arange(0, SP)
    part = r.to(tl.int64) * n_splits
    ok2 = (sp < n_splits)[:, None] & g_ok[None, :]
    ms = tl.load(PM + (part + sp)[:, None] * G + g[None, :], mask=ok2, other=float("-inf"))
    ls = tl.load(PL + (part + sp)[:, None] * G + g[None, :], mask=ok2, other=0.0)
    m = tl.max(ms, 0)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    l_tot = tl.sum(tl.exp2(ms - m_use[None, :]) * ls, 0)
    acc = tl.zeros([GP, D], dtype=tl.float32)
    for i in range(0, n_splits):
        w = tl.exp2(tl.load(PM + (part + i) * G + g, mask=g_ok, other=float("-inf")) - m_use)
        acc += w[:, None] * tl.load(PO + ((part + i) * G + g)[:, None] * D + d[None, :], mask=g_ok[:, None],
                                    other=0.0)
    out = acc / tl.where(l_tot > 0.0, l_tot, 1.0)[:, None]
    o_ptrs = OUT + b.to(tl.int64) * stride_ob + (kvh * G + g).to(tl.int64)[:, None] * stride_oh + d[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=g_ok[:, None])
    lse = tl.where(l_tot > 0.0, m_use + tl.log2(tl.where(l_tot > 0.0, l_tot, 1.0)), float("-inf"))
    tl.store(LSE + r.to(tl.int64) * GP + g, lse)



def _launch_decode(q: torch.Tensor, k, v, kv_heads: int, *, scale: float | None, max_tokens: int,
                   start=None, length=None, plist=None, nlist=None, table=None, seq=None, page_size: int = 1,
                   logits: torch.Tensor | None = None, block_n: int | None = None, num_splits: int | None = None,
                   num_warps: int | None = None, num_stages: int | None = None, avg_tokens: float | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, d = q.shape
    check_kernel_query(q, kv_heads)
    ks, vs = _Store(k, d, q.dtype), _Store(v, d, q.dtype)
    if (ks.quant, ks.ng, ks.gs, ks.has_zero) != (vs.quant, vs.ng, vs.gs, vs.has_zero):
        raise ValueError("k, v: keys and values must share one storage format")
    if q.stride(-1) != 1:
        q = q.contiguous()
    group = h // kv_heads
    gp = group_rows(group)
    rows = b * kv_heads
    paged = plist is not None
    cfg = LAUNCH["paged" if paged else "varlen"]
    if block_n is None:
        block_n = cfg["block_n"] if d <= 128 else min(32, cfg["block_n"])
    max_tokens = max(int(max_tokens), 1)
    if num_splits:
        splits = num_splits
        chunk = triton.cdiv(triton.cdiv(max_tokens, splits), block_n) * block_n
    else:
        splits, chunk = split_plan(rows, max_tokens, block_n, cfg["split_factor"], avg_tokens)
    dev = q.device
    po = torch.empty(rows * splits * group * d, device=dev, dtype=torch.float32)
    pm = torch.empty(rows * splits * group, device=dev, dtype=torch.float32)
    pl = torch.empty(rows * splits * group, device=dev, dtype=torch.float32)
    out = torch.empty(b, h, d, device=dev, dtype=q.dtype)
    lse = torch.empty(rows, gp, device=dev, dtype=torch.float32)
    dummy = pm
    qk_scale = (1.0 / math.sqrt(d) if scale is None else scale) * LOG2E
    # the interpreter's bf16 dot is unreliable: it computes in float32 there (rounding of the
    # dot operands is then the only difference from the GPU path)
    f32 = q.dtype == torch.float32 or (q.dtype == torch.bfloat16 and triton_interpreted())
    if num_warps is None:
        num_warps = cfg["num_warps"]
    if num_stages is None:
        num_stages = cfg["num_stages"]
    _decode_kernel[(rows, splits)](
        q, ks.data, ks.scale, ks.zero, vs.data, vs.scale, vs.zero,
        start if start is not None else dummy, length if length is not None else dummy,
        plist if paged else dummy, nlist if paged else dummy, table if paged else dummy, seq if paged else dummy,
        po, pm, pl, logits if logits is not None else dummy,
        q.stride(0), q.stride(1), plist.stride(1) if paged else 0, table.stride(0) if paged else 0,
        logits.shape[1] if logits is not None else 0,
        kv_heads, chunk, qk_scale,
        G=group, GP=gp, D=d, DSTORE=ks.width, QUANT=ks.quant, NG=ks.ng, GS=ks.gs, HAS_ZERO=ks.has_zero,
        PAGED=paged, PAGE=page_size, WRITE_LOGITS=logits is not None,
        BLOCK_N=block_n, DOT_PRECISION="ieee" if f32 else "tf32", F32=f32,
        PER_TOKEN=ks.quant != 0 and ks.ng == 1, GROUPED=ks.quant != 0 and ks.ng > 1,
        num_warps=num_warps, num_stages=num_stages,
    )
    _combine_kernel[(rows,)](po, pm, pl, out, lse, out.stride(0), out.stride(1), kv_heads, splits,
                             G=group, GP=gp, D=d, SP=_pow2(splits), num_warps=4)
    return out, lse


def varlen_decode_triton(q: torch.Tensor, k, v, start: torch.Tensor, length: torch.Tensor, *,
                         scale: float | None = None, max_len: int | None = None, avg_len: float | None = None,
                         logits: torch.Tensor | None = None, **launch) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode attention over a variable-length store (see :func:`reference.varlen_decode_ref`).

    start (B, Hkv) int64 and length (B, Hkv) int32, contiguous. ``max_len`` is an upper bound
    of ``length`` known to the caller (avoids a device sync; default: computed); ``avg_len``, an
    estimate of the mean length, balances the splits when heads differ in length. ``logits``, a
    float32 (G, rows) buffer with G = heads // kv_heads, receives each row's scaled score
    ``q·k * scale * log2(e)`` (base-2 logits) for every query head of its group.
    Returns (out (B, H, D) in q's dtype, lse (B * Hkv, GP) float32 base-2 log-sum-exp per query
    row of each group, GP = :func:`group_rows` of the group size).
    """
    if max_len is None:
        max_len = int(length.max()) if length.numel() else 0
    if start.dtype != torch.int64 or length.dtype != torch.int32:
        raise TypeError("start, length: expected int64 and int32 tensors")
    if logits is not None:
        g = q.shape[1] // start.shape[1]
        if logits.dtype != torch.float32 or logits.ndim != 2 or logits.shape[0] != g or not logits.is_contiguous():
            raise ValueError(f"logits: expected a contiguous float32 ({g}, rows) buffer")
    return _launch_decode(q, k, v, start.shape[1], scale=scale, max_tokens=max_len, start=start.contiguous(),
                          length=length.contiguous(), logits=logits, avg_tokens=avg_len, **launch)


def paged_decode_triton(q: torch.Tensor, k_pages, v_pages, page_table: torch.Tensor, seq_lens: torch.Tensor,
                        page_list: torch.Tensor, list_len: torch.Tensor, *, page_size: int,
                        scale: float | None = None, **launch) -> torch.Tensor:
    """Decode attention over listed pages of a paged store (see :func:`reference.paged_decode_ref`).

    page_table (B, max_pages) int32; seq_lens (B,) int64; page_list (B, Hkv, W) int32 with the
    first ``list_len[b, h]`` entries valid (list_len (B, Hkv) int32).
    """
    b, hkv, w = page_list.shape
    out, _ = _launch_decode(q, k_pages, v_pages, hkv, scale=scale, max_tokens=w * page_size,
                            plist=page_list.contiguous(), nlist=list_len.contiguous(),
                            table=page_table.contiguous(), seq=seq_lens.contiguous(), page_size=page_size, **launch)
    return out


__all__ = ["paged_decode_triton", "varlen_decode_triton"]

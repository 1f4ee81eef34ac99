"""Appending one token to a compact KV cache.

:func:`append_triton`: one token into a variable-length or paged store, quantized in the
kernel; a paged store's page bounds are updated (native) or computed when the token
completes its page (int8).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import BOUND_SCALE_TINY, BOUND_SCALE_UP
from .triton_common import HEAD_DIMS, _dequant_groups, _load_codes, _pow2, _Store


QUANT_UP = 1.0 + 2.0 ** -10      # kv_quant's outward rounding of float16 parameters
QUANT_TINY = 2.0 ** -24
BOUND_WIDEN = 2.0 ** -8          # page bounds of dequantized keys: widened by more than a bf16 rounding


@triton.jit
def _round_half_even(y):
    f = tl.floor(y)
    d = y - f
    odd = f - 2.0 * tl.floor(f * 0.5)
    return tl.where(d > 0.5, f + 1.0, tl.where(d < 0.5, f, f + odd))


@triton.jit
def _group_reduce(x, NGH: tl.constexpr, GS: tl.constexpr, MODE: tl.constexpr):
    """Per-group max |x| (MODE 0), min (1) or max (2) of a half (NGH groups of GS), broadcast back."""
    xg = tl.reshape(x, (NGH, GS))
    if MODE == 0:
        red = tl.max(tl.abs(xg), 1)
    elif MODE == 1:
        red = tl.min(xg, 1)
    else:
        red = tl.max(xg, 1)
    return tl.reshape(tl.broadcast_to(red[:, None], (NGH, GS)), (NGH * GS,))


@triton.jit
def _write_token(X, XS, XZ, row, x_lo, x_hi, dh, DH: tl.constexpr, DSTORE: tl.constexpr, QUANT: tl.constexpr,
                 NG: tl.constexpr, GS: tl.constexpr, UP: tl.constexpr, TINY: tl.constexpr):
    """Store one token's halves x_lo, x_hi (float32) at ``row``, quantized as kv_quant does.
    Returns the values as stored (dequantized), float32."""
    NGH: tl.constexpr = NG // 2 if NG > 1 else 1
    gi = tl.arange(0, NGH)
    if QUANT == 0:
        v_lo = x_lo.to(X.dtype.element_ty)
        v_hi = x_hi.to(X.dtype.element_ty)
        tl.store(X + row * DSTORE + dh, v_lo)
        tl.store(X + row * DSTORE + DH + dh, v_hi)
        out_lo = v_lo.to(tl.float32)
        out_hi = v_hi.to(tl.float32)
    elif QUANT == 8:
        if NG == 1:
            amax = tl.maximum(tl.max(tl.abs(x_lo), 0), tl.max(tl.abs(x_hi), 0))
            s16 = tl.maximum(amax / 127.0 * UP, TINY).to(tl.float16)
            tl.store(XS + row, s16)
            s_lo = s16.to(tl.float32)
            s_hi = s_lo
        else:
            s_lo16 = tl.maximum(_group_reduce(x_lo, NGH, GS, 0) / 127.0 * UP, TINY).to(tl.float16)
            s_hi16 = tl.maximum(_group_reduce(x_hi, NGH, GS, 0) / 127.0 * UP, TINY).to(tl.float16)
            tl.store(XS + row * NG + gi, tl.max(tl.reshape(s_lo16, (NGH, GS)), 1))
            tl.store(XS + row * NG + NGH + gi, tl.max(tl.reshape(s_hi16, (NGH, GS)), 1))
            s_lo = s_lo16.to(tl.float32)
            s_hi = s_hi16.to(tl.float32)
        c_lo = tl.minimum(tl.maximum(_round_half_even(x_lo / s_lo), -127.0), 127.0)
        c_hi = tl.minimum(tl.maximum(_round_half_even(x_hi / s_hi), -127.0), 127.0)
        tl.store(X + row * DSTORE + dh, c_lo.to(tl.int8))
        tl.store(X + row * DSTORE + DH + dh, c_hi.to(tl.int8))
        out_lo = c_lo * s_lo
        out_hi = c_hi * s_hi
    else:
        # int4, asymmetric
        if NG == 1:
            mn = tl.minimum(tl.min(x_lo, 0), tl.min(x_hi, 0))
            mx = tl.maximum(tl.max(x_lo, 0), tl.max(x_hi, 0))
            z16 = (mn - tl.abs(mn) * 0.0009765625).to(tl.float16)
            z16 = tl.minimum(z16.to(tl.float32), mn).to(tl.float16)
            s16 = tl.maximum((mx - z16.to(tl.float32)) / 15.0 * UP, TINY).to(tl.float16)
            tl.store(XS + row, s16)
            tl.store(XZ + row, z16)
            s_lo = s16.to(tl.float32)
            s_hi = s_lo
            z_lo = z16.to(tl.float32)
            z_hi = z_lo
        else:
            mn_lo = _group_reduce(x_lo, NGH, GS, 1)
            mn_hi = _group_reduce(x_hi, NGH, GS, 1)
            zl16 = (mn_lo - tl.abs(mn_lo) * 0.0009765625).to(tl.float16)
            zl16 = tl.minimum(zl16.to(tl.float32), mn_lo).to(tl.float16)
            zh16 = (mn_hi - tl.abs(mn_hi) * 0.0009765625).to(tl.float16)
            zh16 = tl.minimum(zh16.to(tl.float32), mn_hi).to(tl.float16)
            z_lo = zl16.to(tl.float32)
            z_hi = zh16.to(tl.float32)
            sl16 = tl.maximum((_group_reduce(x_lo, NGH, GS, 2) - z_lo) / 15.0 * UP, TINY).to(tl.float16)
            sh16 = tl.maximum((_group_reduce(x_hi, NGH, GS, 2) - z_hi) / 15.0 * UP, TINY).to(tl.float16)
            tl.store(XS + row * NG + gi, tl.max(tl.reshape(sl16, (NGH, GS)), 1))
            tl.store(XS + row * NG + NGH + gi, tl.max(tl.reshape(sh16, (NGH, GS)), 1))
            tl.store(XZ + row * NG + gi, tl.max(tl.reshape(zl16, (NGH, GS)), 1))
            tl.store(XZ + row * NG + NGH + gi, tl.max(tl.reshape(zh16, (NGH, GS)), 1))
            s_lo = sl16.to(tl.float32)
            s_hi = sh16.to(tl.float32)
        c_lo = tl.minimum(tl.maximum(_round_half_even((x_lo - z_lo) / s_lo), 0.0), 15.0)
        c_hi = tl.minimum(tl.maximum(_round_half_even((x_hi - z_hi) / s_hi), 0.0), 15.0)
        byte = c_lo.to(tl.uint8) | (c_hi.to(tl.uint8) << 4)
        tl.store(X + row * DSTORE + dh, byte)
        out_lo = c_lo * s_lo + z_lo
        out_hi = c_hi * s_hi + z_hi
    return out_lo, out_hi


@triton.jit
def _load_keys(X, XS, XZ, rows, ok, dh, DH: tl.constexpr, DSTORE: tl.constexpr, QUANT: tl.constexpr,
               NG: tl.constexpr, GS: tl.constexpr):
    """The two halves of ``rows`` as stored, dequantized to float32 (as kv_quant's dequantize)."""
    lo, hi = _load_codes(X, rows, ok, dh, DH, DSTORE, QUANT)
    if QUANT == 0:
        lo = lo.to(tl.float32)
        hi = hi.to(tl.float32)
    elif NG == 1:
        s = tl.load(XS + rows, mask=ok, other=0.0).to(tl.float32)[:, None]
        lo = lo * s
        hi = hi * s
        if QUANT == 4:
            z = tl.load(XZ + rows, mask=ok, other=0.0).to(tl.float32)[:, None]
            lo = lo + z
            hi = hi + z
    else:
        lo = _dequant_groups(lo, XS, XZ, rows, ok, dh, NG, GS, QUANT == 4)
        hi = _dequant_groups(hi, XS, XZ, rows, ok, DH + dh, NG, GS, QUANT == 4)
    return lo, hi


@triton.jit
def _bound_codes(x, scale, UP: tl.constexpr):
    """int8 codes of bound values x for ``scale``: rounded up (UP) or down, one step further
    when the product with the scale still falls short (see reference.quantize_bounds)."""
    if UP:
        c = tl.ceil(x / scale)
        c = tl.where(c * scale < x, c + 1.0, c)
    else:
        c = tl.floor(x / scale)
        c = tl.where(c * scale > x, c - 1.0, c)
    return tl.minimum(tl.maximum(c, -127.0), 127.0).to(tl.int8)


@triton.jit
def _append_kernel(KN, VN, K, KS, KZ, V, VS, VZ,
                   START, LEN, POS, SCORE,
                   TABLE, KB, KSC,
                   SEQ, stride_kb, stride_kh, stride_vb, stride_vh, stride_table, kv_heads, page_size,
                   D: tl.constexpr, DSTORE: tl.constexpr, QUANT: tl.constexpr, NG: tl.constexpr, GS: tl.constexpr,
                   PAGED: tl.constexpr, HAS_SCORE: tl.constexpr, WIDEN: tl.constexpr,
                   BOUNDS_INT8: tl.constexpr, PAGE_P: tl.constexpr,
                   UP: tl.constexpr, TINY: tl.constexpr, BOUND_UP: tl.constexpr, BOUND_TINY: tl.constexpr):
    DH: tl.constexpr = D // 2
    r = tl.program_id(0)
    b = r // kv_heads
    kvh = r % kv_heads
    dh = tl.arange(0, DH)
    seq = tl.load(SEQ + b).to(tl.int64)
    if PAGED:
        phys = tl.load(TABLE + b.to(tl.int64) * stride_table + seq // page_size).to(tl.int64)
        off = seq % page_size
        row = (phys * kv_heads + kvh) * page_size + off
    else:
        n = tl.load(LEN + r)
        row = tl.load(START + r).to(tl.int64) + n
    kb = KN + b.to(tl.int64) * stride_kb + kvh * stride_kh
    vb = VN + b.to(tl.int64) * stride_vb + kvh * stride_vh
    k_lo, k_hi = _write_token(K, KS, KZ, row, tl.load(kb + dh).to(tl.float32), tl.load(kb + DH + dh).to(tl.float32),
                              dh, DH, DSTORE, QUANT, NG, GS, UP, TINY)
    _write_token(V, VS, VZ, row, tl.load(vb + dh).to(tl.float32), tl.load(vb + DH + dh).to(tl.float32),
                 dh, DH, DSTORE, QUANT, NG, GS, UP, TINY)
    if PAGED:
        mrow = phys * kv_heads + kvh
        mb = KB + mrow * (2 * D)            # min at [0, D), max at [D, 2 D)
        if BOUNDS_INT8:
            if off == page_size - 1:
                # the page is complete: bounds of its keys as stored, quantized once
                j = tl.arange(0, PAGE_P)
                prev = j < off
                x_lo, x_hi = _load_keys(K, KS, KZ, mrow * page_size + j, prev, dh, DH, DSTORE, QUANT, NG, GS)
                mn_lo = tl.minimum(tl.min(tl.where(prev[:, None], x_lo, float("inf")), 0), k_lo)
                mn_hi = tl.minimum(tl.min(tl.where(prev[:, None], x_hi, float("inf")), 0), k_hi)
                mx_lo = tl.maximum(tl.max(tl.where(prev[:, None], x_lo, float("-inf")), 0), k_lo)
                mx_hi = tl.maximum(tl.max(tl.where(prev[:, None], x_hi, float("-inf")), 0), k_hi)
                amax = tl.maximum(tl.maximum(tl.max(tl.abs(mn_lo), 0), tl.max(tl.abs(mn_hi), 0)),
                                  tl.maximum(tl.max(tl.abs(mx_lo), 0), tl.max(tl.abs(mx_hi), 0)))
                scale = tl.maximum(amax / 127.0 * BOUND_UP, BOUND_TINY)
                tl.store(mb + dh, _bound_codes(mn_lo, scale, False))
                tl.store(mb + DH + dh, _bound_codes(mn_hi, scale, False))
                tl.store(mb + D + dh, _bound_codes(mx_lo, scale, True))
                tl.store(mb + D + DH + dh, _bound_codes(mx_hi, scale, True))
                tl.store(KSC + mrow, scale)
        else:
            if WIDEN:
                lo_lo = k_lo - tl.abs(k_lo) * 0.00390625
                lo_hi = k_hi - tl.abs(k_hi) * 0.00390625
                hi_lo = k_lo + tl.abs(k_lo) * 0.00390625
                hi_hi = k_hi + tl.abs(k_hi) * 0.00390625
            else:
                lo_lo = k_lo
                lo_hi = k_hi
                hi_lo = k_lo
                hi_hi = k_hi
            # rounded to the storage dtype, then compared in float32 (exact for stored values)
            ty = KB.dtype.element_ty
            lo_lo = lo_lo.to(ty).to(tl.float32)
            lo_hi = lo_hi.to(ty).to(tl.float32)
            hi_lo = hi_lo.to(ty).to(tl.float32)
            hi_hi = hi_hi.to(ty).to(tl.float32)
            first = off == 0
            old = tl.load(mb + dh).to(tl.float32)
            tl.store(mb + dh, tl.where(first, lo_lo, tl.minimum(old, lo_lo)).to(ty))
            old = tl.load(mb + DH + dh).to(tl.float32)
            tl.store(mb + DH + dh, tl.where(first, lo_hi, tl.minimum(old, lo_hi)).to(ty))
            old = tl.load(mb + D + dh).to(tl.float32)
            tl.store(mb + D + dh, tl.where(first, hi_lo, tl.maximum(old, hi_lo)).to(ty))
            old = tl.load(mb + D + DH + dh).to(tl.float32)
            tl.store(mb + D + DH + dh, tl.where(first, hi_hi, tl.maximum(old, hi_hi)).to(ty))
    else:
        tl.store(POS + row, seq.to(tl.int32))
        if HAS_SCORE:
            tl.store(SCORE + row, 0.0)
        tl.store(LEN + r, n + 1)


def append_triton(k_new: torch.Tensor, v_new: torch.Tensor, k, v, seq_lens: torch.Tensor, *,
                  start: torch.Tensor | None = None, length: torch.Tensor | None = None,
                  pos: torch.Tensor | None = None, score: torch.Tensor | None = None,
                  page_table: torch.Tensor | None = None, kbounds: torch.Tensor | None = None,
                  kscale: torch.Tensor | None = None, page_size: int = 1, widen: bool = False) -> None:
    """Write one token per (sequence, KV head) into a store, quantizing in the kernel.

    k_new, v_new (B, Hkv, D). Variable-length store: pass start, length (incremented), pos and
    optionally score (set to 0). Paged store: pass page_table (the token's page must be
    assigned) and kbounds (pages, Hkv, 2, D), the page bounds: native ones (in the cache
    dtype, widened outwards when ``widen``) are updated with the token; int8 ones (with
    ``kscale`` (pages, Hkv) float32) are computed from the page's keys when the token completes
    its page. ``seq_lens`` is read (the token's position), not changed.
    """
    b, hkv, d = k_new.shape
    if d not in HEAD_DIMS:
        raise ValueError(f"k_new: the Triton append supports head_dim in {HEAD_DIMS}, got {d}")
    if k_new.stride(-1) != 1 or v_new.stride(-1) != 1:
        k_new, v_new = k_new.contiguous(), v_new.contiguous()
    ks, vs = _Store(k, d, k_new.dtype), _Store(v, d, k_new.dtype)
    paged = page_table is not None
    if paged and (kbounds is None or not kbounds.is_contiguous()):
        raise ValueError("kbounds: a paged append needs the contiguous (pages, kv_heads, 2, head_dim) page bounds")
    int8 = paged and kbounds.dtype == torch.int8
    if int8 and kscale is None:
        raise ValueError("kscale: int8 page bounds need their (pages, kv_heads) float32 scales")
    dummy = seq_lens
    _append_kernel[(b * hkv,)](
        k_new, v_new, ks.data, ks.scale, ks.zero, vs.data, vs.scale, vs.zero,
        start if not paged else dummy, length if not paged else dummy, pos if not paged else dummy,
        score if score is not None else dummy,
        page_table if paged else dummy, kbounds if paged else dummy, kscale if int8 else dummy,
        seq_lens, k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1),
        page_table.stride(0) if paged else 0, hkv, page_size,
        D=d, DSTORE=ks.width, QUANT=ks.quant, NG=ks.ng, GS=ks.gs, PAGED=paged, HAS_SCORE=score is not None,
        WIDEN=widen, BOUNDS_INT8=int8, PAGE_P=max(2, _pow2(page_size)) if paged else 2,
        UP=QUANT_UP, TINY=QUANT_TINY, BOUND_UP=BOUND_SCALE_UP, BOUND_TINY=BOUND_SCALE_TINY,
        num_warps=1 if d <= 64 else 2,
    )


__all__ = ["append_triton"]

"""Triton kernels of decode attention over compact KV caches (see reference.py for the spec).

Kernels:

* :func:`varlen_decode_triton` / :func:`paged_decode_triton`: one decode query per head over a
  variable-length per-KV-head store, or over a list of pages of a paged store. One program
  handles one KV head's whole query group (its rows padded to 16 for the matrix units) and one
  split of the tokens (split-K, "flash decoding"); a small second kernel merges the splits.
  Keys and values may be int8 / int4 codes: they are dequantized in registers (fused), so the
  cache is read once at its stored width. With ``logits`` given, the scaled scores of every
  row are written out, so that H2O's attention mass is accumulated later from those scores
  and the softmax normaliser, without reading the cache a second time.
* :func:`evict_update_triton`: H2O's accumulation and single-token eviction, or StreamingLLM's
  eviction, one program per KV head: it adds this step's probabilities to the accumulated
  scores, picks the victim and moves the head's last token into the victim's slot (the store
  stays compact and its order is irrelevant to attention). Long H2O heads are split: one
  program per (KV head, chunk of slots) updates the scores and finds the chunk's candidate,
  then one program per KV head merges the chunks' candidates and moves the token.
* :func:`quest_page_scores_triton` and :func:`quest_select_triton`: Quest's page upper bound
  summed over the KV head's query group (the group sum folds into one weight vector over a
  page's interleaved min/max row, so each page's bounds are one contiguous read; int8 codes
  are read as int32 words and widened by exponent tricks instead of int-to-float
  conversions), and an exact top-k by a radix-16 search on the scores' bits (at most 8
  histogram passes, ties to the lower page), writing the sorted page list plus the current
  page. The scoring runs one program per (sequence, KV head, page range), or with
  ``all_heads`` one per (sequence, page range) over the pages' rows of every KV head.
* :func:`append_triton`: one token into a variable-length or paged store, quantized in the
  kernel; a paged store's page bounds are updated (native) or computed when the token
  completes its page (int8).

Supported: head_dim 32, 64, 128 or 256; float16 / bfloat16 (float32 with exact dot products,
for checks); CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ...backend import triton_interpreted
from ..kv_quant import QuantizedTensor
from .reference import BOUND_SCALE_TINY, BOUND_SCALE_UP

HEAD_DIMS = (32, 64, 128, 256)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634
MAX_SELECT_PAGES = 1 << 15


# ----------------------------------------------------------------------------- helpers

def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def group_rows(group: int) -> int:
    """Rows of the query tile: the group size padded to a power of two >= 16 (tl.dot's minimum)."""
    return max(16, _pow2(group))


def check_kernel_query(q: torch.Tensor, kv_heads: int) -> None:
    if q.dtype not in KERNEL_DTYPES:
        raise TypeError(f"q: the Triton decode kernels take float16, bfloat16 or float32, got {q.dtype}")
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"q: the Triton decode kernels support head_dim in {HEAD_DIMS}, got {q.shape[-1]}")
    if q.device.type != "cuda" and not triton_interpreted():
        raise ValueError(f"q: the Triton kernels need CUDA tensors (got {q.device}); set TRITON_INTERPRET=1 "
                         "to run them on the CPU, or use backend='reference'")
    if q.shape[1] % kv_heads:
        raise ValueError(f"q: kv_heads ({kv_heads}) must divide heads ({q.shape[1]})")


class _Store:
    """Kernel view of a row store: data pointer, scale / zero pointers and the quantization mode."""

    def __init__(self, store, head_dim: int, dtype: torch.dtype) -> None:
        if isinstance(store, QuantizedTensor):
            gs, ng = store.spec.groups(head_dim)
            self.data, self.scale = store.data, store.scale
            self.zero = store.zero if store.zero is not None else store.scale
            self.quant, self.ng, self.gs = store.spec.bits, ng, gs
            self.has_zero = store.zero is not None
        else:
            if store.dtype != dtype:
                raise TypeError(f"k, v: dtype must match q ({dtype}), got {store.dtype}")
            self.data = self.scale = self.zero = store
            self.quant, self.ng, self.gs, self.has_zero = 0, 1, head_dim, False
        if not self.data.is_contiguous():
            raise ValueError("k, v: row stores must be contiguous")
        self.width = self.data.shape[-1]
        self.rows = self.data.shape[0]


# launch parameters per kernel family; the benchmark may retune them for the card it runs on
# (the defaults won the benchmark's tuning on an H100 80GB HBM3: bf16, head_dim 128, 64K, batch 16)
LAUNCH: dict[str, dict[str, int]] = {
    "varlen": {"block_n": 128, "num_warps": 8, "num_stages": 3, "split_factor": 2},
    "paged": {"block_n": 64, "num_warps": 4, "num_stages": 3, "split_factor": 2},
    # Quest scoring: logical pages per program, bytes of bounds per loop step (one step per
    # program by default: many small programs keep more loads in flight than a few long ones),
    # all_heads: one program per (sequence, page range) scores every KV head (1) instead of one
    # program per (sequence, KV head, page range) (0)
    "quest_scores": {"pages_per_prog": 32, "tile_bytes": 8192, "num_warps": 4, "num_stages": 1, "all_heads": 0},
    # the same for bounds stored in the cache's dtype (bf16/fp16/fp32) instead of int8 codes: there
    # one program per sequence over all KV heads won (105 us against 124-144 us per KV head)
    "quest_scores_native": {"pages_per_prog": 16, "tile_bytes": 32768, "num_warps": 4, "num_stages": 1,
                            "all_heads": 1},
    "quest_select": {"num_warps": 16},
}


def set_launch_defaults(kind: str, **params: int) -> None:
    """Change the default launch parameters of a kernel family: "varlen" or "paged" decode
    (block_n, num_warps, num_stages, split_factor = programs per multiprocessor to aim for),
    "quest_scores" (int8 page bounds) and "quest_scores_native" (bounds in the cache's dtype)
    (pages_per_prog, tile_bytes, num_warps, num_stages, all_heads) or "quest_select" (num_warps)."""
    if kind not in LAUNCH:
        raise ValueError(f"kind: must be one of {tuple(LAUNCH)}, got {kind!r}")
    unknown = set(params) - set(LAUNCH[kind])
    if unknown:
        raise ValueError(f"params: unknown launch parameters {sorted(unknown)}")
    LAUNCH[kind].update({k: int(v) for k, v in params.items()})


def default_splits(rows: int, max_tokens: int, block_n: int, split_factor: int = 2) -> int:
    """Splits per KV head: about ``split_factor`` programs per multiprocessor, each with >= 4 tiles."""
    most = max(1, triton.cdiv(max_tokens, 4 * block_n))
    if device_sms() == 0:
        return min(4, most)
    want = triton.cdiv(split_factor * device_sms(), max(rows, 1))
    return min(_pow2(max(1, want)), _pow2(most), 128)


MAX_SPLITS = 256


def split_plan(rows: int, max_tokens: int, block_n: int, split_factor: int = 2,
               avg_tokens: float | None = None) -> tuple[int, int]:
    """(splits per KV head, tokens per split). The split size is set by the average head (when
    known), so that a head several times longer than the rest is cut into more splits rather
    than holding up the launch; short heads' extra programs exit at once."""
    ref = max_tokens if avg_tokens is None else int(max(1, min(max_tokens, math.ceil(avg_tokens))))
    chunk = triton.cdiv(triton.cdiv(ref, default_splits(rows, ref, block_n, split_factor)), block_n) * block_n
    splits = triton.cdiv(max_tokens, chunk)
    if splits > MAX_SPLITS:
        splits = MAX_SPLITS
        chunk = triton.cdiv(triton.cdiv(max_tokens, splits), block_n) * block_n
        splits = triton.cdiv(max_tokens, chunk)
    return max(1, splits), chunk


_SMS: list[int] = []


def device_sms() -> int:
    if not _SMS:
        _SMS.append(torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
                    if torch.cuda.is_available() else 0)
    return _SMS[0]


# ----------------------------------------------------------------------------- jit pieces

@triton.jit
def _load_codes(X, rows, ok, dh, DH: tl.constexpr, DSTORE: tl.constexpr, QUANT: tl.constexpr):
    """The two halves (channels [0, DH) and [DH, 2 DH)) of ``rows``: values as stored for
    float caches, float32 codes for quantized ones."""
    if QUANT == 4:
        byte = tl.load(X + rows[:, None] * DSTORE + dh[None, :], mask=ok[:, None], other=0)
        lo = (byte & 15).to(tl.float32)
        hi = (byte >> 4).to(tl.float32)
    else:
        lo = tl.load(X + rows[:, None] * DSTORE + dh[None, :], mask=ok[:, None], other=0)
        hi = tl.load(X + rows[:, None] * DSTORE + DH + dh[None, :], mask=ok[:, None], other=0)
        if QUANT == 8:
            lo = lo.to(tl.float32)
            hi = hi.to(tl.float32)
    return lo, hi


@triton.jit
def _dequant_groups(code, XS, XZ, rows, ok, ch, NG: tl.constexpr, GS: tl.constexpr, HAS_ZERO: tl.constexpr):
    """code (BLOCK_N, len(ch)) float32 -> values with per-group parameters (NG > 1)."""
    gi = rows[:, None] * NG + (ch // GS)[None, :]
    val = code * tl.load(XS + gi, mask=ok[:, None], other=0.0).to(tl.float32)
    if HAS_ZERO:
        val += tl.load(XZ + gi, mask=ok[:, None], other=0.0).to(tl.float32)
    return val


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


# ----------------------------------------------------------------------------- decode attention

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


# ----------------------------------------------------------------------------- eviction updates

@triton.jit
def _move_row(X, src, dst, W: tl.constexpr, WP: tl.constexpr):
    i = tl.arange(0, WP)
    ok = i < W
    x = tl.load(X + src * W + i, mask=ok)
    tl.store(X + dst * W + i, x, mask=ok)


@triton.jit
def _fold_least(score, cand, pos, slot, best, best_pos, best_slot):
    """Folds a block of candidates into the running victim (least score, ties to the larger
    position; positions are unique within a head, so one slot matches). The running value wins
    an exact tie of score and position, so earlier blocks keep precedence."""
    key = tl.where(cand, score, float("inf"))
    bmin = tl.min(key, 0)
    tie = cand & (key == bmin)
    bpos = tl.max(tl.where(tie, pos, -1), 0)
    bslot = tl.max(tl.where(tie & (pos == bpos), slot, -1), 0)
    better = (bpos >= 0) & ((bmin < best) | ((bmin == best) & (bpos > best_pos)))
    return tl.where(better, bmin, best), tl.where(better, bpos, best_pos), tl.where(better, bslot, best_slot)


@triton.jit
def _h2o_scan(LOGITS, SCORE, POS, lse, g, g_ok, base, lo, hi, limit, logit_rows, BLOCK: tl.constexpr):
    """H2O over slots [lo, hi) of one KV head: adds the step's probabilities (summed over the
    query group) to SCORE and returns (candidates, least score, its position, its slot); ties:
    the larger position, then the earlier block. (inf, -1, -1) when there is no candidate."""
    jj = tl.arange(0, BLOCK)
    cnt = tl.zeros([], dtype=tl.int32)
    best = tl.full([], float("inf"), dtype=tl.float32)
    best_pos = tl.full([], -1, dtype=tl.int64)
    best_slot = tl.full([], -1, dtype=tl.int64)
    for j0 in range(lo, hi, BLOCK):
        j = j0 + jj
        ok = j < hi
        rows = base + j
        p = tl.load(POS + rows, mask=ok, other=-1).to(tl.int64)
        lg = tl.load(LOGITS + g.to(tl.int64)[:, None] * logit_rows + rows[None, :],
                     mask=g_ok[:, None] & ok[None, :], other=float("-inf"))
        prob = tl.sum(tl.exp2(lg - lse[:, None]), 0)
        sc = tl.load(SCORE + rows, mask=ok, other=0.0) + prob
        tl.store(SCORE + rows, sc, mask=ok)
        cand = ok & (p <= limit)
        cnt += tl.sum(cand.to(tl.int32), 0)
        best, best_pos, best_slot = _fold_least(sc, cand, p, j.to(tl.int64), best, best_pos, best_slot)
    return cnt, best, best_pos, best_slot


@triton.jit
def _h2o_load_lse(LSE, r, GP: tl.constexpr, G: tl.constexpr):
    g = tl.arange(0, GP)
    g_ok = g < G
    lse = tl.load(LSE + r.to(tl.int64) * GP + g)
    return tl.where(g_ok, lse, 0.0), g, g_ok


@triton.jit
def _h2o_scores_kernel(LOGITS, LSE, SCORE, POS, START, LEN, SEQ, RECENT,
                       P_CNT, P_BEST, P_POS, P_SLOT,
                       logit_rows, kv_heads, n_chunks,
                       CHUNK: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, BLOCK: tl.constexpr):
    """H2O's first phase, one program per (KV head, chunk of CHUNK slots): the chunk's score
    update and its partial victim search, written to P_* at [head * n_chunks + chunk]. Chunks
    at or past the head's length write nothing."""
    r = tl.program_id(0)
    c = tl.program_id(1)
    n = tl.load(LEN + r)
    lo = c * CHUNK
    if lo < n:
        b = r // kv_heads
        base = tl.load(START + r).to(tl.int64)
        limit = tl.load(SEQ + b).to(tl.int64) - tl.load(RECENT + b).to(tl.int64)
        lse, g, g_ok = _h2o_load_lse(LSE, r, GP, G)
        cnt, best, best_pos, best_slot = _h2o_scan(LOGITS, SCORE, POS, lse, g, g_ok, base, lo,
                                                   tl.minimum(n, lo + CHUNK), limit, logit_rows, BLOCK)
        i = r.to(tl.int64) * n_chunks + c
        tl.store(P_CNT + i, cnt)
        tl.store(P_BEST + i, best)
        tl.store(P_POS + i, best_pos)
        tl.store(P_SLOT + i, best_slot)


@triton.jit
def _h2o_reduce_partials(P_CNT, P_BEST, P_POS, P_SLOT, r, n, n_chunks, CHUNK: tl.constexpr, CB: tl.constexpr):
    """Merges the partials of the chunks that cover a head's n slots, with :func:`_h2o_scan`'s
    rule (least score, then the larger position, then the earlier chunk)."""
    cc = tl.arange(0, CB)
    used = tl.minimum(tl.cdiv(n, CHUNK), n_chunks)
    row0 = r.to(tl.int64) * n_chunks
    cnt = tl.zeros([], dtype=tl.int64)
    best = tl.full([], float("inf"), dtype=tl.float32)
    best_pos = tl.full([], -1, dtype=tl.int64)
    best_slot = tl.full([], -1, dtype=tl.int64)
    for c0 in range(0, used, CB):
        c = c0 + cc
        ok = c < used
        cnt += tl.sum(tl.load(P_CNT + row0 + c, mask=ok, other=0), 0)
        p = tl.load(P_POS + row0 + c, mask=ok, other=-1)
        best, best_pos, best_slot = _fold_least(tl.load(P_BEST + row0 + c, mask=ok, other=float("inf")), p >= 0, p,
                                                tl.load(P_SLOT + row0 + c, mask=ok, other=-1),
                                                best, best_pos, best_slot)
    return cnt, best, best_pos, best_slot


@triton.jit
def _evict_kernel(LOGITS, LSE, SCORE, POS, START, LEN, SEQ, PA, PB,
                  K, KS, KZ, V, VS, VZ,
                  P_CNT, P_BEST, P_POS, P_SLOT,
                  logit_rows, kv_heads, n_chunks,
                  MODE: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, BLOCK: tl.constexpr,
                  QUANT: tl.constexpr, DSTORE: tl.constexpr, DSTORE_P: tl.constexpr,
                  NG: tl.constexpr, NG_P: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_SCORE: tl.constexpr,
                  PARTIALS: tl.constexpr, CHUNK: tl.constexpr):
    """MODE 0: H2O (PA = heavy, PB = recent); MODE 1: StreamingLLM (PA = sink, PB = window).
    With PARTIALS (H2O), :func:`_h2o_scores_kernel` already updated the scores and the kernel
    only merges its per-chunk partials; otherwise it scans the head itself."""
    r = tl.program_id(0)
    b = r // kv_heads
    base = tl.load(START + r).to(tl.int64)
    n = tl.load(LEN + r)
    seq = tl.load(SEQ + b).to(tl.int64)
    pa = tl.load(PA + b).to(tl.int64)
    limit = seq - tl.load(PB + b).to(tl.int64)
    best_slot = tl.full([], -1, dtype=tl.int64)
    if MODE == 0:
        if PARTIALS:
            cnt, best, best_pos, best_slot = _h2o_reduce_partials(P_CNT, P_BEST, P_POS, P_SLOT, r, n, n_chunks,
                                                                  CHUNK, 16)
        else:
            lse, g, g_ok = _h2o_load_lse(LSE, r, GP, G)
            cnt, best, best_pos, best_slot = _h2o_scan(LOGITS, SCORE, POS, lse, g, g_ok, base, 0, n, limit,
                                                       logit_rows, BLOCK)
        evict = (pa >= 0) & (cnt.to(tl.int64) > pa)
    else:
        jj = tl.arange(0, BLOCK)
        best_pos = tl.full([], 9223372036854775807, dtype=tl.int64)
        for j0 in range(0, n, BLOCK):
            j = j0 + jj
            ok = j < n
            p = tl.load(POS + base + j, mask=ok, other=-1).to(tl.int64)
            cand = ok & (p >= pa)
            key = tl.where(cand, p, 9223372036854775807)
            bmin = tl.min(key, 0)
            bslot = tl.max(tl.where(cand & (key == bmin), j.to(tl.int64), -1), 0)
            better = bmin < best_pos
            best_pos = tl.where(better, bmin, best_pos)
            best_slot = tl.where(better, bslot, best_slot)
        evict = (best_slot >= 0) & (best_pos <= limit)
    if evict:
        tl.debug_barrier()
        src = base + n - 1
        dst = base + best_slot
        _move_row(K, src, dst, DSTORE, DSTORE_P)
        _move_row(V, src, dst, DSTORE, DSTORE_P)
        if QUANT != 0:
            _move_row(KS, src, dst, NG, NG_P)
            _move_row(VS, src, dst, NG, NG_P)
            if HAS_ZERO:
                _move_row(KZ, src, dst, NG, NG_P)
                _move_row(VZ, src, dst, NG, NG_P)
        _move_row(POS, src, dst, 1, 1)
        if HAS_SCORE:
            _move_row(SCORE, src, dst, 1, 1)
        tl.store(LEN + r, n - 1)


def evict_update_triton(mode: str, k, v, pos: torch.Tensor, start: torch.Tensor, length: torch.Tensor,
                        seq_lens: torch.Tensor, param_a: torch.Tensor, param_b: torch.Tensor, *,
                        score: torch.Tensor | None = None, logits: torch.Tensor | None = None,
                        lse: torch.Tensor | None = None, head_dim: int, block: int = 1024,
                        max_len: int | None = None, chunk: int = 1024) -> None:
    """One eviction update per KV head, in place (see :func:`reference.h2o_victims_ref` and
    :func:`reference.streaming_victims_ref` for which token goes).

    mode "h2o": param_a = heavy (B,) (negative = unlimited), param_b = recent (B,); ``score``
    (rows,) float32 accumulates this step's probabilities, recovered from ``logits`` (G, rows)
    and ``lse`` (B * Hkv, GP) written by :func:`varlen_decode_triton`. mode "streaming":
    param_a = sink, param_b = window. The victim's slot receives the head's last token (codes,
    scales, position, score) and ``length`` drops by one.

    H2O splits each head into chunks of ``chunk`` slots (one program each: score update and a
    partial victim search), then one program per head merges the partials and moves the token;
    heads no longer than ``chunk`` take one program that does both. ``max_len``, an upper bound
    of ``length`` known to the caller, sets the number of chunks without a device sync
    (default: computed; slots past it are not scanned). ``block``: slots per loop step (a
    power of two).
    """
    if mode not in ("h2o", "streaming"):
        raise ValueError(f"mode: must be 'h2o' or 'streaming', got {mode!r}")
    if chunk < 1:
        raise ValueError(f"chunk: must be positive, got {chunk}")
    b, hkv = start.shape
    ks, vs = _Store(k, head_dim, k.dtype if not isinstance(k, QuantizedTensor) else torch.float32), \
        _Store(v, head_dim, v.dtype if not isinstance(v, QuantizedTensor) else torch.float32)
    h2o = mode == "h2o"
    if h2o and (score is None or logits is None or lse is None):
        raise ValueError("score, logits, lse: H2O's update needs all three")
    g = logits.shape[0] if h2o else 1
    gp = lse.shape[1] if h2o else 16
    dummy = pos
    if pos.device.type != "cuda" and not triton_interpreted():
        raise ValueError("pos: the Triton kernels need CUDA tensors; set TRITON_INTERPRET=1 to run them on the CPU")
    rows = b * hkv
    n_chunks = 1
    if h2o and rows:
        if max_len is None:
            max_len = int(length.max())
        n_chunks = max(1, triton.cdiv(max_len, chunk))
    partials = n_chunks > 1
    p_cnt = p_best = p_pos = p_slot = dummy
    if partials:
        # chunk's inner tile: (GP, BLOCK) as in the one-program scan, so that the group sums
        # (and hence the scores) are computed alike
        inner = min(block, _pow2(chunk))
        p_int = torch.empty((3, rows, n_chunks), dtype=torch.int64, device=pos.device)
        p_cnt, p_pos, p_slot = p_int[0], p_int[1], p_int[2]
        p_best = torch.empty((rows, n_chunks), dtype=torch.float32, device=pos.device)
        _h2o_scores_kernel[(rows, n_chunks)](
            logits, lse, score, pos, start, length, seq_lens, param_b, p_cnt, p_best, p_pos, p_slot,
            logits.shape[1], hkv, n_chunks,
            CHUNK=chunk, G=g, GP=gp, BLOCK=inner, num_warps=8 if inner >= 1024 else 4,
        )
    _evict_kernel[(rows,)](
        logits if h2o else dummy, lse if h2o else dummy, score if score is not None else dummy, pos,
        start, length, seq_lens, param_a, param_b,
        ks.data, ks.scale, ks.zero, vs.data, vs.scale, vs.zero,
        p_cnt, p_best, p_pos, p_slot,
        logits.shape[1] if h2o else 0, hkv, n_chunks,
        MODE=0 if h2o else 1, G=g, GP=gp, BLOCK=block, QUANT=ks.quant, DSTORE=ks.width, DSTORE_P=_pow2(ks.width),
        NG=ks.ng, NG_P=_pow2(ks.ng), HAS_ZERO=ks.has_zero, HAS_SCORE=score is not None,
        PARTIALS=partials, CHUNK=chunk if partials else 1,
        num_warps=4 if partials else (8 if block >= 1024 else 4),
    )


# ----------------------------------------------------------------------------- Quest

@triton.jit
def _bound_weights(q_rows, g_ok, ch, D: tl.constexpr):
    """Weights (len(ch),) float32 of bound channels ``ch`` (< 2 D: minima first, then maxima):
    the query group's sum of q's negative parts for a minimum, of its positive parts for a
    maximum, so that Σ_g Σ_d max(q·kmax, q·kmin) is one dot product with the page's row."""
    q = tl.load(q_rows + (ch % D)[None, :], mask=g_ok, other=0.0).to(tl.float32)
    return tl.sum(tl.where((ch < D)[None, :], tl.minimum(q, 0.0), tl.maximum(q, 0.0)), 0)


@triton.jit
def _code_byte0(x):
    """Byte 0 of int32 words holding codes + 128 (unsigned), as the float32 code. The byte fills
    the low mantissa bits of 2^23 (one unit per step), so an OR and a subtraction replace the
    int-to-float conversion, which runs at a fraction of the FMA rate."""
    return ((x & 0xFF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388736.0      # 2^23 + 128


@triton.jit
def _code_byte1(x):
    """Byte 1 of the words, as the float32 code: in bits 8..15 of 2^15's mantissa a step is one unit."""
    return ((x & 0xFF00) | 0x47000000).to(tl.float32, bitcast=True) - 32896.0        # 2^15 + 128


@triton.jit
def _quest_score_kernel(Q, KB, KSCALE, TABLE, SEQ, OUT,
                        stride_qb, stride_qh, stride_bp, stride_bh, stride_table, width,
                        kv_heads, page_size, pages_per_prog,
                        G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BLOCK_P: tl.constexpr,
                        INT8: tl.constexpr):
    """One program: one (sequence, KV head) and ``pages_per_prog`` logical pages, BLOCK_P at a
    time, each page one row of 2 D bound values (minima, then maxima) read as a 2-D tile.
    INT8: KB holds the codes as int32 words (4 codes each, little endian) and strides count
    words; otherwise values and strides are in the bounds' dtype."""
    r = tl.program_id(0)
    c = tl.program_id(1)
    b = r // kv_heads
    kvh = r % kv_heads
    g = tl.arange(0, GP)
    g_ok = (g < G)[:, None]
    q_rows = Q + b.to(tl.int64) * stride_qb + (kvh * G + g).to(tl.int64)[:, None] * stride_qh
    seq = tl.load(SEQ + b).to(tl.int64)
    cur = tl.maximum(seq - 1, 0) // page_size
    lo = c * pages_per_prog
    hi = tl.minimum(lo + pages_per_prog, width)
    out_row = OUT + r.to(tl.int64) * width
    table_row = TABLE + b.to(tl.int64) * stride_table
    head = kvh * stride_bh
    if INT8:
        j = tl.arange(0, D // 2)
        w0 = _bound_weights(q_rows, g_ok, 4 * j, D)
        w1 = _bound_weights(q_rows, g_ok, 4 * j + 1, D)
        w2 = _bound_weights(q_rows, g_ok, 4 * j + 2, D)
        w3 = _bound_weights(q_rows, g_ok, 4 * j + 3, D)
        for p0 in range(lo, hi, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            ok = (p < cur) & (p < hi)
            phys = tl.load(table_row + p, mask=ok, other=0).to(tl.int64)
            x = tl.load(KB + (phys * stride_bp + head)[:, None] + j[None, :], mask=ok[:, None], other=0)
            x = x ^ -2139062144                      # 0x80808080: each byte becomes code + 128
            x2 = x >> 16
            sc = (_code_byte0(x) * w0[None, :] + _code_byte1(x) * w1[None, :]
                  + _code_byte0(x2) * w2[None, :] + _code_byte1(x2) * w3[None, :])
            sc = tl.sum(sc, 1) * tl.load(KSCALE + phys * kv_heads + kvh, mask=ok, other=0.0)
            tl.store(out_row + p, tl.where(ok, sc, float("-inf")), mask=p < hi)
    else:
        e = tl.arange(0, 2 * D)
        wv = _bound_weights(q_rows, g_ok, e, D)
        for p0 in range(lo, hi, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            ok = (p < cur) & (p < hi)
            phys = tl.load(table_row + p, mask=ok, other=0).to(tl.int64)
            x = tl.load(KB + (phys * stride_bp + head)[:, None] + e[None, :], mask=ok[:, None], other=0)
            sc = tl.sum(x.to(tl.float32) * wv[None, :], 1)
            tl.store(out_row + p, tl.where(ok, sc, float("-inf")), mask=p < hi)


@triton.jit
def _head_row_weights(q_base, stride_qh, qh, qh_ok, HP: tl.constexpr, D: tl.constexpr):
    """:func:`_bound_weights` of every KV head at once, over whole rows: (HP, 2 D) float32, the
    group sums of q's negative parts (minima), then of its positive parts (maxima). ``qh``
    (HP, GP) the query heads of each KV head's group, ``qh_ok`` their mask; q is read once, by
    contiguous rows, and the halves are laid side by side in registers."""
    d = tl.arange(0, D)
    q = tl.load(q_base + (qh.to(tl.int64) * stride_qh)[:, :, None] + d[None, None, :],
                mask=qh_ok[:, :, None], other=0.0).to(tl.float32)
    neg = tl.sum(tl.minimum(q, 0.0), 1)
    pos = tl.sum(tl.maximum(q, 0.0), 1)
    return tl.reshape(tl.permute(tl.join(neg, pos), (0, 2, 1)), (HP, 2 * D))


@triton.jit
def _byte_weights(w, HP: tl.constexpr, D: tl.constexpr):
    """Row weights (HP, 2 D) split by a bound's byte position in its int32 word: four
    (HP, D / 2), the weights of codes 4 j, 4 j + 1, 4 j + 2 and 4 j + 3."""
    even, odd = tl.split(tl.reshape(w, (HP, D // 2, 2, 2)))       # positions (0, 2) and (1, 3)
    w0, w2 = tl.split(even)
    w1, w3 = tl.split(odd)
    return w0, w1, w2, w3


@triton.jit
def _quest_score_heads_kernel(Q, KB, KSCALE, TABLE, SEQ, OUT,
                              stride_qb, stride_qh, stride_bp, stride_bh, stride_table, width,
                              kv_heads, page_size, pages_per_prog,
                              G: tl.constexpr, GP: tl.constexpr, HP: tl.constexpr, D: tl.constexpr,
                              BLOCK_P: tl.constexpr, INT8: tl.constexpr, ROW_DENSE: tl.constexpr):
    """:func:`_quest_score_kernel` with every KV head in one program: one sequence and
    ``pages_per_prog`` logical pages, BLOCK_P at a time, as a (BLOCK_P, HP, row) tile of the
    pages' rows of all heads (HP: the KV heads padded to a power of two), reduced per head. The
    sequence length and page-table entries are loaded once for all heads, and the weights of
    every head once per program. ROW_DENSE: the heads' rows of a page follow each other
    (stride_bh == row length), so a page's bounds are one contiguous run."""
    b = tl.program_id(0)
    c = tl.program_id(1)
    hh = tl.arange(0, HP)
    h_ok = hh < kv_heads
    g = tl.arange(0, GP)
    qh = hh[:, None] * G + g[None, :]
    qh_ok = h_ok[:, None] & (g < G)[None, :]
    q_base = Q + b.to(tl.int64) * stride_qb
    seq = tl.load(SEQ + b).to(tl.int64)
    cur = tl.maximum(seq - 1, 0) // page_size
    lo = c * pages_per_prog
    hi = tl.minimum(lo + pages_per_prog, width)
    out_rows = OUT + (b * kv_heads + hh).to(tl.int64) * width               # (HP,)
    table_row = TABLE + b.to(tl.int64) * stride_table
    if INT8:
        j = tl.arange(0, D // 2)
        if ROW_DENSE:
            head = hh * (D // 2)
        else:
            head = hh * stride_bh
        w0, w1, w2, w3 = _byte_weights(_head_row_weights(q_base, stride_qh, qh, qh_ok, HP, D), HP, D)
        for p0 in range(lo, hi, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            ok = (p < cur) & (p < hi)
            phys = tl.load(table_row + p, mask=ok, other=0).to(tl.int64)
            m = ok[:, None] & h_ok[None, :]                                     # (BLOCK_P, HP)
            x = tl.load(KB + (phys * stride_bp)[:, None, None] + head[None, :, None] + j[None, None, :],
                        mask=m[:, :, None], other=0)
            x = x ^ -2139062144                      # 0x80808080: each byte becomes code + 128
            x2 = x >> 16
            sc = (_code_byte0(x) * w0[None, :, :] + _code_byte1(x) * w1[None, :, :]
                  + _code_byte0(x2) * w2[None, :, :] + _code_byte1(x2) * w3[None, :, :])
            sc = tl.sum(sc, 2) * tl.load(KSCALE + phys[:, None] * kv_heads + hh[None, :], mask=m, other=0.0)
            tl.store(out_rows[None, :] + p[:, None], tl.where(ok[:, None], sc, float("-inf")),
                     mask=(p < hi)[:, None] & h_ok[None, :])
    else:
        e = tl.arange(0, 2 * D)
        if ROW_DENSE:
            head = hh * (2 * D)
        else:
            head = hh * stride_bh
        wv = _head_row_weights(q_base, stride_qh, qh, qh_ok, HP, D)
        for p0 in range(lo, hi, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            ok = (p < cur) & (p < hi)
            phys = tl.load(table_row + p, mask=ok, other=0).to(tl.int64)
            m = ok[:, None] & h_ok[None, :]
            x = tl.load(KB + (phys * stride_bp)[:, None, None] + head[None, :, None] + e[None, None, :],
                        mask=m[:, :, None], other=0)
            sc = tl.sum(x.to(tl.float32) * wv[None, :, :], 2)
            tl.store(out_rows[None, :] + p[:, None], tl.where(ok[:, None], sc, float("-inf")),
                     mask=(p < hi)[:, None] & h_ok[None, :])


def _score_block(tile_bytes: int, head_dim: int, elem: int, pages_per_prog: int, heads: int = 1) -> int:
    """Pages per loop step: about ``tile_bytes`` of bounds (min and max of ``heads`` KV heads per
    page), a power of two."""
    per_page = heads * 2 * head_dim * elem
    block = 1 << max(0, (max(1, tile_bytes // per_page)).bit_length() - 1)
    return max(1, min(block, 256, _pow2(pages_per_prog)))


def bound_rows(kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """(pages, Hkv, 2 D) rows [min, max] of each page's bounds: a view when kmax sits right after
    kmin in memory (a cache's interleaved ``kbounds``), else an interleaved copy. int8 codes are
    returned as int32 words (pages, Hkv, D / 2), four codes each."""
    p, h, d = kmin.shape
    elem = kmin.element_size()
    word = 4 if kmin.dtype == torch.int8 else 1
    s0, s1 = kmin.stride(0), kmin.stride(1)
    interleaved = (kmin.stride() == kmax.stride() and kmin.stride(-1) == 1 and s1 >= 2 * d and s0 >= h * s1
                   and kmax.data_ptr() == kmin.data_ptr() + d * elem
                   and s0 % word == 0 and s1 % word == 0 and kmin.storage_offset() % word == 0)
    if interleaved:
        rows = kmin.as_strided((p, h, 2 * d), (s0, s1, 1))
    else:
        rows = torch.stack([kmin, kmax], 2).view(p, h, 2 * d)
    return rows.view(torch.int32) if word == 4 else rows


def quest_page_scores_triton(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, page_table: torch.Tensor,
                             seq_lens: torch.Tensor, page_size: int, *, max_pages: int | None = None,
                             scale: torch.Tensor | None = None, block_p: int | None = None,
                             pages_per_prog: int | None = None, num_warps: int | None = None,
                             num_stages: int | None = None, all_heads: bool | None = None) -> torch.Tensor:
    """Quest page scores (see :func:`reference.quest_page_scores_ref`), float32 (B, Hkv, W).

    kmin, kmax (pages, Hkv, D) with unit stride along D: the two halves of a cache's
    interleaved ``kbounds`` (read in place), or separate tensors (interleaved into a copy
    first); int8 codes need ``scale`` (pages, Hkv) float32. W = ``max_pages`` (default: the page
    table's width): pages at or past a sequence's current page score -inf and are never
    selected, so the largest current page of the batch is enough. Launch: ``pages_per_prog``
    logical pages per program, ``block_p`` per loop step (default: about
    ``tile_bytes`` of bounds); ``all_heads``: one program scores every KV head of a sequence's
    page range (block_p then counts pages of all heads), instead of one program per KV head.
    Defaults: LAUNCH["quest_scores"] for int8 bounds, LAUNCH["quest_scores_native"] otherwise.
    """
    b, h, d = q.shape
    hkv = kmin.shape[1]
    check_kernel_query(q, hkv)
    int8 = kmin.dtype == torch.int8
    if int8 != (scale is not None):
        raise ValueError("scale: int8 page bounds need their scale (pages, kv_heads), and only they take one")
    if kmin.shape != kmax.shape or kmin.dtype != kmax.dtype:
        raise ValueError(f"kmax: must match kmin's shape and dtype, got {tuple(kmax.shape)} {kmax.dtype} and "
                         f"{tuple(kmin.shape)} {kmin.dtype}")
    rows = bound_rows(kmin, kmax)
    if int8:
        scale = scale.to(torch.float32).contiguous()
    cfg = LAUNCH["quest_scores" if int8 else "quest_scores_native"]
    heads = bool(cfg["all_heads"] if all_heads is None else all_heads)
    pages_per_prog = cfg["pages_per_prog"] if pages_per_prog is None else pages_per_prog
    if block_p is None:
        block_p = _score_block(cfg["tile_bytes"], d, kmin.element_size(), pages_per_prog, hkv if heads else 1)
    pages_per_prog = max(pages_per_prog, block_p)
    width = page_table.shape[1] if max_pages is None else min(page_table.shape[1], max_pages)
    out = torch.empty(b, hkv, width, device=q.device, dtype=torch.float32)
    if q.stride(-1) != 1:
        q = q.contiguous()
    group = h // hkv
    page_table = page_table.contiguous()
    args = (q, rows, scale if int8 else rows, page_table, seq_lens.contiguous(),
            out, q.stride(0), q.stride(1), rows.stride(0), rows.stride(1), page_table.stride(0),
            width, hkv, page_size, pages_per_prog)
    launch = dict(G=group, GP=max(2, _pow2(group)), D=d, BLOCK_P=block_p, INT8=int8,
                  num_warps=cfg["num_warps"] if num_warps is None else num_warps,
                  num_stages=cfg["num_stages"] if num_stages is None else num_stages)
    chunks = triton.cdiv(max(width, 1), pages_per_prog)
    if heads:
        _quest_score_heads_kernel[(b, chunks)](*args, HP=max(2, _pow2(hkv)),
                                               ROW_DENSE=rows.stride(1) == rows.shape[2], **launch)
    else:
        _quest_score_kernel[(b * hkv, chunks)](*args, **launch)
    return out


@triton.jit
def _quest_select_kernel(SCORES, SEQ, NSEL, PLIST, NLIST, stride_s, n_pages, stride_pl, kv_heads, page_size,
                         NP: tl.constexpr, WP: tl.constexpr):
    r = tl.program_id(0)
    b = r // kv_heads
    seq = tl.load(SEQ + b).to(tl.int64)
    cur = tl.maximum(seq - 1, 0) // page_size
    nsel = tl.load(NSEL + b).to(tl.int64)
    p = tl.arange(0, NP)
    cand = (p < cur) & (p < n_pages)
    sc = tl.load(SCORES + r.to(tl.int64) * stride_s + p, mask=cand, other=float("-inf"))
    sc = tl.where(sc == 0.0, 0.0, sc)                  # -0.0 ties with 0.0, as in the reference
    bits = sc.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # signed order of key = order of the floats
    ukey = key ^ -2147483648                            # the same order read as unsigned bits
    # radix-16 search, most significant digit first, of the need-th largest key. ``match``: the
    # candidates sharing the digits found so far (``count`` of them), of which ``need`` are
    # still to take. Each pass counts them per value of the next 4 bits (a 32-bin histogram,
    # bin 16 collects the rest) and fixes that digit; it stops once every match is taken
    # (count == need), or after 8 passes with the exact key.
    count = tl.sum(cand.to(tl.int32), 0)
    need = tl.minimum(nsel, count.to(tl.int64)).to(tl.int32)
    match = cand
    prefix = tl.zeros([], dtype=tl.int32)
    shift = tl.full([], 32, dtype=tl.int32)
    bins = tl.arange(0, 32)
    digit_bin = bins < 16
    while (shift > 0) & (count > need):
        shift -= 4
        digit = (ukey >> shift) & 15
        hist = tl.where(digit_bin, tl.histogram(tl.where(match, digit, 16), 32), 0)
        above = count - tl.cumsum(hist, 0)             # matches with a larger digit than the bin's
        # the digit t: the largest with >= need matches at or above it. One max over
        # (digit, matches above it, its own matches) packed into int64 gives all three
        packed = (bins.to(tl.int64) << 40) | (above.to(tl.int64) << 20) | hist.to(tl.int64)
        best = tl.max(tl.where(digit_bin & (above + hist >= need), packed, -1), 0)
        t = (best >> 40).to(tl.int32)
        need -= ((best >> 20) & 0xFFFFF).to(tl.int32)
        count = (best & 0xFFFFF).to(tl.int32)
        prefix = prefix | (t << shift)
        match = match & (digit == t)
    # keys outside ``match`` are above or below every match, as their digits decide
    gt = cand & ~match & (key > (prefix ^ -2147483648))
    tie = match
    # one scan: running counts of keys above the threshold (low 16 bits) and of ties (high 16)
    run = tl.cumsum(gt.to(tl.int32) + (tie.to(tl.int32) << 16), 0)
    n_gt = run & 0xFFFF
    n_tie = (run >> 16) & 0xFFFF
    sel = gt | (tie & (n_tie <= need))                  # ties go to the lower pages
    rank = n_gt + tl.minimum(n_tie, need) - 1
    dense = cur <= nsel
    sel = tl.where(dense, cand, sel)
    rank = tl.where(dense, p, rank)
    count = tl.sum(sel.to(tl.int32), 0)
    row = PLIST + r.to(tl.int64) * stride_pl
    w = tl.arange(0, WP)
    tl.store(row + w, tl.full([WP], -1, tl.int32), mask=(w > count) & (w < stride_pl))
    tl.store(row + rank, p.to(tl.int32), mask=sel)
    tl.store(row + count, cur.to(tl.int32))
    tl.store(NLIST + r, count + 1)


def quest_select_triton(scores: torch.Tensor, seq_lens: torch.Tensor, page_size: int, n_select: torch.Tensor,
                        width: int, *, num_warps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quest's page list (see :func:`reference.quest_select_ref`): an exact top-k per (sequence,
    KV head) by a radix-16 search of the scores' bits (at most 8 passes, fewer once the
    threshold's digits single out exactly the pages to take), ties to the lower page.

    scores (B, Hkv, W) float32: only pages below both W and a sequence's current page are
    candidates (pass W = the largest current page of the batch, not one more: the kernel's tile
    is W rounded up to a power of two). n_select (B,) int32; ``width`` >= max(n_select) + 1.
    Returns (page_list (B, Hkv, width) int32 -1 padded, list_len (B, Hkv) int32).
    """
    b, hkv, mp = scores.shape
    if mp > MAX_SELECT_PAGES:
        raise ValueError(f"scores: at most {MAX_SELECT_PAGES} pages per sequence in the Triton selection, got {mp}")
    plist = torch.empty(b, hkv, width, device=scores.device, dtype=torch.int32)
    nlist = torch.empty(b, hkv, device=scores.device, dtype=torch.int32)
    if num_warps is None:
        num_warps = LAUNCH["quest_select"]["num_warps"] if mp >= 2048 else 4
    # at least one element per thread: the histogram then sees no replicated elements
    np_ = max(32 * num_warps, _pow2(mp))
    _quest_select_kernel[(b * hkv,)](scores.contiguous(), seq_lens.contiguous(), n_select.contiguous(), plist, nlist,
                                     mp, mp, width, hkv, page_size, NP=np_, WP=max(16, _pow2(width)),
                                     num_warps=num_warps)
    return plist, nlist


# ----------------------------------------------------------------------------- appending a token

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

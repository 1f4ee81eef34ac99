"""Quest's page scoring and top-k page selection over a paged store.

:func:`quest_page_scores_triton` and :func:`quest_select_triton`: Quest's page upper bound
summed over the KV head's query group (the group sum folds into one weight vector over a
page's interleaved min/max row, so each page's bounds are one contiguous read; int8 codes
are read as int32 words and widened by exponent tricks instead of int-to-float
conversions), and an exact top-k by a radix-16 search on the scores' bits (at most 8
histogram passes, ties to the lower page), writing the sorted page list plus the current
page. The scoring runs one program per (sequence, KV head, page range), or with
``all_heads`` one per (sequence, page range) over the pages' rows of every KV head.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import LAUNCH, MAX_SELECT_PAGES, _pow2, check_kernel_query


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


# The scored width and the select kernel's page count follow the cache length: not specialised on,
# or Triton would compile new variants while generating (see sparsa.ops.nsa.triton_decode).
@triton.jit(do_not_specialize=["width"])
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


@triton.jit(do_not_specialize=["width"])
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


@triton.jit(do_not_specialize=["stride_s", "n_pages"])
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


__all__ = ["bound_rows", "quest_page_scores_triton", "quest_select_triton"]

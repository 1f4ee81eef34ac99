"""Reference sparse decode: one query step reading a subset of the KV cache.

The subset is given per (batch, KV head) and shared by that head's query group, as Quest,
SnapKV and NSA's selection do. Either token positions or page numbers (``page_size`` tokens
each) are accepted.
"""
from __future__ import annotations

import math

import torch

from .._shared.decode_ref import pages_to_tokens, sparse_decode_ref  # noqa: F401  (part of this spec)
from .._shared.quant_format import QuantizedTensor


# ---------------------------------------------------------------------------------------------
# Decode over compact caches: a per-head variable-length store and a paged store.
#
# Both are "row stores": a (rows, head_dim) tensor, or a QuantizedTensor whose leading shape is
# (rows,), holding one token of one KV head per row.
#
# * variable length: KV head (b, h) owns rows [start[b, h], start[b, h] + length[b, h]);
# * paged: a page pool (pages, kv_heads, page_size, head_dim) viewed as rows
#   ((page * kv_heads + h) * page_size + offset); ``page_table[b, i]`` is the physical page of
#   sequence b's logical page i, and ``page_list[b, h]`` the logical pages one step reads.
# ---------------------------------------------------------------------------------------------

def _store_rows(store) -> int:
    return int(store.data.shape[0] if isinstance(store, QuantizedTensor) else store.shape[0])


def gather_rows(store, rows: torch.Tensor) -> torch.Tensor:
    """Vectors (*rows.shape, head_dim) of a row store at int64 ``rows`` (all in range), in float32
    (float64 stores stay float64)."""
    flat = rows.reshape(-1)
    if isinstance(store, QuantizedTensor):
        out = store.map(lambda x: x.index_select(0, flat)).dequantize(torch.float32)
    else:
        out = store.index_select(0, flat)
        out = out if out.dtype == torch.float64 else out.float()
    return out.reshape(*rows.shape, out.shape[-1])


def _attend_rows(q: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor, valid: torch.Tensor,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, H, D); k_rows, v_rows (B, Hkv, n, D) float; valid (B, Hkv, n) bool.

    Returns (out (B, H, D) float32/64, probabilities (B, Hkv, n) summed over each query group).
    """
    b, h, d = q.shape
    hkv = k_rows.shape[1]
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf = q.to(ct).view(b, hkv, h // hkv, d)
    s = torch.einsum("bkgd,bknd->bkgn", qf, k_rows.to(ct)) * scale
    s = s.masked_fill(~valid[:, :, None, :], float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    den = p.sum(-1, keepdim=True)
    p = torch.where(den > 0, p / den.clamp_min(torch.finfo(ct).tiny), torch.zeros_like(p))
    o = torch.einsum("bkgn,bknd->bkgd", p, v_rows.to(ct))
    return o.reshape(b, h, d), p.sum(2)


def check_varlen_layout(q: torch.Tensor, start: torch.Tensor, length: torch.Tensor, rows: int) -> tuple[int, int]:
    """Validate the layout tensors of a variable-length store; returns (batch, kv_heads)."""
    if q.ndim != 3:
        raise ValueError(f"q: expected (batch, heads, head_dim), got shape {tuple(q.shape)}")
    if start.ndim != 2 or start.shape[0] != q.shape[0] or start.shape != length.shape:
        raise ValueError(f"start, length: expected equal shapes (batch={q.shape[0]}, kv_heads), "
                         f"got {tuple(start.shape)} and {tuple(length.shape)}")
    hkv = start.shape[1]
    if hkv < 1 or q.shape[1] % hkv:
        raise ValueError(f"start: kv_heads ({hkv}) must divide q's heads ({q.shape[1]})")
    if start.numel() and (int(start.min()) < 0 or int((start + length).max()) > rows or int(length.min()) < 0):
        raise ValueError(f"start, length: every row range must lie in [0, {rows})")
    return q.shape[0], hkv


def varlen_decode_ref(q: torch.Tensor, k, v, start: torch.Tensor, length: torch.Tensor, *,
                      scale: float | None = None,
                      return_probs: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One decode query per head over a variable-length per-KV-head store.

    q: (B, H, head_dim); k, v: row stores (tensor (rows, head_dim) or QuantizedTensor);
    start, length: (B, Hkv) int, KV head (b, h) reading rows [start, start + length).
    Returns out (B, H, head_dim) in q's dtype (zeros for an empty head) and, with
    ``return_probs``, (B, Hkv, max length) float32 softmax probabilities summed over each query
    group, aligned with the rows of each head (0 past its length).
    """
    b, hkv = check_varlen_layout(q, start, length, _store_rows(k))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    n = int(length.max()) if length.numel() else 0
    j = torch.arange(max(n, 1), device=q.device)
    valid = j[None, None, :] < length.to(q.device)[..., None]
    valid &= j[None, None, :] < n
    rows = torch.where(valid, start.to(torch.int64)[..., None] + j, torch.zeros_like(j))
    out, probs = _attend_rows(q, gather_rows(k, rows), gather_rows(v, rows), valid, scale)
    out = out.to(q.dtype)
    if return_probs:
        return out, probs[..., :n].float()
    return out


def paged_rows(page_table: torch.Tensor, seq_lens: torch.Tensor, page_list: torch.Tensor, page_size: int,
               kv_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the paged store one step reads, and their validity.

    page_table (B, max_pages) int; seq_lens (B,) tokens per sequence; page_list (B, Hkv, W)
    logical pages (-1 = unused). Returns rows (B, Hkv, W * page_size) int64 (0 where invalid)
    and valid (B, Hkv, W * page_size) bool: listed pages' tokens below the sequence length.
    """
    b, hkv, w = page_list.shape
    lp = page_list.to(torch.int64)
    off = torch.arange(page_size, device=lp.device)
    tok = lp[..., None] * page_size + off                                    # (B, Hkv, W, P)
    valid = (lp[..., None] >= 0) & (tok < seq_lens.to(lp.device).view(b, 1, 1, 1))
    phys = page_table.to(torch.int64).gather(1, lp.clamp_min(0).reshape(b, -1)).view(b, hkv, w)
    head = torch.arange(hkv, device=lp.device).view(1, hkv, 1)
    rows = ((phys * kv_heads + head)[..., None] * page_size + off)
    rows = torch.where(valid, rows, torch.zeros_like(rows))
    return rows.flatten(-2), valid.flatten(-2)


def paged_decode_ref(q: torch.Tensor, k_pages, v_pages, page_table: torch.Tensor, seq_lens: torch.Tensor,
                     page_list: torch.Tensor, *, page_size: int, scale: float | None = None) -> torch.Tensor:
    """One decode query per head over the listed pages of a paged store.

    q: (B, H, head_dim); k_pages, v_pages: row stores of (pages * Hkv * page_size) rows;
    page_table (B, max_pages); seq_lens (B,); page_list (B, Hkv, W) logical page numbers, -1
    padded, no repeats. Tokens at or past a sequence's length are not read.
    Returns (B, H, head_dim) in q's dtype.
    """
    hkv = page_list.shape[1]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    rows, valid = paged_rows(page_table, seq_lens, page_list, page_size, hkv)
    out, _ = _attend_rows(q, gather_rows(k_pages, rows), gather_rows(v_pages, rows), valid, scale)
    return out.to(q.dtype)


def current_pages(seq_lens: torch.Tensor, page_size: int) -> torch.Tensor:
    """(B,) int64 index of the page holding each sequence's last token (its current page)."""
    return (seq_lens.to(torch.int64) - 1).clamp_min(0) // page_size


# ---------------------------------------------------------------------------------------------
# Quest page bounds.
#
# A page's bounds are the per-channel min and max of its keys (for a quantized cache: of the
# dequantized keys). They are stored either in the keys' own dtype ("native") or as int8 codes
# with one float32 scale per (page, KV head) ("int8": code * scale, the min rounded down and
# the max rounded up, so the bounds still cover every key and Quest's score stays an upper
# bound of q·k). Either way min and max sit side by side, (pages, kv_heads, 2, head_dim).
# ---------------------------------------------------------------------------------------------

PAGE_BOUNDS = ("native", "int8")
HALF_BOUNDS = "int8"                # bf16/fp16 caches: half the metadata bytes of native bounds
BOUND_CODE_MAX = 127
BOUND_SCALE_UP = 1.0 + 2.0 ** -10   # the scale is widened so that no code leaves [-127, 127]
BOUND_SCALE_TINY = 2.0 ** -100      # scale of an all-zero page (kept far from float32 denormals)
BOUND_SCALE_BYTES = 4


def default_bounds(dtype: torch.dtype, quantized: bool) -> str:
    """Bound storage a cache gets when none is asked for: "int8" for int8/int4 caches and for
    bfloat16/float16 keys, "native" for float32/float64 keys (exact, for checks)."""
    if quantized:
        return "int8"
    return HALF_BOUNDS if dtype in (torch.bfloat16, torch.float16) else "native"


def resolve_bounds(bounds: str | None, dtype: torch.dtype, quantized: bool) -> str:
    """``bounds`` checked ("native", "int8" or None = :func:`default_bounds`); raises ValueError."""
    if bounds is None:
        return default_bounds(dtype, quantized)
    if bounds not in PAGE_BOUNDS:
        raise ValueError(f"bounds: must be one of {PAGE_BOUNDS} or None, got {bounds!r}")
    if bounds == "int8" and dtype == torch.float64 and not quantized:
        raise ValueError("bounds: 'int8' page bounds take float32/float16/bfloat16 or quantized caches, "
                         "not float64; use bounds='native'")
    return bounds


def bounds_bytes_per_page(bounds: str, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes of one page's bounds for one KV head: min and max (and the int8 scale)."""
    if bounds == "int8":
        return 2 * head_dim + BOUND_SCALE_BYTES
    return 2 * head_dim * torch.empty((), dtype=dtype).element_size()


def quantize_bounds(kmin: torch.Tensor, kmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int8 codes of page bounds, rounded outwards, with one scale per vector.

    kmin, kmax (..., D) float. ``scale = max |bound| / 127`` (widened by 2^-10); the max is
    rounded up and the min down, and a code whose product with the scale still falls short of
    its bound (a rounding of the division) moves one step further out, so that
    ``code_min * scale <= kmin`` and ``code_max * scale >= kmax`` hold in the arithmetic the
    scores use. Computed in float32 (float64 inputs in float64). Returns (code_min, code_max)
    (..., D) int8 and scale (...) float32 (float64 for float64 inputs).
    """
    ct = torch.float64 if kmin.dtype == torch.float64 else torch.float32
    lo, hi = kmin.to(ct), kmax.to(ct)
    amax = torch.maximum(lo.abs().amax(-1), hi.abs().amax(-1))
    scale = (amax / float(BOUND_CODE_MAX) * BOUND_SCALE_UP).clamp_min(BOUND_SCALE_TINY)
    s = scale[..., None]
    cmax = torch.ceil(hi / s)
    cmax = torch.where(cmax * s < hi, cmax + 1, cmax)
    cmin = torch.floor(lo / s)
    cmin = torch.where(cmin * s > lo, cmin - 1, cmin)
    lim = float(BOUND_CODE_MAX)
    return cmin.clamp(-lim, lim).to(torch.int8), cmax.clamp(-lim, lim).to(torch.int8), scale


def dequantize_bounds(cmin: torch.Tensor, cmax: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(kmin, kmax) (..., D) in the scale's dtype from int8 codes (..., D) and scale (...)."""
    s = scale[..., None]
    return cmin.to(scale.dtype) * s, cmax.to(scale.dtype) * s


def quest_page_scores_ref(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, page_table: torch.Tensor,
                          seq_lens: torch.Tensor, page_size: int, *, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Quest's score of every complete page before each sequence's current page.

    q: (B, H, D); kmin, kmax: (pages, Hkv, D) per physical page, the bounds themselves or, with
    ``scale`` (pages, Hkv) float32, int8 codes of bounds ``code * scale``; page_table
    (B, max_pages). Score of logical page i: Σ_{g in group} Σ_d max(q_gd·kmax_d, q_gd·kmin_d)
    = qpos·kmax + qneg·kmin with qpos, qneg the group sums of q's positive and negative parts
    (times the scale for int8 codes). Returns (B, Hkv, max_pages) float32, -inf at pages that
    are not candidates (i >= current page).
    """
    if (kmin.dtype == torch.int8) != (scale is not None):
        raise ValueError("scale: int8 page bounds need their scale (pages, kv_heads), and only they take one; "
                         f"got bounds of {kmin.dtype} with scale {'None' if scale is None else 'given'}")
    b, h, d = q.shape
    hkv = kmin.shape[1]
    mp = page_table.shape[1]
    qg = q.float().view(b, hkv, h // hkv, d)
    qpos, qneg = qg.clamp_min(0).sum(2), qg.clamp_max(0).sum(2)          # (B, Hkv, D)
    phys = page_table.to(torch.int64)
    kx = kmax.float()[phys]                                               # (B, mp, Hkv, D)
    kn = kmin.float()[phys]
    s = torch.einsum("bkd,bpkd->bkp", qpos, kx) + torch.einsum("bkd,bpkd->bkp", qneg, kn)
    if scale is not None:
        s = s * scale.float()[phys].transpose(1, 2)
    cand = torch.arange(mp, device=q.device)[None, :] < current_pages(seq_lens, page_size).to(q.device)[:, None]
    return s.masked_fill(~cand[:, None, :], float("-inf"))


def quest_select_ref(scores: torch.Tensor, seq_lens: torch.Tensor, page_size: int,
                     n_select: torch.Tensor | int) -> torch.Tensor:
    """Pages one Quest step reads: the best ``n_select`` candidates (ascending), then the current page.

    scores (B, Hkv, max_pages) from :func:`quest_page_scores_ref`; ``n_select`` an int or (B,)
    ints. A sequence whose current page is <= its ``n_select`` reads every page. Ties go to the
    lower page. Returns (B, Hkv, max(n_select) + 1) int32, -1 padded.
    """
    b, hkv, mp = scores.shape
    dev = scores.device
    nsel = torch.as_tensor(n_select, device=dev, dtype=torch.int64).expand(b)
    w = int(nsel.max()) + 1 if b else 1
    cur = current_pages(seq_lens, page_size).to(dev)
    page = torch.arange(mp, device=dev)
    cand = page[None, :] < cur[:, None]                                   # (B, mp)
    scores = scores.masked_fill(~cand[:, None, :], float("-inf"))
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(mp, device=dev).expand_as(order))
    dense = (cur <= nsel)[:, None, None]
    chosen = torch.where(dense, cand[:, None, :], (rank < nsel[:, None, None]) & cand[:, None, :])
    key = torch.where(chosen, page.expand_as(chosen), torch.full_like(chosen, mp, dtype=torch.int64))
    kept = key.sort(dim=-1).values
    if kept.shape[-1] < w:
        kept = torch.cat([kept, torch.full((b, hkv, w - kept.shape[-1]), mp, device=dev, dtype=kept.dtype)], -1)
    kept = kept[..., :w]
    out = torch.where(kept >= mp, torch.full_like(kept, -1), kept)
    count = chosen.sum(-1, keepdim=True)                                  # the current page goes last
    out = out.scatter(-1, count, cur.view(b, 1, 1).expand(b, hkv, 1).to(out.dtype))
    return out.to(torch.int32)


def h2o_victims_ref(score: torch.Tensor, pos: torch.Tensor, start: torch.Tensor, length: torch.Tensor,
                    seq_lens: torch.Tensor, heavy: torch.Tensor, recent: torch.Tensor) -> torch.Tensor:
    """The token H2O evicts after a step, per KV head (at most one: the cache is kept at budget).

    score, pos: (rows,) accumulated attention and logical position per row; start, length
    (B, Hkv); seq_lens (B,) tokens seen (the next step's token lands at seq_lens); heavy,
    recent (B,) budgets. Candidates are the tokens at positions <= seq_lens - recent; when there
    are more than ``heavy`` of them, the one with the least score goes (ties: the later token).
    Returns (B, Hkv) int64 slot (row - start) of the victim, -1 for none.
    """
    b, hkv = start.shape
    n = int(length.max()) if length.numel() else 0
    j = torch.arange(max(n, 1), device=score.device)
    valid = j[None, None, :] < length[..., None]
    rows = torch.where(valid, start.to(torch.int64)[..., None] + j, torch.zeros_like(j))
    p = torch.where(valid, pos.to(torch.int64)[rows], torch.full_like(rows, -1))
    limit = (seq_lens.to(torch.int64) - recent.to(torch.int64)).view(b, 1, 1)
    cand = valid & (p <= limit)
    sc = torch.where(cand, score.double()[rows], torch.full_like(rows, float("inf"), dtype=torch.float64))
    # least score first, then the largest position
    key_pos = torch.where(cand, p, torch.full_like(p, -1))
    order = torch.argsort(-key_pos, dim=-1, stable=True)
    sc_sorted = sc.gather(-1, order)
    first = sc_sorted.argmin(-1, keepdim=True)                   # argmin returns the first minimum
    victim = order.gather(-1, first)[..., 0]
    evict = cand.sum(-1) > heavy.to(torch.int64).view(b, 1)
    return torch.where(evict, victim, torch.full_like(victim, -1))


def streaming_victims_ref(pos: torch.Tensor, start: torch.Tensor, length: torch.Tensor, seq_lens: torch.Tensor,
                          sink: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """The token StreamingLLM evicts after a step: the oldest non-sink token once it is at or
    before ``seq_lens - window`` (it left the window). Returns (B, Hkv) int64 slot or -1."""
    b, hkv = start.shape
    n = int(length.max()) if length.numel() else 0
    j = torch.arange(max(n, 1), device=pos.device)
    valid = j[None, None, :] < length[..., None]
    rows = torch.where(valid, start.to(torch.int64)[..., None] + j, torch.zeros_like(j))
    p = torch.where(valid, pos.to(torch.int64)[rows], torch.full_like(rows, -1))
    cand = valid & (p >= sink.to(torch.int64).view(b, 1, 1))
    big = torch.iinfo(torch.int64).max
    key = torch.where(cand, p, torch.full_like(p, big))
    oldest, slot = key.min(-1)
    evict = oldest <= (seq_lens.to(torch.int64) - window.to(torch.int64)).view(b, 1)
    return torch.where(evict, slot, torch.full_like(slot, -1))

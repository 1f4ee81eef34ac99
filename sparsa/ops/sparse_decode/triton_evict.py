"""Eviction updates of a variable-length store (H2O, StreamingLLM).

:func:`evict_update_triton`: H2O's accumulation and single-token eviction, or StreamingLLM's
eviction, one program per KV head: it adds this step's probabilities to the accumulated
scores, picks the victim and moves the head's last token into the victim's slot (the store
stays compact and its order is irrelevant to attention). Long H2O heads are split: one
program per (KV head, chunk of slots) updates the scores and finds the chunk's candidate,
then one program per KV head merges the chunks' candidates and moves the token.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...backend import triton_interpreted
from .._shared.quant_format import QuantizedTensor
from .triton_common import _pow2, _Store


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


__all__ = ["evict_update_triton"]

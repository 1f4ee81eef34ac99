"""Triton kernels of the last-queries line mass (see :mod:`sparsa.ops.vertical_slash.estimate`).

Pass 1 (:func:`_row_stats_kernel`), one program per (head, split of ``EST_SPLIT`` keys, chunk
of 64 estimate rows): row maxima and exponential sums of the causal scores, combined over the
splits in torch. Pass 2 (:func:`_line_mass_kernel`), one program per (head, group of
``EST_TILES_PER_PROGRAM`` 64-key tiles, row chunk): the normalised probabilities of each tile,
their column sums (stored per key), and their sums along the 127 diagonals the tile meets: a
register gather moves ``p[i, i - r + 63]`` to column ``r`` so one sum over the rows gives
diagonal ``r``. Neighbouring tiles share 63 diagonals; torch adds the two halves in a fixed
order, so the result does not depend on scheduling. Without ``tl.gather`` (Triton before 3.2)
the probabilities go to a zero-padded (rows, m - 1 + kv_len) buffer summed along the
diagonals through a strided view instead.
"""
from __future__ import annotations

import warnings

import torch
import triton
import triton.language as tl

from ...backend import triton_interpreted
from .estimate_shapes import TRITON_DTYPES, TRITON_HEAD_DIMS, last_q_rows

LOG2E = 1.4426950408889634
EST_BLOCK_M = 64          # query rows per program (one chunk of the last_q rows)
EST_BLOCK_N = 64          # keys per tile
EST_TILES_PER_PROGRAM = 4
EST_SPLIT = 4096          # keys per program of the row-statistics pass
GATHER_AVAILABLE = hasattr(tl, "gather")


@triton.jit
def _last_query_rows(Q, b, h, stride_qb, stride_qh, stride_qm, q_len, m_rows, i, row_ok,
                     HEAD_DIM: tl.constexpr, DOT_F32: tl.constexpr):
    """Rows i (< m_rows) of the last m_rows queries of (b, h): a (len(i), HEAD_DIM) tile, zero
    past m_rows, in float32 when DOT_F32."""
    d = tl.arange(0, HEAD_DIM)
    qrow = (q_len - m_rows + i).to(tl.int64)
    q = tl.load(Q + b * stride_qb + h * stride_qh + qrow[:, None] * stride_qm + d[None, :],
                mask=row_ok[:, None], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    return q


@triton.jit
def _row_stats_kernel(
    Q, K, MP, LP,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    q_len, kv_len, m_rows, m_pad, heads, split_len, n_split, qk_scale,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
):
    bh = tl.program_id(0)
    sp = tl.program_id(1)
    rc = tl.program_id(2)
    b = (bh // heads).to(tl.int64)
    h = (bh % heads).to(tl.int64)
    hkv = h // GROUP
    i = rc * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = i < m_rows
    pos = kv_len - m_rows + i
    d = tl.arange(0, HEAD_DIM)
    n = tl.arange(0, BLOCK_N)
    q = _last_query_rows(Q, b, h, stride_qb, stride_qh, stride_qm, q_len, m_rows, i, row_ok, HEAD_DIM, DOT_F32)
    k_base = K + b * stride_kb + hkv * stride_kh
    lo = sp * split_len
    hi = tl.minimum(lo + split_len, kv_len)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for c0 in range(lo, hi, BLOCK_N):
        c = c0 + n
        c_ok = c < hi
        k = tl.load(k_base + c[:, None].to(tl.int64) * stride_kn + d[None, :], mask=c_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where((c[None, :] <= pos[:, None]) & c_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2(m_i - m_use) + tl.sum(tl.exp2(s - m_use[:, None]), 1)
        m_i = m_new
    out = (bh * n_split + sp).to(tl.int64) * m_pad + i
    tl.store(MP + out, m_i)
    tl.store(LP + out, l_i)


@triton.jit
def _line_mass_kernel(
    Q, K, MROW, RINV, VPART, DPART,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    q_len, kv_len, m_rows, m_pad, heads, n_tiles, qk_scale,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    TILES_PER_PROGRAM: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
    GATHER: tl.constexpr,
):
    bh = tl.program_id(0)
    tg = tl.program_id(1)
    rc = tl.program_id(2)
    n_rc = m_pad // BLOCK_M
    b = (bh // heads).to(tl.int64)
    h = (bh % heads).to(tl.int64)
    hkv = h // GROUP
    il = tl.arange(0, BLOCK_M)
    i = rc * BLOCK_M + il
    row_ok = i < m_rows
    pos = kv_len - m_rows + i
    d = tl.arange(0, HEAD_DIM)
    n = tl.arange(0, BLOCK_N)
    q = _last_query_rows(Q, b, h, stride_qb, stride_qh, stride_qm, q_len, m_rows, i, row_ok, HEAD_DIM, DOT_F32)
    row_max = tl.load(MROW + bh.to(tl.int64) * m_pad + i)
    row_inv = tl.load(RINV + bh.to(tl.int64) * m_pad + i)          # 1 / (sum * m); 0 past the rows
    k_base = K + b * stride_kb + hkv * stride_kh
    chunk = bh.to(tl.int64) * n_rc + rc
    # diagonal partial r (offset = first row's position - tile start - BLOCK_N + 1 + r) of row i
    # holds p[i, i - r + BLOCK_N - 1]
    r = tl.arange(0, 2 * BLOCK_N)
    src = il[:, None] - r[None, :] + (BLOCK_N - 1)
    src_ok = (src >= 0) & (src < BLOCK_N)
    src = tl.minimum(tl.maximum(src, 0), BLOCK_N - 1)
    for tt in range(TILES_PER_PROGRAM):
        t = tg * TILES_PER_PROGRAM + tt
        c = t * BLOCK_N + n
        c_ok = c < kv_len
        k = tl.load(k_base + c[:, None].to(tl.int64) * stride_kn + d[None, :], mask=c_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        visible = (c[None, :] <= pos[:, None]) & row_ok[:, None]
        p = tl.where(visible, tl.exp2(s - row_max[:, None]) * row_inv[:, None], 0.0)
        tl.store(VPART + chunk * kv_len + c, tl.sum(p, 0), mask=c_ok)
        if GATHER:
            diag = tl.sum(tl.where(src_ok, tl.gather(p, src, 1), 0.0), 0)
            in_range = t * (2 * BLOCK_N) + r < n_tiles * (2 * BLOCK_N)     # a vector mask: t < n_tiles
            tl.store(DPART + (chunk * n_tiles + t) * (2 * BLOCK_N) + r, diag, mask=in_range)
        else:
            # probabilities into a (rows, m - 1 + kv_len) buffer, summed along diagonals by torch
            width = kv_len + m_rows - 1
            ptr = DPART + (bh.to(tl.int64) * m_rows + i[:, None]) * width + (m_rows - 1) + c[None, :]
            tl.store(ptr, p, mask=row_ok[:, None] & c_ok[None, :])


_gather_ok = GATHER_AVAILABLE


def diagonal_path() -> str:
    """How pass 2 sums the diagonals in this process: "gather" or "buffer"."""
    return "gather" if _gather_ok else "buffer"


def _diagonal_partials_to_slash(part: torch.Tensor, kv_len: int, m: int) -> torch.Tensor:
    """(BH, n_rc, T, 2 * BLOCK_N) diagonal partials of every (row chunk, tile) -> (BH, kv_len).

    Partial ``r`` of tile ``t`` in chunk ``rc`` is offset
    ``kv_len - m + rc * BLOCK_M - t * BLOCK_N - BLOCK_N + 1 + r``: the upper half of tile
    ``t + 1`` lands on the lower half of tile ``t``.
    """
    bh, n_rc, nt, _ = part.shape
    bn = EST_BLOCK_N
    lo, hi = part[..., :bn], part[..., bn:]
    comb = lo.clone()
    comb[..., :-1, :] += hi[..., 1:, :]
    out = torch.zeros(bh, kv_len, dtype=part.dtype, device=part.device)
    for rc in range(n_rc):
        seq = torch.cat([comb[:, rc].flip(-2).reshape(bh, nt * bn), hi[:, rc, 0]], dim=-1)
        shift = nt * bn - (kv_len - m + rc * EST_BLOCK_M + 1)             # index of offset 0
        if shift + kv_len > seq.shape[-1]:
            seq = torch.nn.functional.pad(seq, (0, shift + kv_len - seq.shape[-1]))
        out += seq[:, shift:shift + kv_len]
    return out


def line_mass_triton(q: torch.Tensor, k: torch.Tensor, scale: float,
                     last_q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical and slash mass of the last ``last_q`` queries with the Triton kernels.

    Shapes and result as :func:`~sparsa.ops.vertical_slash.estimate.line_mass_reference`
    (float32). q/k: CUDA tensors (or CPU
    under ``TRITON_INTERPRET=1``), float16/bfloat16/float32, head_dim 64 or 128.
    """
    global _gather_ok
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    if q.dtype not in TRITON_DTYPES or d not in TRITON_HEAD_DIMS:
        raise ValueError(f"q: the Triton line mass takes head_dim in {TRITON_HEAD_DIMS} and float16/bfloat16/"
                         f"float32, got head_dim={d}, {q.dtype}")
    m = last_q_rows(last_q, lq)
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    bm, bn = EST_BLOCK_M, EST_BLOCK_N
    n_rc = triton.cdiv(m, bm)
    m_pad = n_rc * bm
    bhn = b * h
    dev = q.device
    qk_scale = scale * LOG2E
    common = dict(GROUP=h // hkv, BLOCK_M=bm, BLOCK_N=bn, HEAD_DIM=d,
                  DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                  DOT_F32=triton_interpreted() and q.dtype == torch.bfloat16)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))

    n_split = triton.cdiv(lk, EST_SPLIT)
    mp = torch.empty(bhn, n_split, m_pad, dtype=torch.float32, device=dev)
    lp = torch.empty_like(mp)
    _row_stats_kernel[(bhn, n_split, n_rc)](q, k, mp, lp, *strides, lq, lk, m, m_pad, h, EST_SPLIT, n_split,
                                            qk_scale, **common, num_warps=4)
    row_max = mp.amax(1)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    total = (lp * torch.exp2(mp - row_max[:, None])).sum(1)
    valid = torch.arange(m_pad, device=dev) < m
    row_inv = torch.where(valid & (total > 0), 1.0 / (total * m), torch.zeros_like(total)).contiguous()
    row_max = row_max.contiguous()

    n_tiles = triton.cdiv(lk, bn)
    vpart = torch.empty(bhn, n_rc, lk, dtype=torch.float32, device=dev)
    grid = (bhn, triton.cdiv(n_tiles, EST_TILES_PER_PROGRAM), n_rc)
    slash = None
    if _gather_ok:
        dpart = torch.empty(bhn, n_rc, n_tiles, 2 * bn, dtype=torch.float32, device=dev)
        try:
            _line_mass_kernel[grid](q, k, row_max, row_inv, vpart, dpart, *strides, lq, lk, m, m_pad, h, n_tiles,
                                    qk_scale, **common, TILES_PER_PROGRAM=EST_TILES_PER_PROGRAM, GATHER=True,
                                    num_warps=4)
            slash = _diagonal_partials_to_slash(dpart, lk, m)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - the gather does not build here: use the buffer path below
            warnings.warn(f"line mass: the register-gather kernel failed ({type(exc).__name__}: {str(exc)[:200]}); "
                          "using the buffer path from now on", RuntimeWarning, stacklevel=2)
            _gather_ok = False
    if slash is None:
        width = lk + m - 1
        buf = torch.zeros(bhn, m, width, dtype=torch.float32, device=dev)
        _line_mass_kernel[grid](q, k, row_max, row_inv, vpart, buf, *strides, lq, lk, m, m_pad, h, n_tiles,
                                qk_scale, **common, TILES_PER_PROGRAM=EST_TILES_PER_PROGRAM, GATHER=False,
                                num_warps=4)
        slash = buf.as_strided((bhn, m, lk), (m * width, width + 1, 1)).sum(1).flip(-1)
    vertical = vpart.sum(1) if n_rc > 1 else vpart[:, 0]
    return vertical.reshape(b, h, lk), slash.reshape(b, h, lk)


__all__ = ["EST_BLOCK_M", "EST_BLOCK_N", "GATHER_AVAILABLE", "diagonal_path", "line_mass_triton"]

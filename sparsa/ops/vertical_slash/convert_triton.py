"""Triton kernel of the vertical-slash index conversion (diagonals -> key tiles).

:func:`slash_tiles_triton`: one program per (batch, head_x, group of 128 query blocks) walks the
head's runs of consecutive diagonals (sorted by descending offset) once, so a contiguous band of
diagonals costs one step per tile rather than one per diagonal; each lane keeps one query
block's greedy state (covered-up-to position, tile counts), emits 64-key tiles where a run's key
range is not yet covered and classifies each tile as clean (no mask) or masked (with or without
the offset bit test); superset layouts also count each block's pairs. See
:mod:`sparsa.ops.vertical_slash.convert` for the rules and the torch spec.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .runs import GATHER_BIT, VS_TILE, slash_runs, tiles_width

CONVERT_LANES = 128


@triton.jit
def _keys_below(x, p0, nrows):
    """Causal pairs of a query block (rows p0 .. p0 + nrows - 1) with all keys < x (int64)."""
    x = x.to(tl.int64)
    u = tl.minimum(tl.maximum(x - p0 - 1, 0), nrows - 1)
    return nrows * tl.minimum(x, p0 + 1) + u * nrows - u * (u + 1) // 2


@triton.jit
def _columns_below(x, p0, last, nrows, cpre, cpos, c_first, s_first, need):
    """Causal pairs of a query block with the vertical columns < x (int64)."""
    y = tl.minimum(tl.maximum(x, p0 + 1), last + 1)
    c_x = tl.load(cpre + tl.minimum(x, p0 + 1), mask=need, other=0).to(tl.int64)
    c_y = tl.load(cpre + y, mask=need, other=0).to(tl.int64)
    s_y = tl.load(cpos + y, mask=need, other=0)
    return nrows * c_x + (last + 1).to(tl.int64) * (c_y - c_first) - (s_y - s_first)


@triton.jit
def _emit_tile(s, need, p0, last, nrows, kv_len, dpre, cpre, cpos, c_first, s_first, t_row, width,
               n_clean, n_masked, pairs, TILE: tl.constexpr, EXACT: tl.constexpr, GATHER: tl.constexpr):
    """Classify the tiles at key ``s`` (one per lane where ``need``), store their codes and
    update the lane counters (and, for superset layouts, the pair counts)."""
    below = s + TILE - 1 <= p0
    hi_key = tl.minimum(s + TILE, kv_len)
    c_hi = tl.load(cpre + hi_key, mask=need, other=0)
    c_lo = tl.load(cpre + tl.minimum(s, kv_len), mask=need, other=0)
    clean = below & (c_hi == c_lo)
    code = s
    if EXACT:
        lo = tl.maximum(p0 - (s + TILE - 1), 0)
        hi = tl.maximum(last - s, 0)
        d_hi = tl.load(dpre + tl.minimum(hi + 1, kv_len), mask=need, other=0)
        d_lo = tl.load(dpre + tl.minimum(lo, kv_len), mask=need, other=0)
        full = (d_hi - d_lo) == (hi - lo + 1)
        clean = clean & full
        code = tl.where(full, s, s + GATHER)
    else:
        tile = (_keys_below(hi_key, p0, nrows) - _keys_below(s, p0, nrows)
                - (_columns_below(hi_key, p0, last, nrows, cpre, cpos, c_first, s_first, need)
                   - _columns_below(s, p0, last, nrows, cpre, cpos, c_first, s_first, need)))
        pairs += tl.where(need, tile, 0)
    slot = tl.where(clean, n_clean, width - 1 - n_masked)
    tl.store(t_row + slot, code, mask=need)
    n_clean += (need & clean).to(tl.int32)
    n_masked += (need & (clean == 0)).to(tl.int32)
    return n_clean, n_masked, pairs


@triton.jit
def _slash_tiles_kernel(
    RH, RL, NRUN, DPRE, CPRE, CPOS, TILES, NCLEAN, NMASKED, PAIRS,
    stride_rb, stride_rh, stride_pb, stride_ph, stride_tb, stride_th, stride_tq, stride_cb, stride_ch,
    n_qblocks, q_len, kv_len, heads_x, width,
    LANES: tl.constexpr, BLOCK_Q: tl.constexpr, TILE: tl.constexpr, EXACT: tl.constexpr,
    GATHER: tl.constexpr,
):
    pid = tl.program_id(1)
    b = (pid // heads_x).to(tl.int64)
    hx = (pid % heads_x).to(tl.int64)
    qb = tl.program_id(0) * LANES + tl.arange(0, LANES)
    q_ok = qb < n_qblocks
    p0 = kv_len - q_len + qb * BLOCK_Q
    end = tl.minimum(p0 + BLOCK_Q, kv_len)        # one past the block's last visible position
    last = end - 1
    nrows = (end - p0).to(tl.int64)
    n_runs = tl.load(NRUN + pid)                  # run_count is contiguous (B, Hx)
    rh_row = RH + b * stride_rb + hx * stride_rh
    rl_row = RL + b * stride_rb + hx * stride_rh
    dpre = DPRE + b * stride_pb + hx * stride_ph
    cpre = CPRE + b * stride_pb + hx * stride_ph
    cpos = CPOS + b * stride_pb + hx * stride_ph
    t_row = TILES + b * stride_tb + hx * stride_th + qb.to(tl.int64) * stride_tq

    n_clean = tl.zeros([LANES], dtype=tl.int32)
    n_masked = tl.zeros([LANES], dtype=tl.int32)
    pairs = tl.zeros([LANES], dtype=tl.int64)
    c_first = tl.zeros([LANES], dtype=tl.int64)
    s_first = tl.zeros([LANES], dtype=tl.int64)
    if not EXACT:
        c_first = tl.load(cpre + p0 + 1, mask=q_ok, other=0).to(tl.int64)
        s_first = tl.load(cpos + p0 + 1, mask=q_ok, other=0)

    # a run of diagonals o_lo..o_hi covers the keys [p0 - o_hi, end - o_lo): the greedy pass over
    # its diagonals emits consecutive tiles from max(range start, covered) until that range is covered
    covered = tl.zeros([LANES], dtype=tl.int32)
    for i in range(0, n_runs):
        o_hi = tl.load(rh_row + i)
        o_lo = tl.load(rl_row + i)
        hi = end - o_lo
        need = q_ok & (hi > covered)
        s0 = tl.maximum(tl.maximum(p0 - o_hi, 0), covered)
        cnt = tl.where(need, (hi - s0 + TILE - 1) // TILE, 0)
        for t in range(0, tl.max(cnt, 0)):
            n_clean, n_masked, pairs = _emit_tile(
                s0 + t * TILE, t < cnt, p0, last, nrows, kv_len, dpre, cpre, cpos, c_first, s_first, t_row, width,
                n_clean, n_masked, pairs, TILE, EXACT, GATHER)
        covered = tl.where(need, s0 + cnt * TILE, covered)

    c_off = b * stride_cb + hx * stride_ch + qb
    tl.store(NCLEAN + c_off, n_clean, mask=q_ok)
    tl.store(NMASKED + c_off, n_masked, mask=q_ok)
    if not EXACT:
        tl.store(PAIRS + c_off, pairs, mask=q_ok)


def slash_tiles_triton(slash: torch.Tensor, slash_count: torch.Tensor, diag_prefix: torch.Tensor,
                       column_prefix: torch.Tensor, q_len: int, kv_len: int, block_q: int = 64,
                       exact: bool = True, column_positions: torch.Tensor | None = None,
                       exact_width: bool | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Triton version of :func:`~sparsa.ops.vertical_slash.convert.slash_tiles_reference`.

    slash: (B, Hx, NS) int32 offsets sorted descending, unique; slash_count: (B, Hx) int32;
    diag_prefix, column_prefix: (B, Hx, kv_len + 1) int32; column_positions: (B, Hx,
    kv_len + 1) int64 running sums of the column positions (required when ``exact`` is
    False). Returns (tiles (B, Hx, NQ, width) int32, clean_count, masked_count (B, Hx, NQ)
    int32, tile_pairs (B, Hx, NQ) int64 or None when ``exact``). ``exact_width``: see
    :func:`~sparsa.ops.vertical_slash.runs.tiles_width` (the default reads nothing back on CUDA).
    """
    if not exact and column_positions is None:
        raise ValueError("column_positions: required when exact is False")
    b, hx, ns = slash.shape
    nq = (q_len + block_q - 1) // block_q
    run_high, run_low, run_count = slash_runs(slash, slash_count)
    width = tiles_width(run_high, run_low, run_count, q_len, kv_len, block_q, exact_width)
    dpre, cpre = diag_prefix.contiguous(), column_prefix.contiguous()
    cpos = cpre if column_positions is None else column_positions.to(torch.int64).contiguous()
    dev = slash.device
    tiles = torch.full((b, hx, nq, width), -1, dtype=torch.int32, device=dev)
    n_clean = torch.empty((b, hx, nq), dtype=torch.int32, device=dev)
    n_masked = torch.empty((b, hx, nq), dtype=torch.int32, device=dev)
    pairs = torch.zeros((b, hx, nq), dtype=torch.int64, device=dev)
    grid = (triton.cdiv(nq, CONVERT_LANES), b * hx)
    _slash_tiles_kernel[grid](
        run_high, run_low, run_count, dpre, cpre, cpos, tiles, n_clean, n_masked, pairs,
        run_high.stride(0), run_high.stride(1), dpre.stride(0), dpre.stride(1),
        tiles.stride(0), tiles.stride(1), tiles.stride(2), n_clean.stride(0), n_clean.stride(1),
        nq, q_len, kv_len, hx, width,
        LANES=CONVERT_LANES, BLOCK_Q=block_q, TILE=VS_TILE, EXACT=exact, GATHER=GATHER_BIT, num_warps=4,
    )
    return tiles, n_clean, n_masked, None if exact else pairs


__all__ = ["slash_tiles_triton"]

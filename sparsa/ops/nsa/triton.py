"""Native Sparse Attention on Triton kernels: prefill forward + backward (autograd) and decode.

Same arguments and results as :func:`~sparsa.ops.nsa.reference.nsa_attention_ref` and
:func:`~sparsa.ops.nsa.reference.nsa_decode_ref`. The compressed keys/values are made in
PyTorch (:func:`~sparsa.ops.nsa.reference.compress_blocks`: mean-pool or the learned map; a
few percent of the work) so autograd carries their gradients to the compression parameters;
everything else runs in the kernels of :mod:`.triton_fwd`, :mod:`.triton_bwd` and
:mod:`.triton_decode`:

forward: compression attention fused with the selection scores and the top-k
(``cmp_topk_fwd``) -> sliding window (``window_fwd``) -> selected blocks with the gate mix in
its epilogue (``selection_fwd``). Backward: one preprocessing pass for the gate gradients
and the per-branch ``delta``, then dQ and dK/dV of each branch (selection dK/dV through an
inverted index of which queries chose each block).

Supported: float16, bfloat16 (float32 too: exact "ieee" products, slow on a GPU, for checks);
head_dim 64 or 128; up to 32 query heads per KV head (any count: the group is padded to a
power of two); ``sel_block`` a power of two in [16, 128]; ``sel_block / stride`` a power of
two; ``block - stride <= sel_block`` (a compressed token overlaps at most two selection
blocks); ``n_select <= 64``. CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
Other inputs get a ValueError from these functions; :func:`sparsa.ops.nsa.nsa_attention`
runs the reference for them under ``backend="auto"``.

The block choice is discrete and, as in the reference, carries no gradient. Its scores are
computed in float32 (the bf16 products of the selection-score pass are split in three bf16
terms), so the choice equals the reference's except between blocks whose scores differ by
float32 rounding.
"""
from __future__ import annotations

import torch

from ..._validation import check_qkv, check_scale
from ...backend import triton_interpreted
from .._shared.decode_ref import pages_to_tokens
from .._shared.masks import query_positions
from .config import NSAConfig
from .reference import Compressor, NSAAux, _check_inputs, _compressed_kv, nsa_pairs_per_row
from .triton_bwd import MODE_CMP, MODE_WIN, band_dkdv, band_dq, preprocess, selection_dkdv, selection_dq
from .triton_decode import nsa_decode_fwd
from .triton_fwd import cmp_topk_fwd, selection_fwd, window_fwd

HEAD_DIMS = (64, 128)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_GROUP = 32
MAX_SELECT = 64


def _is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, cfg: NSAConfig) -> str | None:
    """Why the kernels cannot take these inputs (None if they can). q/k as for the reference."""
    d = q.shape[-1]
    if q.dtype not in KERNEL_DTYPES:
        return f"dtype must be float16/bfloat16/float32, got {q.dtype}"
    if d not in HEAD_DIMS:
        return f"head_dim must be in {HEAD_DIMS}, got {d}"
    if q.ndim >= 2 and k.ndim == 4 and k.shape[1] > 0 and q.shape[1] // k.shape[1] > MAX_GROUP:
        return f"query heads per KV head must be <= {MAX_GROUP}, got {q.shape[1] // k.shape[1]}"
    if q.device.type != "cuda" and not triton_interpreted():
        return f"needs CUDA tensors (got {q.device}); set TRITON_INTERPRET=1 to run the kernels on the CPU"
    if not isinstance(cfg, NSAConfig):
        return None  # the reference's checks name the problem
    sb, r = cfg.sel_block, cfg.sel_block // cfg.stride
    if not (_is_pow2(sb) and 16 <= sb <= 128):
        return f"sel_block must be a power of two in [16, 128], got {sb}"
    if not _is_pow2(r):
        return f"sel_block / stride must be a power of two, got {sb}/{cfg.stride}"
    if cfg.block - cfg.stride > sb:
        return f"block - stride must be <= sel_block, got block={cfg.block}, stride={cfg.stride}, sel_block={sb}"
    if cfg.n_select > MAX_SELECT:
        return f"n_select must be <= {MAX_SELECT}, got {cfg.n_select}"
    return None


def _require_supported(q: torch.Tensor, k: torch.Tensor, cfg: NSAConfig) -> None:
    reason = unsupported_reason(q, k, cfg)
    if reason is not None:
        name = "cfg" if reason.startswith(("sel_block", "block", "n_select")) else "q"
        raise ValueError(f"{name}: the Triton NSA kernels cannot take this input: {reason}")


def _lastdim(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


class _NSAFunction(torch.autograd.Function):
    """Autograd binding of the prefill kernels.

    Inputs q (B, H, T, D), k, v (B, Hkv, S, D), gates (B, H, T, 3), k_cmp, v_cmp
    (B, Hkv, n_cmp, D) in q's dtype, k_win/v_win (B, Hkv, S, D) or None. Outputs (out, o_cmp,
    o_slc, o_win, block indices); only ``out`` is differentiable.
    """

    @staticmethod
    def forward(ctx, q, k, v, gates, k_cmp, v_cmp, k_win, v_win, cfg, scale, interpreted):  # type: ignore[override]
        lk = k.shape[2]
        kw = k if k_win is None else k_win
        vw = v if v_win is None else v_win
        o_cmp, lse_c, idx = cmp_topk_fwd(q, k_cmp, v_cmp, kv_len=lk, cfg=cfg, scale=scale, interpreted=interpreted)
        o_win = lse_w = None
        if cfg.window > 0:
            o_win, lse_w = window_fwd(q, kw, vw, window=cfg.window, scale=scale, interpreted=interpreted)
        out, o_slc, lse_s = selection_fwd(q, k, v, idx, gates, o_cmp, o_win, sel_block=cfg.sel_block, scale=scale,
                                          interpreted=interpreted)
        ctx.save_for_backward(q, k, v, gates, k_cmp, v_cmp, k_win, v_win, o_cmp, o_slc, o_win, lse_c, lse_s, lse_w, idx)
        ctx.cfg, ctx.scale, ctx.interpreted = cfg, scale, interpreted
        o_win_out = torch.zeros_like(o_cmp) if o_win is None else o_win
        ctx.mark_non_differentiable(o_cmp, o_slc, o_win_out, idx)
        return out, o_cmp, o_slc, o_win_out, idx

    @staticmethod
    def backward(ctx, dout, *unused):  # type: ignore[override]
        (q, k, v, gates, k_cmp, v_cmp, k_win, v_win, o_cmp, o_slc, o_win, lse_c, lse_s, lse_w,
         idx) = ctx.saved_tensors
        cfg, scale, interp = ctx.cfg, ctx.scale, ctx.interpreted
        lk = k.shape[2]
        do = _lastdim(dout)
        f32 = torch.float32
        dg, delta = preprocess(do, o_cmp, o_slc, o_win, gates)
        kw = k if k_win is None else k_win
        vw = v if v_win is None else v_win
        common = dict(kv_len=lk, window=cfg.window, cfg=cfg, scale=scale, interpreted=interp)

        dq = torch.zeros(q.shape, device=q.device, dtype=f32)
        dk_c = torch.zeros(k_cmp.shape, device=q.device, dtype=f32)
        dv_c = torch.zeros_like(dk_c)
        if k_cmp.shape[2] > 0:
            band_dq(q, k_cmp, v_cmp, do, lse_c, delta[0], gates, dq, mode=MODE_CMP, branch=0, accumulate=False,
                    **common)
            band_dkdv(q, k_cmp, v_cmp, do, lse_c, delta[0], gates, dk_c, dv_c, mode=MODE_CMP, branch=0,
                      accumulate=False, **common)
        selection_dq(q, k, v, idx, do, lse_s, delta[1], gates, dq, sel_block=cfg.sel_block, scale=scale,
                     accumulate=True, interpreted=interp)
        dk = torch.zeros(k.shape, device=q.device, dtype=f32)
        dv = torch.zeros_like(dk)
        selection_dkdv(q, k, v, idx, do, lse_s, delta[1], gates, dk, dv, sel_block=cfg.sel_block, scale=scale,
                       interpreted=interp)
        dk_w = dv_w = None
        if cfg.window > 0:
            band_dq(q, kw, vw, do, lse_w, delta[2], gates, dq, mode=MODE_WIN, branch=2, accumulate=True, **common)
            if k_win is None:
                band_dkdv(q, k, v, do, lse_w, delta[2], gates, dk, dv, mode=MODE_WIN, branch=2, accumulate=True,
                          **common)
            else:
                dk_w = torch.zeros(k_win.shape, device=q.device, dtype=f32)
                dv_w = torch.zeros_like(dk_w)
                band_dkdv(q, kw, vw, do, lse_w, delta[2], gates, dk_w, dv_w, mode=MODE_WIN, branch=2,
                          accumulate=False, **common)
        elif k_win is not None:
            dk_w, dv_w = torch.zeros_like(k_win), torch.zeros_like(v_win)
        dgates = dg.permute(1, 2, 3, 0).to(gates.dtype)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dgates, dk_c.to(k_cmp.dtype), dv_c.to(v_cmp.dtype),
                None if dk_w is None else dk_w.to(k_win.dtype), None if dv_w is None else dv_w.to(v_win.dtype),
                None, None, None)


def _selection_pairs(idx: torch.Tensor, cfg: NSAConfig, q_len: int, kv_len: int, heads: int) -> torch.Tensor:
    """Query-key pairs of the selection branch per (batch, head), float64, from the block lists."""
    pos = query_positions(q_len, kv_len, device=idx.device)[None, None, :, None]
    start = idx.to(torch.int64) * cfg.sel_block
    last = torch.minimum(start + cfg.sel_block - 1, pos)
    n = torch.where(idx >= 0, (last - start + 1).clamp_min(0), torch.zeros_like(start))
    per_kv = n.sum(dim=(-1, -2), dtype=torch.float64)
    return per_kv.repeat_interleave(heads // idx.shape[1], dim=1)


def nsa_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: torch.Tensor,
    cfg: NSAConfig = NSAConfig(),
    *,
    compress_k: Compressor = None,
    compress_v: Compressor = None,
    k_cmp: torch.Tensor | None = None,
    v_cmp: torch.Tensor | None = None,
    k_win: torch.Tensor | None = None,
    v_win: torch.Tensor | None = None,
    scale: float | None = None,
    return_aux: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, NSAAux]:
    """NSA prefill on the Triton kernels; arguments and result as :func:`nsa_attention_ref`.

    q: (batch, heads, q_len, head_dim); k, v (and k_win, v_win): (batch, kv_heads, kv_len,
    head_dim); gates: (batch, heads, q_len, 3); k_cmp, v_cmp: (batch, kv_heads, n_cmp, head_dim).
    Differentiable in q, k, v, gates, the compressed tokens (hence the compression parameters)
    and k_win/v_win. With ``return_aux`` the aux's branch outputs are detached.
    """
    b, h, hkv, lq, lk, d = check_qkv(q, k, v)
    _check_inputs(q, k, v, gates, cfg, compress_k, compress_v, k_cmp, v_cmp, k_win, v_win, (b, h, lq, 3))
    _require_supported(q, k, cfg)
    for name, x in (("k_win", k_win), ("v_win", v_win)):
        if x is not None and x.dtype != q.dtype:
            raise TypeError(f"{name}: dtype must match q ({q.dtype}), got {x.dtype}")
    sm_scale = check_scale(scale, d)
    kc, vc = _compressed_kv(k, v, cfg, compress_k, compress_v, k_cmp, v_cmp)
    kc, vc = _lastdim(kc.to(q.dtype)), _lastdim(vc.to(q.dtype))
    q, k, v = _lastdim(q), _lastdim(k), _lastdim(v)
    k_win = None if k_win is None else _lastdim(k_win)
    v_win = None if v_win is None else _lastdim(v_win)
    gates = _lastdim(gates)
    out, o_cmp, o_slc, o_win, idx = _NSAFunction.apply(q, k, v, gates, kc, vc, k_win, v_win, cfg, sm_scale,
                                                       triton_interpreted())
    if not return_aux:
        return out
    pos = query_positions(lq, lk, device=q.device)
    visible, _, window_rows = nsa_pairs_per_row(cfg, pos)
    pairs_cmp = torch.full((b, h), float(visible.sum()), dtype=torch.float64, device=q.device)
    pairs_win = torch.full((b, h), float(window_rows.sum()), dtype=torch.float64, device=q.device)
    aux = NSAAux(o_cmp, o_slc, o_win, idx.to(torch.int64), pairs_cmp, _selection_pairs(idx, cfg, lq, lk, h), pairs_win)
    return out, aux


def nsa_decode_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: torch.Tensor,
    cfg: NSAConfig = NSAConfig(),
    *,
    compress_k: Compressor = None,
    compress_v: Compressor = None,
    k_cmp: torch.Tensor | None = None,
    v_cmp: torch.Tensor | None = None,
    k_win: torch.Tensor | None = None,
    v_win: torch.Tensor | None = None,
    scale: float | None = None,
    return_blocks: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One NSA decode step on the Triton kernels (no autograd).

    q: (batch, heads, head_dim) at the last cache position; k, v (and k_win, v_win):
    (batch, kv_heads, kv_len, head_dim); gates: (batch, heads, 3); k_cmp, v_cmp: the
    compressed cache (batch, kv_heads, cfg.n_compressed(kv_len), head_dim) — a compressed
    cache of another length (tokens appended without compressing, or out of order) is refused.
    Returns out (batch, heads, head_dim) in q's dtype, and with ``return_blocks`` the chosen
    blocks (batch, kv_heads, min(n_select, n_sel_blocks)) int64, ascending, -1 padded.
    """
    if not isinstance(q, torch.Tensor) or q.ndim != 3:
        raise ValueError(f"q: expected (batch, heads, head_dim), got {getattr(q, 'shape', type(q).__name__)}")
    b, h, hkv, _, lk, d = check_qkv(q[:, :, None], k, v)
    _check_inputs(q, k, v, gates, cfg, compress_k, compress_v, k_cmp, v_cmp, k_win, v_win, (b, h, 3))
    _require_supported(q[:, :, None], k, cfg)
    sm_scale = check_scale(scale, d)
    kc, vc = _compressed_kv(k, v, cfg, compress_k, compress_v, k_cmp, v_cmp)
    kc, vc = _lastdim(kc.to(q.dtype)), _lastdim(vc.to(q.dtype))
    kw = _lastdim((k if k_win is None else k_win).to(q.dtype))
    vw = _lastdim((v if v_win is None else v_win).to(q.dtype))
    with torch.no_grad():
        out, idx = nsa_decode_fwd(_lastdim(q), _lastdim(k), _lastdim(v), gates, kc, vc, kw, vw, cfg=cfg,
                                  scale=sm_scale, interpreted=triton_interpreted())
    return (out, idx.to(torch.int64)) if return_blocks else out


def decode_read_positions(blocks: torch.Tensor, cfg: NSAConfig, kv_len: int, kv_heads_out: int,
                          n_cmp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token positions read and tokens read per head, as :func:`nsa_decode_ref` reports them.

    blocks: (B, Hkv, n) chosen blocks (-1 padded). Returns (positions (B, Hkv, n_select *
    sel_block + window), -1 = unused; tokens (B, heads) float64 with compressed tokens counted).
    """
    b, hkv, _ = blocks.shape
    p = kv_len - 1
    sel_tokens = pages_to_tokens(blocks, cfg.sel_block, kv_len)
    pad = cfg.n_select * cfg.sel_block - sel_tokens.shape[-1]
    sel_tokens = torch.nn.functional.pad(sel_tokens, (0, pad), value=-1)
    win = torch.arange(p - cfg.window + 1, p + 1, device=blocks.device)
    win = torch.where(win < 0, torch.full_like(win, -1), win).expand(b, hkv, cfg.window)
    read = (sel_tokens >= 0).sum(-1) + (win >= 0).sum(-1) + n_cmp
    tokens = read.repeat_interleave(kv_heads_out // hkv, dim=1).to(torch.float64)
    return torch.cat([sel_tokens, win], dim=-1), tokens


__all__ = ["HEAD_DIMS", "KERNEL_DTYPES", "MAX_GROUP", "decode_read_positions", "nsa_attention_triton",
           "nsa_decode_triton", "unsupported_reason"]

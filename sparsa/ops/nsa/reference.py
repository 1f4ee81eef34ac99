"""Reference Native Sparse Attention (Yuan et al., 2025): compression, selection, window, gate.

Layout is SDPA's: q (batch, heads, q_len, head_dim), k/v (batch, kv_heads, kv_len, head_dim);
query row ``r`` sits at position ``p = kv_len - q_len + r``. Query head ``h`` reads KV head
``h // (heads // kv_heads)``.

For each query the three branches each run their own softmax:

* compression: over the compressed tokens whose block has ended, ``i*stride + block - 1 <= p``;
* selection: over the keys ``<= p`` of the ``n_select`` chosen blocks of ``sel_block`` keys,
  shared by the query heads of a KV group. A block's score is the compression branch's
  probability mass of the compressed tokens overlapping it, each weighted by
  ``overlap_tokens / stride``, summed over the group's heads. Blocks starting after ``p``
  are not eligible; the first ``n_forced_init`` and the ``n_forced_local`` most recent eligible
  blocks are always chosen, the rest by score (ties: lower block first);
* window: over keys ``(p - window, p]``.

The output is ``g0 * o_cmp + g1 * o_slc + g2 * o_win`` with gates (batch, heads, q_len, 3).
A branch that sees nothing (no compressed token yet, window 0) contributes zeros.

Arithmetic is float32 (float64 inputs stay float64); outputs have q's dtype. Everything but the
(discrete) block choice is differentiable: gradients reach q, k, v, the compression parameters
and the gates.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..._validation import check_qkv, check_scale, check_tensor
from .._shared.decode_ref import pages_to_tokens, sparse_decode_ref
from .._shared.masks import query_positions
from .config import CompressionParams, NSAConfig

# score elements per chunk of query rows (64 MiB in float32)
_CHUNK_ELEMENTS = 1 << 24

Compressor = CompressionParams | str | None


@dataclass
class NSAAux:
    """Per-branch results of :func:`nsa_attention_ref`.

    ``o_cmp``, ``o_slc``, ``o_win``: branch outputs (batch, heads, q_len, head_dim), q's dtype,
    before gating. ``block_indices``: (batch, kv_heads, q_len, n_select) int64 selected blocks,
    ascending, -1 padded. ``pairs_*``: (batch, heads) float64 query-key pairs of each branch
    (compressed tokens count as keys).
    """

    o_cmp: torch.Tensor
    o_slc: torch.Tensor
    o_win: torch.Tensor
    block_indices: torch.Tensor
    pairs_cmp: torch.Tensor
    pairs_slc: torch.Tensor
    pairs_win: torch.Tensor

    @property
    def pairs(self) -> torch.Tensor:
        """Total pairs per (batch, head) over the three branches."""
        return self.pairs_cmp + self.pairs_slc + self.pairs_win


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def compress_blocks(x: torch.Tensor, cfg: NSAConfig, params: Compressor = None) -> torch.Tensor:
    """Map each compression block of ``x`` to one token.

    x: (batch, kv_heads, length, head_dim) starting at a block start (position ``i0 * stride``).
    params: None or "mean" for mean-pooling, else :class:`CompressionParams`.
    Returns (batch, kv_heads, n, head_dim) with ``n = cfg.n_compressed(length)``, in the
    compute dtype (float32, or float64 for float64 input).
    """
    b, hkv, length, d = x.shape
    ct = _compute_dtype(x)
    n = cfg.n_compressed(length)
    if n == 0:
        return x.new_zeros(b, hkv, 0, d, dtype=ct)
    used = (n - 1) * cfg.stride + cfg.block
    blocks = x[:, :, :used].to(ct).unfold(2, cfg.block, cfg.stride).transpose(-1, -2)  # (B, Hkv, n, block, D)
    if params is None or (isinstance(params, str) and params == "mean"):
        return blocks.mean(dim=-2)
    if not isinstance(params, CompressionParams):
        raise TypeError(f"compress_k/compress_v: expected None, 'mean' or CompressionParams, got {params!r}")
    hidden = F.gelu((blocks + params.pos.to(ct)).flatten(-2) @ params.w1.to(ct) + params.b1.to(ct))
    return hidden @ params.w2.to(ct) + params.b2.to(ct)


def overlap_weights(cfg: NSAConfig, n_cmp: int, n_sel: int, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n_cmp, n_sel) weights: keys shared by compressed block i and selection block j, / stride.

    With 32/16/64 each selection block collects weights 1, 2, 2, 2, 1 from compressed tokens
    4j-1 .. 4j+3; with block = stride = sel_block the matrix is the identity.
    """
    start = torch.arange(n_cmp, device=device, dtype=torch.int64)[:, None] * cfg.stride
    sel = torch.arange(n_sel, device=device, dtype=torch.int64)[None, :] * cfg.sel_block
    overlap = (torch.minimum(start + cfg.block, sel + cfg.sel_block) - torch.maximum(start, sel)).clamp_min(0)
    return overlap.to(dtype) / cfg.stride


def _softmax(s: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim where fully masked (-inf) rows give zeros, not NaN."""
    m = s.amax(dim=-1, keepdim=True) if s.shape[-1] else s.new_zeros(*s.shape[:-1], 1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    e = torch.exp(s - m)
    den = e.sum(dim=-1, keepdim=True)
    return e / (den + (den == 0).to(den.dtype))


def _compressed_branch(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, pos: torch.Tensor,
                       cfg: NSAConfig, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, Hkv, G, cq, D) at positions ``pos`` (cq,) -> (out like q, probs (B, Hkv, G, cq, n_cmp))."""
    ends = torch.arange(k_cmp.shape[2], device=q.device) * cfg.stride + (cfg.block - 1)
    visible = ends[None, :] <= pos[:, None]                                   # (cq, n_cmp)
    s = torch.einsum("bkgqd,bknd->bkgqn", q, k_cmp) * scale
    probs = _softmax(s.masked_fill(~visible, float("-inf")))
    return torch.einsum("bkgqn,bknd->bkgqd", probs, v_cmp), probs


def _masked_branch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q (B, Hkv, G, cq, D) over k, v (B, Hkv, T, D) where mask (B|1, Hkv|1, cq, T) is True.

    Returns (out like q, pairs per (B, Hkv) as float64).
    """
    s = torch.einsum("bkgqd,bktd->bkgqt", q, k) * scale
    probs = _softmax(s.masked_fill(~mask[:, :, None], float("-inf")))
    pairs = mask.expand(k.shape[0], k.shape[1], *mask.shape[2:]).sum(dim=(-1, -2), dtype=torch.float64)
    return torch.einsum("bkgqt,bktd->bkgqd", probs, v), pairs


def compressed_attention(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, cfg: NSAConfig, *,
                         kv_len: int, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The compression branch on its own (materialises all probabilities; for small inputs).

    q: (B, H, q_len, D) at the last q_len of ``kv_len`` positions; k_cmp, v_cmp: (B, Hkv, n_cmp, D).
    Returns (out (B, H, q_len, D) in the compute dtype, probs (B, H, q_len, n_cmp)).
    """
    b, h, lq, d = q.shape
    hkv = k_cmp.shape[1]
    ct = _compute_dtype(q)
    scale = check_scale(scale, d)
    pos = query_positions(lq, kv_len, device=q.device)
    o, p = _compressed_branch(q.to(ct).view(b, hkv, h // hkv, lq, d), k_cmp.to(ct), v_cmp.to(ct), pos, cfg, scale)
    return o.reshape(b, h, lq, d), p.reshape(b, h, lq, -1)


def selection_scores(probs: torch.Tensor, cfg: NSAConfig, kv_len: int, kv_heads: int,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """Block scores from compression probabilities.

    probs: (B, H, q_len, n_cmp) or grouped (B, Hkv, G, q_len, n_cmp); ``weights``: the
    :func:`overlap_weights` matrix if already at hand.
    Returns (B, Hkv, q_len, n_sel_blocks): per block the overlap-weighted probability mass,
    summed over the query heads of each KV group.
    """
    if probs.ndim == 4:
        b, h, lq, n_cmp = probs.shape
        probs = probs.view(b, kv_heads, h // kv_heads, lq, n_cmp)
    if weights is None:
        weights = overlap_weights(cfg, probs.shape[-1], cfg.n_sel_blocks(kv_len), probs.device, probs.dtype)
    return torch.einsum("bkgqi,ij->bkqj", probs, weights)


def select_blocks(scores: torch.Tensor, pos: torch.Tensor, cfg: NSAConfig) -> torch.Tensor:
    """Top-``n_select`` blocks per query, forced blocks included.

    scores: (B, Hkv, cq, n_sel) block scores; pos: (cq,) query positions.
    Returns (B, Hkv, cq, min(n_select, n_sel)) int64 block indices, ascending, -1 padded.
    """
    n_sel = scores.shape[-1]
    j = torch.arange(n_sel, device=scores.device)
    cur = (pos // cfg.sel_block)[:, None]                                   # block holding the query
    eligible = j[None, :] <= cur
    forced = eligible & ((j[None, :] < cfg.n_forced_init) | (j[None, :] > cur - cfg.n_forced_local))
    key = scores.detach().masked_fill(forced, float("inf")).masked_fill(~eligible, float("-inf"))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices    # stable: lower index wins ties
    take = min(cfg.n_select, n_sel)
    chosen = order[..., :take]
    valid = torch.gather(eligible.expand_as(key), -1, chosen)
    chosen = torch.where(valid, chosen, torch.full_like(chosen, n_sel))
    chosen = chosen.sort(dim=-1).values
    return torch.where(chosen == n_sel, torch.full_like(chosen, -1), chosen)


def _check_like(name: str, x: torch.Tensor | None, shape: tuple[int, ...], ref: torch.Tensor) -> None:
    if x is None:
        return
    check_tensor(name, x, ndim=len(shape))
    if tuple(x.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(x.shape)}")
    if x.device != ref.device:
        raise ValueError(f"{name}: device must match q ({ref.device}), got {x.device}")


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, cfg: NSAConfig,
                  compress_k: Compressor, compress_v: Compressor, k_cmp: torch.Tensor | None,
                  v_cmp: torch.Tensor | None, k_win: torch.Tensor | None, v_win: torch.Tensor | None,
                  gate_shape: tuple[int, ...]) -> None:
    if not isinstance(cfg, NSAConfig):
        raise TypeError(f"cfg: expected an NSAConfig, got {type(cfg).__name__}")
    b, hkv, lk, d = k.shape
    check_tensor("gates", gates, ndim=len(gate_shape))
    if tuple(gates.shape) != gate_shape:
        raise ValueError(f"gates: expected shape {gate_shape} (batch, heads, [q_len,] 3), got {tuple(gates.shape)}")
    if (k_cmp is None) != (v_cmp is None):
        raise ValueError("k_cmp: k_cmp and v_cmp must be given together")
    n_cmp = cfg.n_compressed(lk)
    _check_like("k_cmp", k_cmp, (b, hkv, n_cmp, d), q)
    _check_like("v_cmp", v_cmp, (b, hkv, n_cmp, d), q)
    _check_like("k_win", k_win, tuple(k.shape), q)
    _check_like("v_win", v_win, tuple(k.shape), q)
    for name, p in (("compress_k", compress_k), ("compress_v", compress_v)):
        if isinstance(p, CompressionParams):
            p.check(name, cfg.block, d)
        elif not (p is None or (isinstance(p, str) and p == "mean")):
            raise TypeError(f"{name}: expected None, 'mean' or CompressionParams, got {type(p).__name__}")


def _compressed_kv(k: torch.Tensor, v: torch.Tensor, cfg: NSAConfig, compress_k: Compressor,
                   compress_v: Compressor, k_cmp: torch.Tensor | None,
                   v_cmp: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if k_cmp is not None and v_cmp is not None:
        return k_cmp, v_cmp
    return compress_blocks(k, cfg, compress_k), compress_blocks(v, cfg, compress_v)


def nsa_attention_ref(
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
    """Native Sparse Attention over a causal sequence (see the module docstring).

    Args:
        q: (batch, heads, q_len, head_dim), the last q_len positions.
        k, v: (batch, kv_heads, kv_len, head_dim): keys/values of the selection branch, and of
            all branches unless the optional ones below are given.
        gates: (batch, heads, q_len, 3) branch weights (compression, selection, window),
            typically sigmoid outputs.
        cfg: the branch geometry and budgets.
        compress_k, compress_v: how blocks of k / v become compressed tokens: None or "mean"
            (mean-pool) or :class:`CompressionParams` (learned MLP).
        k_cmp, v_cmp: precomputed compressed keys/values (batch, kv_heads,
            cfg.n_compressed(kv_len), head_dim); override compress_k/compress_v.
        k_win, v_win: separate keys/values of the window branch (shape of k).
        scale: softmax scale of every branch, default head_dim ** -0.5.
        return_aux: also return an :class:`NSAAux`.

    Returns:
        out (batch, heads, q_len, head_dim) in q's dtype (and the aux if asked).
    """
    b, h, hkv, lq, lk, d = check_qkv(q, k, v)
    _check_inputs(q, k, v, gates, cfg, compress_k, compress_v, k_cmp, v_cmp, k_win, v_win, (b, h, lq, 3))
    scale = check_scale(scale, d)
    g = h // hkv
    ct = _compute_dtype(q)
    kc, vc = _compressed_kv(k, v, cfg, compress_k, compress_v, k_cmp, v_cmp)
    kc, vc = kc.to(ct), vc.to(ct)
    n_cmp = kc.shape[2]
    n_sel = cfg.n_sel_blocks(lk)
    qg = q.to(ct).view(b, hkv, g, lq, d)
    pos = query_positions(lq, lk, device=q.device)

    kw = (k if k_win is None else k_win).to(ct)
    vw = (v if v_win is None else v_win).to(ct)
    kf, vf = k.to(ct), v.to(ct)

    # all three branches, chunked over query rows so memory stays bounded
    chunk = max(1, min(lq, _CHUNK_ELEMENTS // (b * h * max(lk, n_cmp, 1))))
    cols = torch.arange(lk, device=q.device)
    key_block = cols // cfg.sel_block
    weights = overlap_weights(cfg, n_cmp, n_sel, q.device, ct)
    parts: list[tuple[torch.Tensor, ...]] = []
    pairs_slc = torch.zeros(b, hkv, dtype=torch.float64, device=q.device)
    pairs_win = torch.zeros_like(pairs_slc)
    for s in range(0, lq, chunk):
        e = min(lq, s + chunk)
        qc, pc = qg[:, :, :, s:e], pos[s:e]
        o_c, probs = _compressed_branch(qc, kc, vc, pc, cfg, scale)
        # the block choice is discrete: no gradient flows through the scores
        idx = select_blocks(selection_scores(probs.detach(), cfg, lk, hkv, weights), pc, cfg)

        # selection: keys of the chosen blocks up to the query (only keys <= the last row's position)
        hi = int(pc[-1]) + 1
        chosen = torch.zeros(b, hkv, e - s, n_sel + 1, dtype=torch.bool, device=q.device)
        chosen.scatter_(-1, torch.where(idx < 0, n_sel, idx), True)
        mask = chosen[..., key_block[:hi]] & (cols[None, :hi] <= pc[:, None])
        o_s, n_s = _masked_branch(qc, kf[:, :, :hi], vf[:, :, :hi], mask, scale)

        # window: keys (p - window, p], taken from the band of keys the chunk's rows can reach
        lo = max(0, int(pc[0]) - cfg.window + 1)
        diff = pc[:, None] - cols[None, lo:hi]
        mask = ((diff >= 0) & (diff < cfg.window))[None, None]
        o_w, n_w = _masked_branch(qc, kw[:, :, lo:hi], vw[:, :, lo:hi], mask, scale)

        pairs_slc += n_s
        pairs_win += n_w
        parts.append((o_c, o_s, o_w, idx))
    o_cmp, o_slc, o_win = (torch.cat([p[i] for p in parts], dim=3).reshape(b, h, lq, d) for i in range(3))
    block_indices = torch.cat([p[3] for p in parts], dim=2)

    gf = gates.to(ct)
    out = (gf[..., 0:1] * o_cmp + gf[..., 1:2] * o_slc + gf[..., 2:3] * o_win).to(q.dtype)
    if not return_aux:
        return out
    visible, _, _ = nsa_pairs_per_row(cfg, pos)
    pairs_cmp = torch.full((b, h), float(visible.sum()), dtype=torch.float64, device=q.device)
    aux = NSAAux(o_cmp.to(q.dtype), o_slc.to(q.dtype), o_win.to(q.dtype), block_indices, pairs_cmp,
                 pairs_slc.repeat_interleave(g, dim=1), pairs_win.repeat_interleave(g, dim=1))
    return out, aux


def nsa_decode_ref(
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode step of NSA: the query at the last cache position reads three token sets.

    q: (batch, heads, head_dim); k, v: (batch, kv_heads, kv_len, head_dim), the cache with the
    new token last; gates: (batch, heads, 3); other arguments as in :func:`nsa_attention_ref`.
    Only the compressed tokens, the selected blocks and the window are read (through
    :func:`~sparsa.ops.sparse_decode.sparse_decode_ref`).

    Returns (out (batch, heads, head_dim) in q's dtype, token positions (batch, kv_heads,
    n_select * sel_block + window) read by the selection then the window branch, -1 = unused,
    tokens read per (batch, heads) float64 with compressed tokens counted).
    """
    if not isinstance(q, torch.Tensor) or q.ndim != 3:
        raise ValueError(f"q: expected (batch, heads, head_dim), got {getattr(q, 'shape', type(q).__name__)}")
    b, h, hkv, _, lk, d = check_qkv(q[:, :, None], k, v)
    _check_inputs(q, k, v, gates, cfg, compress_k, compress_v, k_cmp, v_cmp, k_win, v_win, (b, h, 3))
    scale = check_scale(scale, d)
    ct = _compute_dtype(q)
    kc, vc = _compressed_kv(k, v, cfg, compress_k, compress_v, k_cmp, v_cmp)
    p = lk - 1
    pos = torch.tensor([p], device=q.device)
    o_cmp, probs = _compressed_branch(q.to(ct).view(b, hkv, h // hkv, 1, d), kc.to(ct), vc.to(ct), pos, cfg, scale)
    blocks = select_blocks(selection_scores(probs.detach(), cfg, lk, hkv), pos, cfg)[:, :, 0]  # (B, Hkv, n)
    sel_tokens = pages_to_tokens(blocks, cfg.sel_block, lk)
    pad = cfg.n_select * cfg.sel_block - sel_tokens.shape[-1]
    sel_tokens = F.pad(sel_tokens, (0, pad), value=-1)
    win = torch.arange(p - cfg.window + 1, p + 1, device=q.device)
    win = torch.where(win < 0, torch.full_like(win, -1), win).expand(b, hkv, cfg.window)
    o_slc = sparse_decode_ref(q, k, v, sel_tokens, scale=scale)
    kw = k if k_win is None else k_win
    vw = v if v_win is None else v_win
    o_win = sparse_decode_ref(q, kw.to(q.dtype), vw.to(q.dtype), win, scale=scale)
    gf = gates.to(ct)
    out = gf[..., 0:1] * o_cmp.reshape(b, h, d) + gf[..., 1:2] * o_slc.to(ct) + gf[..., 2:3] * o_win.to(ct)
    read = (sel_tokens >= 0).sum(-1) + (win >= 0).sum(-1) + kc.shape[2]         # (B, Hkv)
    tokens = read.repeat_interleave(h // hkv, dim=1).to(torch.float64)
    return out.to(q.dtype), torch.cat([sel_tokens, win], dim=-1), tokens


def nsa_pairs_per_row(cfg: NSAConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(compressed, selected, window) keys read by queries at ``positions`` (int64 tensor).

    Exact whenever the query's own block is always chosen (``n_forced_local >= 1``): every
    other chosen block is complete and lies before the query.
    """
    p = positions.to(torch.int64)
    cmp = torch.clamp(torch.div(p + 1 - cfg.block, cfg.stride, rounding_mode="floor") + 1, min=0)
    n_blocks = torch.clamp(p // cfg.sel_block + 1, max=cfg.n_select)
    slc = p % cfg.sel_block + 1 + (n_blocks - 1) * cfg.sel_block
    win = torch.clamp(p + 1, max=cfg.window)
    return cmp, slc, win


__all__ = ["CompressionParams", "NSAAux", "NSAConfig", "compress_blocks", "compressed_attention",
           "nsa_attention_ref", "nsa_decode_ref", "nsa_pairs_per_row", "overlap_weights", "select_blocks",
           "selection_scores"]

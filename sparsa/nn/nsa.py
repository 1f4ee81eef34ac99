"""Trainable Native Sparse Attention layer with GQA, RoPE, learned compression and gates."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._validation import check_float, check_int, check_tensor
from ..ops.nsa import CompressionParams, NSAConfig, compress_blocks, nsa_attention, nsa_decode
from .rope import apply_rope, rope_cos_sin

BRANCHES = ("cmp", "slc", "win")


def check_gate_bias(name: str, value: Sequence[float] | None) -> tuple[float, float, float] | None:
    """None, or three finite numbers (the compression, selection and window gates' starting logits)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"{name}: expected three numbers (compression, selection, window gate logits), "
                         f"got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name}: expected three finite numbers, got {list(value)!r}")
        out.append(float(v))
    return (out[0], out[1], out[2])


def _table_dtype(x: torch.Tensor) -> torch.dtype:
    """RoPE tables in float32, or float64 for float64 activations."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class BlockCompressor(nn.Module):
    """Learned map from a block of ``block`` keys (or values) to one token.

    ``phi(x) = gelu((x + pos).flatten() @ w1 + b1) @ w2 + b2``, x: (block, head_dim); ``pos``
    is the intra-block position embedding. One map is shared by all KV heads.
    """

    def __init__(self, block: int, head_dim: int, hidden: int) -> None:
        super().__init__()
        fan_in = block * head_dim
        self.pos = nn.Parameter(torch.randn(block, head_dim) * 0.02)
        self.w1 = nn.Parameter(torch.randn(fan_in, hidden) * fan_in ** -0.5)
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w2 = nn.Parameter(torch.randn(hidden, head_dim) * hidden ** -0.5)
        self.b2 = nn.Parameter(torch.zeros(head_dim))

    def params(self) -> CompressionParams:
        return CompressionParams(self.pos, self.w1, self.b1, self.w2, self.b2)


@dataclass
class NSACache:
    """KV cache of one :class:`NativeSparseAttention` layer; tensors are (batch, kv_heads, n, head_dim).

    ``k``/``v``: rotated keys and values of the selection branch (and of the window branch
    unless the layer has ``separate_kv``, then ``k_win``/``v_win``). ``k_cmp``/``v_cmp``: the
    compressed tokens so far. ``k_src``/``v_src``: the not yet compressed tail of the
    un-rotated compression-branch keys/values, from position ``k_cmp.shape[2] * stride``.
    """

    k: torch.Tensor
    v: torch.Tensor
    k_cmp: torch.Tensor
    v_cmp: torch.Tensor
    k_src: torch.Tensor
    v_src: torch.Tensor
    k_win: torch.Tensor | None = None
    v_win: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """Tokens cached so far."""
        return self.k.shape[2]


class NativeSparseAttention(nn.Module):
    """NSA attention layer (Yuan et al., 2025): x (batch, seq, hidden) -> (batch, seq, hidden).

    Queries, keys and values come from linear projections (``heads`` query heads,
    ``kv_heads`` KV heads of ``head_dim``); three branches (compressed tokens, selected blocks,
    sliding window; see :mod:`sparsa.ops.nsa.reference`) are mixed per head by gates
    ``sigmoid(Linear(hidden, 3 * heads)(x))``, laid out (head, branch).

    Positions: RoPE (``rope_theta``) rotates queries and raw keys at their positions. The
    compression branch compresses *un-rotated* keys (the intra-block position embedding carries
    the order inside a block) and rotates each compressed key at the position of its block's
    last token, ``i * stride + block - 1``: the first query that sees it is at relative
    distance 0 and every later one at a positive distance. Values are not rotated.

    ``gate_bias``: the gate logits' starting bias per branch (compression, selection, window),
    the same for every head; default 0 for all three (each branch starts at weight 0.5).
    :meth:`reset_gate_bias` sets it again (a model's weight initialisation zeroes biases).

    ``compress="mlp"`` learns the block maps (:class:`BlockCompressor`, hidden size
    ``compress_hidden``, default 4 * head_dim); ``"mean"`` mean-pools. With
    ``separate_kv=True`` each branch has its own key and value projections.

    Incremental decoding: ``cache = layer.new_cache(batch)``, then ``layer(x_chunk, cache=cache)``
    for successive chunks (a prompt, then one token at a time) returns the same outputs as one
    call on the whole sequence.
    """

    def __init__(self, hidden: int, heads: int, kv_heads: int | None = None, head_dim: int | None = None, *,
                 block: int = 32, stride: int = 16, sel_block: int = 64, n_select: int = 16, window: int = 512,
                 n_forced_init: int = 1, n_forced_local: int = 2, compress: str = "mlp",
                 compress_hidden: int | None = None, rope_theta: float = 10000.0, separate_kv: bool = False,
                 bias: bool = False, gate_bias: Sequence[float] | None = None) -> None:
        super().__init__()
        check_int("hidden", hidden, minimum=1)
        check_int("heads", heads, minimum=1)
        kv_heads = heads if kv_heads is None else check_int("kv_heads", kv_heads, minimum=1)
        if heads % kv_heads:
            raise ValueError(f"kv_heads: must divide heads ({heads}), got {kv_heads}")
        if head_dim is None:
            if hidden % heads:
                raise ValueError(f"head_dim: hidden ({hidden}) is not a multiple of heads ({heads}); pass head_dim")
            head_dim = hidden // heads
        check_int("head_dim", head_dim, minimum=2)
        if head_dim % 2:
            raise ValueError(f"head_dim: rotary embedding needs an even head_dim, got {head_dim}")
        if compress not in ("mlp", "mean"):
            raise ValueError(f"compress: must be 'mlp' or 'mean', got {compress!r}")
        self.rope_theta = check_float("rope_theta", rope_theta, 0.0, math.inf, low_open=True)
        self.cfg = NSAConfig(block=block, stride=stride, sel_block=sel_block, n_select=n_select, window=window,
                             n_forced_init=n_forced_init, n_forced_local=n_forced_local)
        self.hidden, self.heads, self.kv_heads, self.head_dim = hidden, heads, kv_heads, head_dim
        self.compress, self.separate_kv = compress, bool(separate_kv)
        n_kv = 3 if self.separate_kv else 1
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, n_kv * kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, n_kv * kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=bias)
        self.gate_proj = nn.Linear(hidden, 3 * heads)
        self.gate_bias = check_gate_bias("gate_bias", gate_bias)
        self.reset_gate_bias()
        self.compress_k: BlockCompressor | None = None
        self.compress_v: BlockCompressor | None = None
        if compress == "mlp":
            c_hidden = 4 * head_dim if compress_hidden is None else check_int("compress_hidden", compress_hidden, 1)
            self.compress_k = BlockCompressor(block, head_dim, c_hidden)
            self.compress_v = BlockCompressor(block, head_dim, c_hidden)

    @torch.no_grad()
    def reset_gate_bias(self) -> None:
        """Set the gate projection's bias to ``gate_bias`` (zeros when unset) for every head."""
        start = torch.tensor(self.gate_bias or (0.0, 0.0, 0.0), dtype=self.gate_proj.bias.dtype)
        self.gate_proj.bias.copy_(start.repeat(self.heads).to(self.gate_proj.bias.device))

    def extra_repr(self) -> str:
        return (f"hidden={self.hidden}, heads={self.heads}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, "
                f"compress={self.compress!r}, separate_kv={self.separate_kv}, {self.cfg}")

    def new_cache(self, batch: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> NSACache:
        """An empty cache for ``batch`` sequences (parameters' device and dtype by default)."""
        check_int("batch", batch, minimum=1)
        ref = self.q_proj.weight
        empty = torch.zeros(batch, self.kv_heads, 0, self.head_dim, device=device or ref.device,
                            dtype=dtype or ref.dtype)
        win = empty if self.separate_kv else None
        return NSACache(empty, empty, empty, empty, empty, empty, win, win)

    def _compress(self, cache: NSACache, k_src: torch.Tensor, v_src: torch.Tensor) -> None:
        """Append the un-rotated tokens to the cache's tail and compress every block it completes."""
        cfg = self.cfg
        k_src = torch.cat([cache.k_src, k_src], dim=2)
        v_src = torch.cat([cache.v_src, v_src], dim=2)
        n_new = cfg.n_compressed(k_src.shape[2])
        if n_new:
            kp = None if self.compress_k is None else self.compress_k.params()
            vp = None if self.compress_v is None else self.compress_v.params()
            k_new = compress_blocks(k_src, cfg, kp).to(k_src.dtype)
            v_new = compress_blocks(v_src, cfg, vp).to(v_src.dtype)
            first = cache.k_cmp.shape[2]
            ends = (first + torch.arange(n_new, device=k_src.device)) * cfg.stride + cfg.block - 1
            cos, sin = rope_cos_sin(ends, self.head_dim, self.rope_theta, _table_dtype(k_src))
            cache.k_cmp = torch.cat([cache.k_cmp, apply_rope(k_new, cos, sin)], dim=2)
            cache.v_cmp = torch.cat([cache.v_cmp, v_new], dim=2)
            k_src, v_src = k_src[:, :, n_new * cfg.stride:], v_src[:, :, n_new * cfg.stride:]
        cache.k_src, cache.v_src = k_src, v_src

    def forward(self, x: torch.Tensor, cache: NSACache | None = None) -> torch.Tensor:
        """x: (batch, seq, hidden) -> (batch, seq, hidden).

        With ``cache`` the tokens of x follow those already cached (they are appended).
        """
        check_tensor("x", x, ndim=3)
        b, t, hid = x.shape
        if hid != self.hidden:
            raise ValueError(f"x: last dimension must be hidden={self.hidden}, got {hid}")
        if cache is not None and cache.k.shape[0] != b:
            raise ValueError(f"cache: batch {cache.k.shape[0]} does not match x's batch {b}")
        h, hkv, d = self.heads, self.kv_heads, self.head_dim
        q = self.q_proj(x).view(b, t, h, d).transpose(1, 2)
        n_kv = 3 if self.separate_kv else 1
        k = self.k_proj(x).view(b, t, n_kv, hkv, d).permute(2, 0, 3, 1, 4)      # (n_kv, B, Hkv, T, D)
        v = self.v_proj(x).view(b, t, n_kv, hkv, d).permute(2, 0, 3, 1, 4)
        # Under autocast the projections come out in the autocast dtype, not x's: a new cache takes
        # theirs, and an existing cache keeps its own (q, k, v follow it), so q and the keys agree.
        if cache is None:
            cache = self.new_cache(b, device=x.device, dtype=k.dtype)
        elif cache.k.dtype != k.dtype:
            q, k, v = q.to(cache.k.dtype), k.to(cache.k.dtype), v.to(cache.k.dtype)
        start = cache.length
        cos, sin = rope_cos_sin(torch.arange(start, start + t, device=x.device), d, self.rope_theta, _table_dtype(q))
        q = apply_rope(q, cos, sin)
        kb = dict(zip(BRANCHES, (k[i % n_kv] for i in range(3))))
        vb = dict(zip(BRANCHES, (v[i % n_kv] for i in range(3))))

        self._compress(cache, kb["cmp"], vb["cmp"])
        cache.k = torch.cat([cache.k, apply_rope(kb["slc"], cos, sin)], dim=2)
        cache.v = torch.cat([cache.v, vb["slc"]], dim=2)
        if self.separate_kv:
            assert cache.k_win is not None and cache.v_win is not None
            cache.k_win = torch.cat([cache.k_win, apply_rope(kb["win"], cos, sin)], dim=2)
            cache.v_win = torch.cat([cache.v_win, vb["win"]], dim=2)

        gates = torch.sigmoid(self.gate_proj(x)).view(b, t, h, 3).transpose(1, 2)    # (B, H, T, 3)
        kw = dict(k_cmp=cache.k_cmp, v_cmp=cache.v_cmp, k_win=cache.k_win, v_win=cache.v_win, scale=d ** -0.5)
        if t == 1 and start > 0 and not torch.is_grad_enabled():
            # a decode step: the split-KV decode kernel reads only the chosen tokens
            o = nsa_decode(q[:, :, 0], cache.k, cache.v, gates[:, :, 0], self.cfg, **kw)[0][:, :, None]
        else:
            o = nsa_attention(q, cache.k, cache.v, gates, self.cfg, **kw)
        assert isinstance(o, torch.Tensor)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, h * d))

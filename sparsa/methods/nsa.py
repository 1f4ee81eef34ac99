"""Native Sparse Attention (DeepSeek), parameter-free functional form: mean-pool compression, fixed gates."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .._validation import check_float, check_int
from ..ops.dense.reference import causal_pairs, query_positions
from ..ops.nsa import NSAConfig, compress_blocks, nsa_attention, nsa_decode, nsa_decode_ref, nsa_pairs_per_row
from .base import AttentionStats, DecodeMethod, prefill_stats, solve_budget
from .registry import register

_GEOMETRY = ("block", "stride", "sel_block", "n_forced_init", "n_forced_local")
_PAPER = NSAConfig()
PAPER_GEOMETRY = {f: getattr(_PAPER, f) for f in _GEOMETRY}

# Geometries tried in turn when a compression target is set and no geometry field is: the first
# one able to reach the target is used. The compression branch alone reads about 1/stride of the
# keys and the forced blocks ~2.5 selection blocks per query, so the paper's geometry tops out
# near 7x at 4K keys and below 16x at any length; the coarser ones reach 20x from 4K keys on.
GEOMETRY_LADDER: tuple[dict[str, int], ...] = (
    PAPER_GEOMETRY,
    {"block": 64, "stride": 32, "sel_block": 32, "n_forced_init": 1, "n_forced_local": 1},
    {"block": 64, "stride": 32, "sel_block": 32, "n_forced_init": 0, "n_forced_local": 1},
)


@dataclass
class NSADecodeState:
    """Decode state: the resolved configuration and the mean-pooled compressed cache.

    k_cmp, v_cmp: (batch, kv_heads, n_cmp, head_dim) compressed tokens of the cache so far.
    """

    cfg: NSAConfig
    k_cmp: torch.Tensor
    v_cmp: torch.Tensor


@register
@dataclass
class NSA(DecodeMethod):
    """Native Sparse Attention without trained parameters.

    The three NSA branches (see :mod:`sparsa.ops.nsa.reference`) with mean-pooled compressed
    keys/values and constant gates ``gates = (g_cmp, g_slc, g_win)``, each in [0, 1]; the
    default (1/3, 1/3, 1/3) averages the branches. The trained model computes its gates from
    the hidden state (:class:`sparsa.nn.NativeSparseAttention`). Because the output is a gated
    mixture of three attentions, it does not equal dense attention even at full budget; with
    ``gates=(0, 1, 0)`` and ``n_select`` covering every block it does.

    ``None`` hyper-parameters take the paper's values (block 32, stride 16, sel_block 64,
    n_select 16, window 512, first block and 2 local blocks forced) unless ``compression`` is
    set: then the unset budgets ``n_select`` and ``window`` grow together, the selection getting
    two thirds of the extra tokens as in the paper (16 x 64 vs 512), until the achieved
    compression is closest to the target. If no geometry field is given and the paper geometry
    cannot reach the target, the coarser geometries of ``GEOMETRY_LADDER`` are tried in turn.
    Achieved compression counts compressed tokens, selected keys and window keys as pairs
    (the selection and the window may read the same key twice, as the kernels do).
    """

    name = "nsa"
    phase = "both"
    paper = "Yuan et al., Native Sparse Attention, 2025"

    block: int | None = None
    stride: int | None = None
    sel_block: int | None = None
    n_select: int | None = None
    window: int | None = None
    n_forced_init: int | None = None
    n_forced_local: int | None = None
    gates: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)

    def validate(self) -> None:
        for f in (*_GEOMETRY, "n_select", "window"):
            value = getattr(self, f)
            if value is not None:
                check_int(f, value, minimum=0 if f in ("window", "n_forced_init", "n_forced_local") else 1)
        if not isinstance(self.gates, (tuple, list)) or len(self.gates) != 3:
            raise TypeError("gates: expected a tuple of 3 numbers (compression, selection, window), "
                            f"got {self.gates!r}")
        self.gates = tuple(check_float("gates", g, 0.0, 1.0) for g in self.gates)  # type: ignore[assignment]
        self._config(self._rungs()[0], None, None)  # raises for bad combinations, naming the field

    # -- configuration -------------------------------------------------------------------------

    def _rungs(self) -> tuple[dict[str, int], ...]:
        explicit = {f: getattr(self, f) for f in _GEOMETRY if getattr(self, f) is not None}
        if self.compression is None or explicit:
            return ({**PAPER_GEOMETRY, **explicit},)
        return GEOMETRY_LADDER

    def _config(self, geometry: dict[str, int], n_select: int | None, window: int | None) -> NSAConfig:
        forced = geometry["n_forced_init"] + geometry["n_forced_local"]
        if n_select is None:
            n_select = self.n_select if self.n_select is not None else max(_PAPER.n_select, forced, 1)
        if window is None:
            window = self.window if self.window is not None else _PAPER.window
        return NSAConfig(n_select=n_select, window=window, **geometry)

    def target(self) -> float | None:
        return None if self.n_select is not None and self.window is not None else self.compression

    def _solve(self, dense: float, count: Callable[[NSAConfig], float], kv_len: int) -> NSAConfig:
        """The configuration whose ``count`` is closest to ``dense / compression``."""
        if self.compression is None or (self.n_select is not None and self.window is not None):
            return self._config(self._rungs()[0], None, None)
        target = dense / self.compression
        best: tuple[float, Callable[[int], NSAConfig], int] | None = None
        for geometry in self._rungs():
            base = max(1, geometry["n_forced_init"] + geometry["n_forced_local"])
            sel = geometry["sel_block"]
            max_extra = max(0, -(-kv_len // sel) - base)
            if self.n_select is None and self.window is None:
                def make(x: int, g: dict[str, int] = geometry, base: int = base, sel: int = sel,
                         max_extra: int = max_extra) -> NSAConfig:
                    extra = min((2 * x) // (3 * sel), max_extra)
                    return self._config(g, base + extra, min(kv_len, x - extra * sel))
                hi = 3 * kv_len
            elif self.n_select is None:
                def make(x: int, g: dict[str, int] = geometry, base: int = base) -> NSAConfig:
                    return self._config(g, base + x, None)
                hi = max_extra
            else:
                def make(x: int, g: dict[str, int] = geometry) -> NSAConfig:
                    return self._config(g, None, x)
                hi = kv_len
            reach = dense / max(count(make(0)), 1.0)
            if best is None or reach > best[0]:
                best = (reach, make, hi)
            if reach >= self.compression:
                break
        assert best is not None
        _, make, hi = best
        x = solve_budget(lambda x: count(make(x)), target, 0, hi)
        if x > 0 and count(make(x)) > dense:  # never report a compression below 1 when one step less avoids it
            x -= 1
        return make(x)

    def resolve(self, q_len: int, kv_len: int) -> NSAConfig:
        """Configuration of a prefill call with ``q_len`` queries over ``kv_len`` keys."""
        pos = query_positions(q_len, kv_len)

        def count(cfg: NSAConfig) -> float:
            return float(sum(int(t.sum()) for t in nsa_pairs_per_row(cfg, pos)))

        return self._solve(float(causal_pairs(q_len, kv_len)), count, kv_len)

    def resolve_decode(self, context_len: int) -> NSAConfig:
        """Configuration of decode steps over a ``context_len``-token cache."""
        return self._solve(float(context_len), lambda cfg: float(_decode_tokens(cfg, context_len)), context_len)

    # -- prefill ------------------------------------------------------------------------------------

    def _gates(self, *shape: int, like: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        return torch.tensor(self.gates, dtype=dtype, device=like.device).expand(*shape, 3)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                backend: str | None) -> tuple[torch.Tensor, AttentionStats]:
        b, h, lq, _ = q.shape
        lk = k.shape[2]
        cfg = self.resolve(lq, lk)
        out, aux = nsa_attention(q, k, v, self._gates(b, h, lq, like=q), cfg, scale=scale, return_aux=True,
                                 backend=backend)
        info: dict[str, Any] = dataclasses.asdict(cfg)
        info.update(gates=self.gates, pairs_cmp=float(aux.pairs_cmp.sum()), pairs_slc=float(aux.pairs_slc.sum()),
                    pairs_win=float(aux.pairs_win.sum()))
        return out, prefill_stats(self.name, aux.pairs, lq, lk, **info)

    # -- decode ---------------------------------------------------------------------------------------

    def decode_tokens(self, context_len: int) -> int:
        """floor((s - block) / stride) + 1 + n_select * sel_block + window, capped at s (5,631 at 64K).

        ``decode_step`` counts what its branches actually read: the compressed tokens, the
        selected keys up to the query and the window, a key in both the selection and the window
        counted twice. Past a few thousand tokens that is the formula minus the unfilled part of
        the query's own block; on a short cache it can exceed the cap.
        """
        return _decode_tokens(self.resolve_decode(context_len), context_len)

    def init_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> NSADecodeState:
        """Resolve the configuration at the prompt length and mean-pool the prompt's blocks."""
        cfg = self.resolve_decode(k.shape[2])
        return NSADecodeState(cfg, compress_blocks(k, cfg), compress_blocks(v, cfg))

    @staticmethod
    def _extended(k: torch.Tensor, v: torch.Tensor, state: NSADecodeState) -> tuple[torch.Tensor, torch.Tensor]:
        """Compressed cache covering every complete block of ``k``/``v``."""
        cfg, have = state.cfg, state.k_cmp.shape[2]
        if cfg.n_compressed(k.shape[2]) == have:
            return state.k_cmp, state.v_cmp
        start = have * cfg.stride
        new_k = compress_blocks(k[:, :, start:], cfg).to(state.k_cmp.dtype)
        new_v = compress_blocks(v[:, :, start:], cfg).to(state.v_cmp.dtype)
        return torch.cat([state.k_cmp, new_k], dim=2), torch.cat([state.v_cmp, new_v], dim=2)

    def select(self, q: torch.Tensor, k: torch.Tensor, state: NSADecodeState) -> torch.Tensor:
        """Positions (B, Hkv, n_select * sel_block + window) read by the selection branch, then the
        window branch; -1 = unused. The compressed tokens are read as well (see ``decode_step``)."""
        kc, _ = self._extended(k, k, state)
        b, h, _ = q.shape
        _, idx, _ = nsa_decode_ref(q, k, k, self._gates(b, h, like=q), state.cfg, k_cmp=kc, v_cmp=kc)
        return idx

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: NSADecodeState, *,
                    scale: float | None = None) -> tuple[torch.Tensor, NSADecodeState, torch.Tensor]:
        """Gated three-branch attention of q (B, H, D) over the cache k/v (B, Hkv, S, D).

        Returns (out (B, H, D), state with the new compressed tokens, tokens read per (B, H):
        compressed tokens + selected keys + window keys)."""
        kc, vc = self._extended(k, v, state)
        b, h, _ = q.shape
        out, _, tokens = nsa_decode(q, k, v, self._gates(b, h, like=q), state.cfg, k_cmp=kc, v_cmp=vc,
                                    scale=scale)
        return out, NSADecodeState(state.cfg, kc, vc), tokens


def _decode_tokens(cfg: NSAConfig, context_len: int) -> int:
    return min(context_len, cfg.n_compressed(context_len) + cfg.n_select * cfg.sel_block + cfg.window)

"""The per-layer decoder protocol of the decode methods that run on a compact cache.

A decode method whose ``compacts`` is True builds, from a prompt, the
:class:`LayerDecoder` of one attention layer (:meth:`~sparsa.methods.base.Method.make_decoder`):
the store that holds only what the method will read (a :class:`~sparsa.cache.VarlenKVCache`
or a :class:`~sparsa.cache.PagedKVCache`) together with the method's step on it. Callers (the
HF cache, the benchmarks) hold decoders and call :meth:`LayerDecoder.step`,
:meth:`~LayerDecoder.nbytes`, :meth:`~LayerDecoder.tokens` and, where
:attr:`~LayerDecoder.rewindable`, :meth:`~LayerDecoder.rewind`; they never look at which method
built them. :func:`sparsa.methods.init_cache` is the entry point that resolves the method and
checks the prompt.

This module holds what every decoder shares: :class:`StepStats`, the base class, the decoder
that keeps every token of a :class:`~sparsa.cache.VarlenKVCache` (:class:`VarlenDecoder`,
subclassed by the evicting methods) and helpers to plan ragged batches per sequence.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch

from ..cache.varlen import VarlenKVCache

#: free rows per head above the budget of a method that evicts one token per step: one host
#: sync per this many steps
EVICT_RESERVE = 16


def growing_reserve(kept_mean: float) -> int:
    """Free rows per head for methods that keep every generated token: 1/16 of what a head
    keeps on average (at least 16). Every head grows by one token per step, so the same room
    serves all heads; the store is re-laid out every ~kept/16 steps and holds ~6% extra."""
    return max(16, int(kept_mean) // 16)


class StepStats:
    """What one decode step read and what the cache holds.

    * ``tokens_read`` (B, H) float64: KV tokens each query head read, page bounds counted in
      token-equivalents (their bytes over one token's key and value bytes, as stored);
    * ``context`` (B,) int64: tokens of each sequence, the new one included;
    * ``kv_bytes_read`` (B,) float64: bytes of keys and values (codes and scales as stored) and
      of metadata the step read;
    * ``cache_bytes``: bytes the cache holds after the step.

    ``read`` is (B, Hkv) tokens per KV head (each query head of the group reads the same);
    ``bytes_per_read`` a float or a (B, 1) tensor of bytes per token read. Counts that live on
    the device are copied to the host only when first asked for, so a decoding loop does not
    synchronise.
    """

    def __init__(self, read: torch.Tensor, heads: int, context: list[int], bytes_per_read: torch.Tensor | float,
                 cache_bytes: int, info: dict[str, Any] | None = None) -> None:
        self._read, self._heads, self._bytes_per_read = read, heads, bytes_per_read
        self.context = torch.tensor(context, dtype=torch.int64)
        self.cache_bytes = cache_bytes
        self.info = dict(info or {})

    @property
    def tokens_read(self) -> torch.Tensor:
        r = self._read.double()
        return r.repeat_interleave(self._heads // r.shape[1], dim=1)

    @property
    def kv_bytes_read(self) -> torch.Tensor:
        r = self._read.double()
        return (r * self._bytes_per_read).sum(-1)

    @property
    def compression(self) -> float:
        """Context tokens over tokens read, summed over batch and heads (DESIGN.md's decode ratio)."""
        read = float(self._read.double().sum()) * self._heads / self._read.shape[1]
        return float("inf") if read <= 0 else float(self.context.double().sum()) * self._heads / read

    @property
    def bytes_read(self) -> float:
        return float(self.kv_bytes_read.sum())

    def __repr__(self) -> str:
        return f"StepStats(compression={self.compression:.3f}, bytes_read={self.bytes_read:.0f}, " \
               f"cache_bytes={self.cache_bytes})"


class LayerDecoder:
    """One layer's decode state on a compact store: ``cache`` plus the method's step.

    ``storage`` names the store's layout ("varlen" or "paged"); ``rewindable`` says whether
    :meth:`rewind` can undo steps (False for decoders that evict during decoding).
    """

    storage: ClassVar[str] = "varlen"
    rewindable: ClassVar[bool] = True

    def __init__(self, method: Any, cache: Any, heads: int, scale: float, backend: str | None) -> None:
        self.method, self.cache, self.heads, self.scale, self.backend = method, cache, heads, scale, backend

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, StepStats]:
        """One decode step: q (B, H, D) the new token's queries, k, v (B, Hkv, D) its key and value
        (RoPE applied at position ``seq_lens``). Appends, attends, updates the store; returns
        (out (B, H, D), stats)."""
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes the store holds on its device (rows or pages kept for growth included)."""
        return self.cache.nbytes()

    def tokens(self) -> torch.Tensor:
        """(B, Hkv) int64 on the CPU: tokens each KV head of each sequence holds."""
        raise NotImplementedError

    def rewind(self, n: int = 1) -> None:
        """Undo the last ``n`` steps' appends (only where :attr:`rewindable`)."""
        if not self.rewindable:
            raise ValueError(f"rewind: {type(self).__name__} evicts during decoding; its steps cannot be undone")
        self.cache.rewind(n)

    @property
    def seq_lens(self) -> torch.Tensor:
        """(B,) int64 tokens seen per sequence (the next token's position)."""
        return self.cache.seq_lens

    def _check_step(self, q: torch.Tensor) -> None:
        if not isinstance(q, torch.Tensor):
            raise TypeError(f"q: expected a torch.Tensor, got {type(q).__name__}")
        if q.ndim != 3 or q.shape[1] != self.heads:
            raise ValueError(f"q: expected shape (batch, heads={self.heads}, head_dim), got {tuple(q.shape)}")


class VarlenDecoder(LayerDecoder):
    """Attention over every token of a :class:`~sparsa.cache.VarlenKVCache`.

    As is, it keeps every token (dense decoding, SnapKV after its prompt selection).
    Evicting methods subclass it: ``wants_scores`` asks :meth:`attend` for what score-based
    eviction needs, and :meth:`evict` drops tokens after the step's attention.
    """

    wants_scores: ClassVar[bool] = False

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, StepStats]:
        self._check_step(q)
        c: VarlenKVCache = self.cache
        c.check_query(q)
        c.append(k, v, backend=self.backend)
        read = c.length.clone()
        out, aux = c.attend(q, scale=self.scale, backend=self.backend, want_scores=self.wants_scores)
        self.evict(aux)
        return out, StepStats(read, self.heads, c.seq_lens_host, float(c.kv_bytes_per_token()), c.nbytes())

    def evict(self, aux: Any) -> None:
        """Drop tokens after the step's attention (``aux`` from the store's ``attend``); none here."""

    def tokens(self) -> torch.Tensor:
        return self.cache.length.to(torch.int64).cpu()


def per_sequence(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any], q: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor, lengths: torch.Tensor | None) -> list[Any]:
    """``fn(q_b, k_b, v_b)`` per sequence on its real tokens (``lengths`` (B,) of a right-padded
    batch whose q holds every position), or ``[fn(q, k, v)]`` once for the batch (None)."""
    if lengths is None:
        return [fn(q, k, v)]
    return [fn(q[i:i + 1, :, :n], k[i:i + 1, :, :n], v[i:i + 1, :, :n]) for i, n in enumerate(lengths.tolist())]


def per_row(values: list[Any], batch: int) -> list[Any]:
    """One value per batch row from :func:`per_sequence`'s results (one per sequence, or one for all)."""
    return list(values) if len(values) == batch else list(values) * batch


def stack_positions(parts: list[torch.Tensor], fill: float | int = -1) -> torch.Tensor:
    """Concatenate (b_i, Hkv, n_i) tensors along the batch, padding the last dim with ``fill``."""
    width = max(p.shape[-1] for p in parts)
    out = [torch.cat([p, torch.full((*p.shape[:-1], width - p.shape[-1]), fill, dtype=p.dtype,
                                    device=p.device)], -1) for p in parts]
    return torch.cat(out, 0)


def random_kept_positions(b: int, hkv: int, length: int, counts: torch.Tensor, window: int,
                          gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(B, Hkv, n) positions: the last ``window`` tokens plus ``counts[b, h]`` random earlier ones
    (-1 padded). For decoders whose prompt selection is drawn rather than planned (benchmarks:
    a step's time depends on how many tokens each head keeps, not on which)."""
    cand = max(0, length - window)
    w = min(window, length)
    score = torch.rand(b, hkv, cand, generator=gen, device=device)
    n = int(counts.max()) if counts.numel() else 0
    top = score.topk(min(n, cand), dim=-1).indices if n else score[..., :0].long()
    j = torch.arange(top.shape[-1], device=device)
    top = torch.where(j < counts[..., None].to(device), top, torch.full_like(top, -1))
    tail = torch.arange(cand, cand + w, device=device).expand(b, hkv, w)
    return torch.cat([top, tail], -1)


__all__ = ["EVICT_RESERVE", "LayerDecoder", "StepStats", "VarlenDecoder", "growing_reserve", "per_row",
           "per_sequence", "random_kept_positions", "stack_positions"]

"""The method protocol: a dataclass of hyper-parameters that plans and runs sparse attention.

Every method accepts ``compression`` (a target, >= 1; 1 means dense-equivalent). Explicit
hyper-parameters override the target. After a call, the returned :class:`AttentionStats`
reports the compression actually achieved, as the README (top section) defines it:

* prefill: pairs of the causal dense matrix / pairs computed;
* decode: context tokens / KV tokens read by one decode step (metadata reads counted).

Queries are the last ``q_len`` positions of the ``kv_len``-long sequence (causal,
bottom-right aligned). Decode-phase methods called on a block of queries treat each query row
as a decode step at its position: the row reads exactly the tokens the method would read at
that step; their stats describe the last row.

A method whose ``compression`` target is in force and that achieves less than 0.9 of it
warns once per (method, target) per process with :class:`CompressionNotReached` (for stats
still on the device, :class:`DeferredStats`, when they are first read). A method
that runs dense attention for some heads instead of its pattern says so in
``stats.info["dense_fallback"]`` and counts those heads' pairs as dense.

Where no Triton kernel runs, methods whose pattern is a mask (``fast_masks``) compute the
masked attention with SDPA in the inputs' dtype (:mod:`sparsa.ops.dense.sdpa`), unless
``backend="reference"`` asks for the float32 spec (see :func:`sparsa.backend.masked_executor`).
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from .._validation import check_compression, check_qkv, check_scale
from ..backend import masked_executor
from ..ops.dense.reference import causal_pairs
from ..ops.dense.sdpa import sdpa_masked_scope
from ..ops.kv_quant import QuantSpec
from .decoder import LayerDecoder

#: achieved / target below which a call warns
REACH_TOLERANCE = 0.9


class CompressionNotReached(UserWarning):
    """A method achieved less than ``REACH_TOLERANCE`` of its compression target."""


_warned_targets: set[tuple[str, float]] = set()


def warn_unreached(method: str, target: float | None, achieved: float) -> None:
    """Warn (once per ``(method, target)`` per process) when ``achieved < 0.9 * target``."""
    if target is None or achieved >= REACH_TOLERANCE * target:
        return
    key = (method, float(target))
    if key in _warned_targets:
        return
    _warned_targets.add(key)
    warnings.warn(CompressionNotReached(
        f"{method}: compression target {target:g} not reached; achieved {achieved:.3f} "
        f"(the reported stats hold the achieved value)"), stacklevel=4)


@dataclass
class AttentionStats:
    """What a call computed.

    ``dense`` and ``computed`` are totals over batch and query heads (pairs for prefill,
    tokens for decode); ``compression = dense / computed``; ``per_head`` (heads,) holds each
    query head's compression, summed over the batch.
    """

    method: str
    phase: str
    dense: float
    computed: float
    per_head: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def compression(self) -> float:
        return float("inf") if self.computed <= 0 else self.dense / self.computed

    @property
    def sparsity(self) -> float:
        return 1.0 - 1.0 / self.compression

    def __repr__(self) -> str:
        return (f"AttentionStats(method={self.method!r}, phase={self.phase!r}, "
                f"compression={self.compression:.3f}, sparsity={self.sparsity:.4f})")


def _host_info(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` with device values on the host: 0-dim tensors as Python numbers, others on the CPU."""
    out = {}
    for key, value in info.items():
        if isinstance(value, torch.Tensor):
            value = value.item() if value.dim() == 0 else value.cpu()
        out[key] = value
    return out


def prefill_stats(method: str, pairs: torch.Tensor, q_len: int, kv_len: int, *, defer: bool | None = None,
                  **info: Any) -> AttentionStats:
    """Stats from per-(batch, head) pair counts of a prefill call.

    pairs: (B, H) counts. Tensors in ``info`` are read back too (0-dim ones as numbers).
    ``defer`` (default: when ``pairs`` is on CUDA) returns :class:`DeferredStats`, which reads
    the counts back only when a field is first read, so a call never waits for the device.
    """
    if defer is None:
        defer = pairs.is_cuda
    if defer:
        return DeferredStats(method, pairs, q_len, kv_len, info)
    return _read_prefill_stats(method, pairs, q_len, kv_len, info)


def _read_prefill_stats(method: str, pairs: torch.Tensor, q_len: int, kv_len: int,
                        info: dict[str, Any]) -> AttentionStats:
    dense_per_head = float(causal_pairs(q_len, kv_len))
    per_head_pairs = pairs.sum(0).double().cpu()
    per_head = (dense_per_head * pairs.shape[0]) / per_head_pairs.clamp_min(1.0)
    return AttentionStats(method, "prefill", dense_per_head * pairs.numel(), float(pairs.sum()), per_head,
                          _host_info(info))


class DeferredStats(AttentionStats):
    """Prefill stats whose device values (pair counts, tensors in ``info``) are read back on
    first access of ``computed``, ``per_head`` or ``info`` (or anything derived from them).

    ``method``, ``phase`` and ``dense`` are known on the host. Callbacks registered with
    :meth:`when_read` run once, right after the read (the compression check of a call).
    """

    def __init__(self, method: str, pairs: torch.Tensor, q_len: int, kv_len: int, info: dict[str, Any]) -> None:
        self.method = method
        self.phase = "prefill"
        self.dense = float(causal_pairs(q_len, kv_len)) * pairs.numel()
        self._source: tuple[torch.Tensor, int, int, dict[str, Any]] | None = (pairs, q_len, kv_len, info)
        self._values: AttentionStats | None = None
        self._callbacks: list[Callable[[AttentionStats], None]] = []

    @property
    def pending(self) -> bool:
        """True until the device values have been read."""
        return self._values is None

    def when_read(self, callback: Callable[[AttentionStats], None]) -> None:
        """Run ``callback(self)`` once the values are read (now, if they already are)."""
        if self.pending:
            self._callbacks.append(callback)
        else:
            callback(self)

    def _read(self) -> AttentionStats:
        if self._values is None:
            assert self._source is not None
            pairs, q_len, kv_len, info = self._source
            self._values = _read_prefill_stats(self.method, pairs, q_len, kv_len, info)
            self._source = None
            callbacks, self._callbacks = self._callbacks, []
            for callback in callbacks:
                callback(self)
        return self._values

    def _field(name: str) -> property:  # type: ignore[misc]
        def get(self: "DeferredStats") -> Any:
            return getattr(self._read(), name)

        def put(self: "DeferredStats", value: Any) -> None:
            setattr(self._read(), name, value)
        return property(get, put)

    computed = _field("computed")
    per_head = _field("per_head")
    info = _field("info")
    del _field


def decode_stats(method: str, tokens_read: torch.Tensor, context_len: int, **info: Any) -> AttentionStats:
    """Stats from per-(batch, head) token counts read by one decode step at ``context_len``."""
    per_head_read = tokens_read.sum(0).double().cpu()
    per_head = (context_len * tokens_read.shape[0]) / per_head_read.clamp_min(1.0)
    return AttentionStats(method, "decode", float(context_len) * tokens_read.numel(), float(tokens_read.sum()),
                          per_head, dict(info))


def solve_budget(count: Callable[[int], float], target: float, lo: int, hi: int) -> int:
    """Integer ``x`` in [lo, hi] whose ``count(x)`` (non-decreasing in x) is closest to ``target``."""
    if hi <= lo:
        return lo
    a, b = lo, hi
    while a < b:
        mid = (a + b) // 2
        if count(mid) < target:
            a = mid + 1
        else:
            b = mid
    best = a
    if a > lo and abs(count(a - 1) - target) < abs(count(a) - target):
        best = a - 1
    return best


@dataclass
class Method:
    """Base class of every sparse attention method. Subclasses are dataclasses."""

    name: ClassVar[str] = ""
    phase: ClassVar[str] = "prefill"      # "prefill", "decode" or "both"
    paper: ClassVar[str] = ""

    #: the pattern is expressed as masks for the reference ops, so it may run on the SDPA executor
    fast_masks: ClassVar[bool] = False

    #: decoding runs on a compact store built by :meth:`make_decoder` (the layer's full keys and
    #: values are released after the prompt); ``decode_store`` names its layout ("varlen", "paged")
    compacts: ClassVar[bool] = False
    decode_store: ClassVar[str] = "varlen"

    compression: float | None = None

    def __post_init__(self) -> None:
        self.compression = check_compression(self.compression)
        self.validate()

    def validate(self) -> None:
        """Check hyper-parameters; raise ValueError/TypeError naming the field."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                backend: str | None) -> tuple[torch.Tensor, AttentionStats]:
        raise NotImplementedError

    def target(self) -> float | None:
        """The compression target the budget is solved for; None when explicit
        hyper-parameters fix the budget (then nothing is warned about)."""
        return self.compression

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                 backend: str | None = None) -> tuple[torch.Tensor, AttentionStats]:
        """Run the method. q: (B, H, Lq, D); k, v: (B, Hkv, Lk, D). Returns (out like q, stats)."""
        check_qkv(q, k, v)
        fast = self.fast_masks and masked_executor(backend, q.device) == "sdpa"  # also rejects a bad backend
        with sdpa_masked_scope(fast):
            out, stats = self.forward(q, k, v, scale=check_scale(scale, q.shape[-1]), backend=backend)
        name, target = self.name, self.target()
        if isinstance(stats, DeferredStats) and stats.pending:
            # checked when the stats are first read: the call does not wait for the device
            stats.when_read(lambda s: warn_unreached(name, target, s.compression))
        else:
            warn_unreached(name, target, stats.compression)
        return out, stats

    def for_prefill(self) -> "Method":
        """The method a prefill call runs (a prompt or prompt chunk, stats counted in pairs)."""
        return self

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def make_decoder(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, lengths: torch.Tensor | None,
                     scale: float, quant: QuantSpec | None, backend: str | None, reserve: int | None,
                     **options: Any) -> LayerDecoder:
        """The layer's decoder on a compact store, built from a prompt (methods with ``compacts``).

        q (B, H, Lq, D): the prompt's last Lq queries (all L positions when ``lengths`` is
        given); k, v (B, Hkv, L, D) with RoPE applied. ``lengths`` (B,) int64: real tokens of
        each right-padded sequence, each planned on its own tokens (None: every row is L long).
        ``quant``: the store's int8/int4 format or None. ``reserve``: free tokens per head
        before the store grows (None: the method's default). ``options``: method-specific
        settings (Quest's ``page_size`` / ``bounds``); a method raises ValueError naming an
        option it does not take. Called through :func:`sparsa.methods.init_cache`, which has
        checked the arguments.
        """
        raise TypeError(f"method: {self.name} has no compact decoder")

    def reject_options(self, options: dict[str, Any]) -> None:
        """ValueError naming the first of ``options`` (given to :meth:`make_decoder`) this method does not take."""
        for key in options:
            raise ValueError(f"{key}: the {self.name} decoder takes no {key!r} option")


class DecodeMethod(Method):
    """Methods that decide what each decode step reads from the KV cache.

    ``init_decode`` runs once after the prompt (it may evict); ``decode_step`` attends one new
    query over the cache (whose last entry is the new token) and updates the state.
    """

    phase: ClassVar[str] = "decode"

    def decode_tokens(self, context_len: int) -> int:
        """KV tokens one decode step reads at ``context_len`` (metadata counted)."""
        raise NotImplementedError

    def init_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Any:
        """State after a prompt whose queries/keys/values are q (B, H, L, D), k/v (B, Hkv, L, D)."""
        raise NotImplementedError

    def select(self, q: torch.Tensor, k: torch.Tensor, state: Any) -> torch.Tensor:
        """Token positions (B, Hkv, n) one step with query q (B, H, D) reads; -1 marks unused slots."""
        raise NotImplementedError

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: Any, *,
                    scale: float | None = None) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """One decode step: returns (out (B, H, D), new state, tokens read per (B, H))."""
        raise NotImplementedError

    def random_decoder(self, k: torch.Tensor, v: torch.Tensor, *, heads: int, quant: QuantSpec | str | None,
                       generator: torch.Generator) -> LayerDecoder:
        """A decoder holding as many tokens per head as :meth:`make_decoder` keeps for the
        prompt k, v (B, Hkv, L, D), for benchmarks of the step: methods whose prompt selection
        is costly override it to draw which tokens are kept with ``generator``. Default: the
        decoder planned from uninitialised queries (heads of them), for methods whose plan does
        not read the queries."""
        b, _, _, d = k.shape
        q0 = torch.empty(b, heads, 1, d, dtype=k.dtype, device=k.device)
        return self.make_decoder(q0, k, v, lengths=None, scale=check_scale(None, d), quant=QuantSpec.parse(quant),
                                 backend=None, reserve=None)

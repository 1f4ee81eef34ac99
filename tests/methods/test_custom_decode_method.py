"""A compacting decode method defined outside the package runs everywhere the shipped ones do.

``KeepEnds`` (this file only) keeps the first ``first`` tokens and the ``last`` newest ones: it
subclasses :class:`sparsa.DecodeMethod`, declares ``compacts`` and builds its decoder on the
cache/ storage in ``make_decoder``; nothing in the package names it. It then runs through
``sparsa.attention``, :func:`sparsa.methods.init_cache`, ``sparsa.apply(model, decode=...)`` with
``model.generate`` on the shipped sparsa-tiny, and the decode benchmark's decoder builder (the
benchmark itself needs CUDA; its builder runs on CPU tensors).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

import sparsa
from sparsa.cache import VarlenKVCache
from sparsa.methods import DecodeMethod, init_cache, list_methods, register
from sparsa.methods.base import AttentionStats, decode_stats
from sparsa.methods.decoder import VarlenDecoder
from sparsa.ops.dense.reference import masked_attention, query_positions
from sparsa.ops.kv_quant import QuantSpec


class KeepEndsDecoder(VarlenDecoder):
    """After each step, evict the token that left the window (first, last: (B,) int64)."""

    rewindable = False

    def __init__(self, method: Any, cache: VarlenKVCache, heads: int, scale: float, backend: str | None,
                 first: torch.Tensor, last: torch.Tensor) -> None:
        super().__init__(method, cache, heads, scale, backend)
        self.first, self.last = first, last

    def evict(self, aux: Any) -> None:
        self.cache.evict_sink_window(self.first, self.last, backend=self.backend)


@dataclass
class KeepEnds(DecodeMethod):
    """A query at position p reads [0, first) and (p - last, p]."""

    name = "test_keep_ends"
    compacts = True

    first: int = 4
    last: int = 8

    def decode_tokens(self, context_len: int) -> int:
        return min(context_len, self.first + self.last)

    def _kept(self, p: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(rows, L) bool: what each query position in p (rows,) reads of the keys cols (L,)."""
        causal = cols[None, :] <= p[:, None]
        return causal & ((cols[None, :] < self.first) | (cols[None, :] > p[:, None] - self.last))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                backend: str | None) -> tuple[torch.Tensor, AttentionStats]:
        lq, lk = q.shape[2], k.shape[2]
        cols = torch.arange(lk, device=q.device)

        def mask_fn(s: int, e: int) -> torch.Tensor:
            return self._kept(query_positions(lq, lk, s, e, q.device), cols)[None, None]

        out, _ = masked_attention(q, k, v, mask_fn, scale=scale)
        read = torch.full((q.shape[0], q.shape[1]), float(self.decode_tokens(lk)), dtype=torch.float64)
        return out, decode_stats(self.name, read, lk)

    def init_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, n) positions a prompt of k's length leaves for the next step."""
        length = k.shape[2]
        keep = self._kept(torch.tensor([length], device=k.device), torch.arange(length, device=k.device))[0]
        return keep.nonzero().flatten().expand(k.shape[0], k.shape[1], -1)

    def make_decoder(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, lengths: torch.Tensor | None,
                     scale: float, quant: QuantSpec | None, backend: str | None, reserve: int | None,
                     **options: Any) -> KeepEndsDecoder:
        self.reject_options(options)
        if lengths is not None:
            raise ValueError("lengths: KeepEnds plans unpadded batches only")
        cache = VarlenKVCache.from_dense(k, v, self.init_decode(q, k, v), quant=quant,
                                         reserve=16 if reserve is None else reserve)
        b = k.shape[0]
        first = torch.full((b,), self.first, dtype=torch.int64, device=k.device)
        last = torch.full((b,), self.last, dtype=torch.int64, device=k.device)
        return KeepEndsDecoder(self, cache, q.shape[1], scale, backend, first, last)


@pytest.fixture(autouse=True, scope="module")
def _registered():
    """KeepEnds is registered while this module's tests run only, so that tests iterating over
    every registered method elsewhere do not meet it."""
    from sparsa.methods.registry import unregister

    if KeepEnds.name not in list_methods():
        register(KeepEnds)
    yield
    unregister(KeepEnds.name)


def _qkv(length: int, b: int = 2, h: int = 4, hkv: int = 2, d: int = 16) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(b, n, length, d, generator=g) for n in (h, hkv, hkv))


def test_attention_reads_the_ends() -> None:
    q, k, v = _qkv(40)
    out, stats = sparsa.attention(q[:, :, -1:], k, v, method="test_keep_ends", return_stats=True)
    keep = torch.cat([torch.arange(4), torch.arange(40 - 8, 40)])
    ref = torch.softmax(q[:, :, -1:] @ k[:, :, keep].repeat_interleave(2, 1).transpose(-1, -2) / 4.0, -1) \
        @ v[:, :, keep].repeat_interleave(2, 1)
    torch.testing.assert_close(out, ref)
    assert stats.compression == pytest.approx(40 / 12)


def test_decoder_steps_match_attention() -> None:
    q, k, v = _qkv(30)
    p = 20
    dec = init_cache("test_keep_ends", q[:, :, :p], k[:, :, :p], v[:, :, :p], backend="reference")
    assert isinstance(dec, KeepEndsDecoder) and not dec.rewindable and dec.storage == "varlen"
    assert torch.equal(dec.tokens(), torch.full((2, 2), 4 + 8 - 1))
    full = sparsa.attention(q, k, v, method=KeepEnds())
    for t in range(p, 30):
        out, step = dec.step(q[:, :, t], k[:, :, t], v[:, :, t])
        torch.testing.assert_close(out, full[:, :, t], atol=1e-5, rtol=1e-5)
        assert step.compression == pytest.approx((t + 1) / 12)
    assert dec.nbytes() > 0
    with pytest.raises(ValueError, match="rewind"):
        dec.rewind()
    with pytest.raises(ValueError, match="page_size"):
        init_cache("test_keep_ends", q, k, v, page_size=4)


def test_generate_on_sparsa_tiny() -> None:
    pytest.importorskip("transformers")
    from sparsa.eval.models import load_model
    from sparsa.integrations.hf import compat

    model, tok = load_model(device="cpu")
    ids = tok("def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return", return_tensors="pt").input_ids
    assert ids.shape[1] > 12
    with sparsa.apply(model, decode="test_keep_ends") as h:
        cache = h.new_cache()
        out = model.generate(ids, max_new_tokens=6, do_sample=False, **{compat.cache_kwarg_name(model): cache})
        stats = h.stats("decode")
    assert stats.compression > 1.0
    assert cache.storage(0) == "varlen"
    assert compat.layer_kv(cache, 0)[0].numel() == 0                     # full keys and values freed
    assert int(cache.layer_tokens(0).max()) == 4 + 8 - 1
    # the same reads as StreamingLLM with 4 sinks and an 8-token window: the same tokens
    with sparsa.apply(model, decode=sparsa.get_method("streaming", sink=4, window=8)):
        ref = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, ref)


def test_decode_bench_builder_on_cpu() -> None:
    from sparsa.bench.decode import build_decoder

    _, k, v = _qkv(64, b=1)
    gen = torch.Generator().manual_seed(0)
    dec = build_decoder("test_keep_ends", None, k, v, 4, None, gen)
    assert isinstance(dec, KeepEndsDecoder) and not dec.rewindable
    q = torch.randn(1, 4, 16, generator=gen)
    _, step = dec.step(q, k[:, :, 0], v[:, :, 0])
    assert step.compression == pytest.approx(65 / 12)

"""BigBird and A-shape / StreamingLLM against masks built here with explicit loops."""
from __future__ import annotations

import pytest
import torch

import sparsa
from sparsa.methods.bigbird import BigBird
from sparsa.methods.streaming import Streaming

from ._util import explicit_attention, rel_err

TARGETS = (2, 5, 10, 20)


def qkv(b: int, h: int, hkv: int, lq: int, lk: int, d: int = 16, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, lk, d, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, lk, d, generator=g, dtype=dtype)
    return q, k, v


def causal_allowed(lq: int, lk: int) -> torch.Tensor:
    m = torch.zeros(1, 1, lq, lk, dtype=torch.bool)
    for i in range(lq):
        m[..., i, : lk - lq + i + 1] = True
    return m


# ---------------------------------------------------------------------------- BigBird

def bigbird_mask(heads: int, lq: int, lk: int, bs: int, g: int, w: int, random_sets) -> torch.Tensor:
    """(1, heads, lq, lk) mask of BigBird's causal pattern; random_sets[h][qb] = set of key blocks."""
    off = lk - lq
    nk = -(-lk // bs)
    mask = torch.zeros(1, heads, lq, lk, dtype=torch.bool)
    for h in range(heads):
        for i in range(lq):
            p = off + i
            qb = i // bs
            lo = (off + qb * bs) // bs
            hi = (off + min(qb * bs + bs, lq) - 1) // bs
            for kb in range(nk):
                if kb < g or lo - (w - 1) <= kb <= hi or kb in random_sets[h][qb]:
                    mask[0, h, i, kb * bs: min(kb * bs + bs, p + 1)] = True
    return mask


def random_sets_from_plan(indices: torch.Tensor, lq: int, lk: int, bs: int, g: int, w: int, r: int):
    """Extract the random blocks of each (head, query block) and check they obey the rules."""
    off = lk - lq
    heads, nq = indices.shape[1], indices.shape[2]
    sets = []
    for h in range(heads):
        per_q = []
        for qb in range(nq):
            listed = {int(x) for x in indices[0, h, qb] if x >= 0}
            lo = (off + qb * bs) // bs
            hi = (off + min(qb * bs + bs, lq) - 1) // bs
            static = {kb for kb in range(hi + 1) if kb < g or kb >= lo - (w - 1)}
            assert static <= listed, (h, qb)
            extra = listed - static
            candidates = set(range(g, lo - (w - 1)))
            assert extra <= candidates, (h, qb, extra, candidates)
            assert len(extra) == min(r, len(candidates)), (h, qb)
            per_q.append(extra)
        sets.append(per_q)
    for b in range(1, indices.shape[0]):
        assert torch.equal(indices[b], indices[0])
    return sets


@pytest.mark.parametrize("lq,lk,bs", [(333, 333, 16), (333, 333, 64), (100, 333, 16), (70, 333, 32)])
def test_bigbird_matches_explicit_mask(lq, lk, bs):
    q, k, v = qkv(2, 8, 2, lq, lk)
    m = BigBird(block_size=bs, seed=3)
    g, w, r = m.resolve(lq, lk)
    assert (g, w, r) == (2, 3, 3)
    indices = m.plan(q, k)
    sets = random_sets_from_plan(indices, lq, lk, bs, g, w, r)
    allowed = bigbird_mask(8, lq, lk, bs, g, w, sets)
    out, stats = m(q, k, v)
    assert rel_err(out, explicit_attention(q, k, v, allowed)) <= 1e-5
    assert stats.computed == 2 * int(allowed.sum())
    assert stats.computed == 2 * 8 * m.pairs(g, w, r, lq, lk)


def test_bigbird_random_blocks_are_seeded_and_length_independent():
    q, k, _ = qkv(1, 4, 2, 333, 333)
    a = BigBird(block_size=16, seed=1).plan(q, k)
    assert torch.equal(a, BigBird(block_size=16, seed=1).plan(q, k))
    assert not torch.equal(a, BigBird(block_size=16, seed=2).plan(q, k))
    # heads draw independently
    assert not torch.equal(a[:, 0], a[:, 1])
    # a longer sequence keeps the draws of the query blocks both share
    q2, k2, _ = qkv(1, 4, 2, 500, 500)
    b = BigBird(block_size=16, seed=1).plan(q2, k2)
    nq = a.shape[2]
    for h in range(4):
        for qb in range(nq - 1):  # the last block of the short sequence is partial
            sa = {int(x) for x in a[0, h, qb] if x >= 0}
            sb = {int(x) for x in b[0, h, qb] if x >= 0}
            assert sa == sb


def test_bigbird_explicit_parameters():
    q, k, v = qkv(2, 4, 4, 257, 257)
    m = BigBird(block_size=16, window_blocks=2, global_blocks=0, random_blocks=1, seed=5)
    indices = m.plan(q, k)
    sets = random_sets_from_plan(indices, 257, 257, 16, 0, 2, 1)
    allowed = bigbird_mask(4, 257, 257, 16, 0, 2, sets)
    out, _ = m(q, k, v)
    assert rel_err(out, explicit_attention(q, k, v, allowed)) <= 1e-5


# ---------------------------------------------------------------------------- Streaming

def streaming_mask(lq: int, lk: int, sink: int, window: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, lq, lk, dtype=torch.bool)
    for i in range(lq):
        p = lk - lq + i
        for j in range(p + 1):
            if j < sink or j > p - window:
                mask[0, 0, i, j] = True
    return mask


@pytest.mark.parametrize("mode", ["decode", "prefill"])
@pytest.mark.parametrize("lq,lk,sink,window", [(333, 333, 4, 50), (333, 333, 0, 1), (100, 333, 7, 64),
                                                (333, 333, 20, 10)])
def test_streaming_matches_explicit_mask(mode, lq, lk, sink, window):
    q, k, v = qkv(2, 8, 2, lq, lk)
    allowed = streaming_mask(lq, lk, sink, window)
    out, stats = Streaming(sink=sink, window=window, mode=mode)(q, k, v)
    assert rel_err(out, explicit_attention(q, k, v, allowed)) <= 1e-5
    if mode == "prefill":
        assert stats.phase == "prefill" and stats.computed == 2 * 8 * int(allowed.sum())
    else:
        assert stats.phase == "decode" and stats.computed == 2 * 8 * int(allowed[0, 0, -1].sum())
        assert stats.compression == pytest.approx(lk / int(allowed[0, 0, -1].sum()))


def test_streaming_default_is_a_1024_token_cache():
    m = Streaming()
    assert (m.sink, m.resolve_window(8192)) == (4, 1020)
    assert m.decode_tokens(8192) == 1024
    assert m.decode_tokens(100) == 100


@pytest.mark.parametrize("sink,window", [(3, 7), (0, 1), (5, 100)])
def test_streaming_decode_steps_equal_forward_rows(sink, window):
    b, h, hkv, length, prompt = 2, 8, 2, 41, 23
    q, k, v = qkv(b, h, hkv, length, length, seed=7)
    m = Streaming(sink=sink, window=window)
    full, _ = m(q, k, v)
    state = m.init_decode(q[:, :, :prompt], k[:, :, :prompt], v[:, :, :prompt])
    for t in range(prompt, length):
        expected_kept = sorted(set(range(min(sink, t))) | set(range(max(0, t - window + 1), t)))
        kept = state.positions[0, 0]
        assert [int(x) for x in kept if x >= 0] == expected_kept
        out, state, read = m.decode_step(q[:, :, t], k[:, :, :t + 1], v[:, :, :t + 1], state)
        torch.testing.assert_close(out, full[:, :, t], rtol=1e-5, atol=1e-6)
        assert read.shape == (b, h)
        assert torch.all(read == m.decode_tokens(t + 1))
        assert torch.all(read == len(expected_kept) + 1)


def test_streaming_decode_with_compression_target():
    prompt = 4096
    q, k, v = qkv(1, 2, 1, prompt + 1, prompt + 1, d=8)
    for target in TARGETS:
        m = Streaming(compression=target)
        state = m.init_decode(q[:, :, :prompt], k[:, :, :prompt], v[:, :, :prompt])
        _, _, read = m.decode_step(q[:, :, prompt], k, v, state)
        assert abs(prompt / float(read[0, 0]) / target - 1) <= 0.25


def test_streaming_select_checks_cache_length():
    q, k, v = qkv(1, 2, 1, 10, 10)
    m = Streaming(sink=1, window=3)
    state = m.init_decode(q[:, :, :8], k[:, :, :8], v[:, :, :8])
    with pytest.raises(ValueError, match="^k"):
        m.select(q[:, :, 9], k, state)


# ---------------------------------------------------------------------------- shared

@pytest.mark.parametrize("method,params", [("bigbird", {"block_size": 16}), ("bigbird", {}),
                                           ("streaming", {}), ("streaming", {"mode": "prefill"})])
@pytest.mark.parametrize("lq,lk", [(333, 333), (50, 333)])
def test_compression_one_is_dense(method, params, lq, lk):
    q, k, v = qkv(2, 8, 2, lq, lk)
    out, stats = sparsa.attention(q, k, v, method, compression=1, return_stats=True, **params)
    assert stats.compression == 1.0
    assert rel_err(out, explicit_attention(q, k, v, causal_allowed(lq, lk))) <= 1e-5


@pytest.mark.parametrize("method,params", [("bigbird", {}), ("streaming", {}), ("streaming", {"mode": "prefill"})])
def test_compression_targets_are_met(method, params):
    q, k, v = qkv(1, 1, 1, 4096, 4096, d=64)
    for target in TARGETS:
        _, stats = sparsa.attention(q, k, v, method, compression=target, return_stats=True, **params)
        assert abs(stats.compression / target - 1) <= 0.25, (target, stats)


def test_explicit_parameters_override_compression():
    m = BigBird(compression=10, window_blocks=5, global_blocks=1, random_blocks=0)
    assert m.resolve(4096, 4096) == (1, 5, 0)
    assert BigBird(compression=10, random_blocks=0).resolve(4096, 4096)[2] == 0
    assert Streaming(compression=10, window=77).resolve_window(4096) == 77


@pytest.mark.parametrize("cls,params,field,exc", [
    (BigBird, {"window_blocks": 0}, "window_blocks", ValueError),
    (BigBird, {"window_blocks": 1.5}, "window_blocks", TypeError),
    (BigBird, {"global_blocks": -1}, "global_blocks", ValueError),
    (BigBird, {"random_blocks": -2}, "random_blocks", ValueError),
    (BigBird, {"block_size": 0}, "block_size", ValueError),
    (BigBird, {"seed": "x"}, "seed", TypeError),
    (BigBird, {"compression": 0.5}, "compression", ValueError),
    (Streaming, {"window": 0}, "window", ValueError),
    (Streaming, {"window": "big"}, "window", TypeError),
    (Streaming, {"sink": -1}, "sink", ValueError),
    (Streaming, {"mode": "both"}, "mode", ValueError),
])
def test_bad_hyper_parameters_name_the_field(cls, params, field, exc):
    with pytest.raises(exc, match=f"^{field}"):
        cls(**params)


def test_single_key_row_has_no_nan():
    q, k, v = qkv(1, 2, 1, 1, 1)
    for method in (BigBird(), Streaming(sink=0, window=1)):
        out, _ = method(q, k, v)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[0, :, 0], v[0, 0, 0].expand(2, -1))

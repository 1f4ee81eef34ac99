"""H2O: the simulated read sets and the real eviction, against loop implementations."""
from __future__ import annotations

import math

import pytest
import torch

import sparsa.methods._scores as scores_mod
import sparsa.ops._shared.masked as masked_mod
from sparsa.methods.h2o import H2O

from ._decode_loops import H2OLoopDecoder, h2o_read_sets, rows_attention


def identity_values(b: int, hkv: int, length: int) -> torch.Tensor:
    """v[j] = e_j: each output row is the attention distribution, so its support is the read set."""
    return torch.eye(length, dtype=torch.float64).expand(b, hkv, length, length).clone()


@pytest.mark.parametrize("heavy,recent,lq", [(4, 3, 12), (0, 5, 30), (6, 1, 30), (2, 2, 1)])
def test_forward_reads_the_defined_tokens(heavy, recent, lq):
    g = torch.Generator().manual_seed(10)
    b, h, hkv, length = 2, 4, 2, 30
    q = torch.randn(b, h, lq, length, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, length, length, generator=g, dtype=torch.float64)
    v = identity_values(b, hkv, length)
    scale = 1 / math.sqrt(length)
    sets = h2o_read_sets(q, k, heavy, recent, scale)
    out, stats = H2O(heavy=heavy, recent=recent)(q, k, v)
    ref = rows_attention(q, k, v, sets, scale)
    assert torch.equal(out > 0, ref > 0)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)
    assert stats.computed == b * h * len(sets[0][0][-1])


def test_forward_is_chunk_independent(monkeypatch):
    g = torch.Generator().manual_seed(11)
    b, h, hkv, lq, length, d = 1, 4, 2, 23, 41, 16
    q = torch.randn(b, h, lq, d, generator=g)
    k = torch.randn(b, hkv, length, d, generator=g)
    v = torch.randn(b, hkv, length, d, generator=g)
    m = H2O(heavy=5, recent=4)
    whole, _ = m(q, k, v)
    # three query rows per chunk in both the attention and the scoring
    monkeypatch.setattr(masked_mod, "_CHUNK_ELEMENTS", b * h * length * 3)
    monkeypatch.setattr(scores_mod, "_CHUNK_ELEMENTS", b * h * length * 3)
    chunked, _ = m(q, k, v)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    ref = rows_attention(q, k, v, h2o_read_sets(q, k, 5, 4, 1 / math.sqrt(d)), 1 / math.sqrt(d))
    torch.testing.assert_close(chunked.double(), ref, rtol=1e-5, atol=1e-5)


def test_decode_evicts_like_the_loop_cache():
    g = torch.Generator().manual_seed(12)
    b, h, hkv, p, n, d = 2, 4, 2, 20, 6, 8
    heavy, recent = 4, 3
    q = torch.randn(b, h, p + n, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, p + n, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hkv, p + n, d, generator=g, dtype=torch.float64)
    scale = 1 / math.sqrt(d)
    m = H2O(heavy=heavy, recent=recent)
    state = m.init_decode(q[:, :, :p], k[:, :, :p], v[:, :, :p])
    loop = H2OLoopDecoder(q[:, :, :p], k[:, :, :p], heavy, recent, scale)
    for t in range(n):
        s = p + t + 1
        kept = [[sorted(int(x) for x in state.positions[bb, kh] if x >= 0) for kh in range(hkv)] for bb in range(b)]
        assert kept == loop.cache
        out, state, read = m.decode_step(q[:, :, s - 1], k[:, :, :s], v[:, :, :s], state)
        ref, ref_reads = loop.step(q[:, :, s - 1], k[:, :, :s], v[:, :, :s])
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)
        assert read.tolist() == [[float(r) for r in row for _ in range(h // hkv)] for row in ref_reads]
        assert torch.all(read == m.decode_tokens(s))


def test_decode_budget_from_compression():
    g = torch.Generator().manual_seed(13)
    q = torch.randn(1, 2, 100, 8, generator=g)
    k = torch.randn(1, 1, 101, 8, generator=g)
    m = H2O(compression=4)
    state = m.init_decode(q, k[:, :, :100], k[:, :, :100])
    assert (state.heavy, state.recent) == (12, 13)
    assert int((state.positions >= 0).sum()) == 24
    _, state, read = m.decode_step(q[:, :, -1], k, k, state)
    assert torch.all(read == 25)

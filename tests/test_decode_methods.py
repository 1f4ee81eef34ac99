"""Shared behaviour of the decode-time methods: H2O, SnapKV, Ada-SnapKV, Quest."""
from __future__ import annotations

import pytest
import torch

import sparsa
from sparsa.methods.ada_snapkv import AdaSnapKV
from sparsa.methods.h2o import H2O
from sparsa.methods.quest import Quest
from sparsa.methods.snapkv import SnapKV

from ._util import causal_mask, explicit_attention, rel_err

METHODS = ["h2o", "snapkv", "ada_snapkv", "quest"]


def explicit_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return explicit_attention(q, k, v, causal_mask(q.shape[2], k.shape[2]))


@pytest.fixture(scope="module")
def gqa_inputs():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 333, 32, generator=g)
    k = torch.randn(2, 2, 333, 32, generator=g)
    v = torch.randn(2, 2, 333, 32, generator=g)
    return q, k, v


@pytest.mark.parametrize("method", METHODS)
def test_compression_one_is_dense(method, gqa_inputs):
    q, k, v = gqa_inputs
    ref = explicit_dense(q, k, v)
    out, stats = sparsa.attention(q, k, v, method, compression=1, return_stats=True)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert rel_err(out, ref) <= 1e-5
    assert stats.compression == pytest.approx(1.0)
    # fewer query rows than keys
    out, _ = sparsa.attention(q[:, :, -17:], k, v, method, compression=1, return_stats=True)
    assert rel_err(out, ref[:, :, -17:]) <= 1e-5


@pytest.mark.parametrize("method,params", [
    ("h2o", {"heavy": 400, "recent": 1}),
    ("h2o", {"heavy": 0, "recent": 333}),
    ("snapkv", {"capacity": 400}),
    ("snapkv", {"window": 400, "capacity": 0}),
    ("ada_snapkv", {"capacity": 301}),
    ("quest", {"budget": 1024}),
])
def test_budget_beyond_context_is_dense(method, params, gqa_inputs):
    q, k, v = gqa_inputs
    out, stats = sparsa.attention(q, k, v, method, return_stats=True, **params)
    assert rel_err(out, explicit_dense(q, k, v)) <= 1e-5
    assert stats.compression == pytest.approx(1.0)


@pytest.mark.parametrize("method", METHODS)
def test_decode_at_compression_one_is_dense(method):
    g = torch.Generator().manual_seed(1)
    b, h, hkv, p, n, d = 2, 8, 2, 37, 4, 16
    q = torch.randn(b, h, p + n, d, generator=g)
    k = torch.randn(b, hkv, p + n, d, generator=g)
    v = torch.randn(b, hkv, p + n, d, generator=g)
    ref = explicit_dense(q, k, v)
    m = sparsa.get_method(method, compression=1)
    state = m.init_decode(q[:, :, :p], k[:, :, :p], v[:, :, :p])
    for t in range(n):
        s = p + t + 1
        out, state, read = m.decode_step(q[:, :, s - 1], k[:, :, :s], v[:, :, :s], state)
        assert rel_err(out, ref[:, :, s - 1]) <= 1e-5
        assert torch.equal(read, torch.full((b, h), float(s), dtype=read.dtype))


@pytest.mark.parametrize("method", METHODS)
def test_single_key_rows_have_no_nan(method):
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 4, 9, 8, generator=g)
    k = torch.randn(1, 2, 9, 8, generator=g)
    v = torch.randn(1, 2, 9, 8, generator=g)
    out = sparsa.attention(q, k, v, method, compression=3)
    assert torch.isfinite(out).all()
    # row 0 sees only key 0
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0].repeat_interleave(2, 1))


@pytest.fixture(scope="module")
def long_inputs():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 64, 64, generator=g)
    k = torch.randn(1, 2, 4096, 64, generator=g)
    v = torch.randn(1, 2, 4096, 64, generator=g)
    return q, k, v


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", [2, 5, 10, 20])
def test_compression_target_is_met(method, target, long_inputs):
    q, k, v = long_inputs
    out, stats = sparsa.attention(q, k, v, method, compression=target, return_stats=True)
    assert torch.isfinite(out).all()
    assert 0.75 * target <= stats.compression <= 1.25 * target
    # the stats count exactly what decode_tokens predicts for the last row
    expected = sparsa.get_method(method, compression=target).decode_tokens(k.shape[2])
    assert stats.computed / (q.shape[0] * q.shape[1]) == pytest.approx(expected)


@pytest.mark.parametrize("m", [H2O(heavy=5, recent=3), SnapKV(window=4, kernel=3, capacity=6),
                               AdaSnapKV(window=4, kernel=1, capacity=6, floor_ratio=0.5),
                               Quest(page_size=4, budget=8)])
@pytest.mark.parametrize("length", [1, 5, 16, 17, 40])
def test_stats_match_decode_tokens(m, length):
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 4, min(length, 6), 8, generator=g)
    k = torch.randn(2, 2, length, 8, generator=g)
    _, stats = m(q, k, k.clone())
    assert stats.computed == pytest.approx(m.decode_tokens(length) * 2 * 4)


def test_default_hyper_parameters():
    assert (SnapKV().window, SnapKV().kernel, SnapKV().resolve_capacity(10**5)) == (32, 7, 1024)
    assert AdaSnapKV().floor_ratio == 0.2
    assert Quest().resolve(65536) == (16, 256)
    assert Quest().decode_tokens(65536) == 4096 + 16 + 4095
    assert H2O().budgets(10000) == (1000, 1000)
    assert [sparsa.get_method(n).phase for n in METHODS] == ["decode"] * 4


@pytest.mark.parametrize("method,params,field,exc", [
    ("h2o", {"heavy": -1}, "heavy", ValueError),
    ("h2o", {"recent": 0}, "recent", ValueError),
    ("h2o", {"heavy": 2.5}, "heavy", TypeError),
    ("h2o", {"compression": 0.5}, "compression", ValueError),
    ("snapkv", {"window": 0}, "window", ValueError),
    ("snapkv", {"kernel": 0}, "kernel", ValueError),
    ("snapkv", {"capacity": -3}, "capacity", ValueError),
    ("snapkv", {"capacity": "big"}, "capacity", TypeError),
    ("ada_snapkv", {"floor_ratio": 1.5}, "floor_ratio", ValueError),
    ("ada_snapkv", {"floor_ratio": None}, "floor_ratio", TypeError),
    ("ada_snapkv", {"window": -1}, "window", ValueError),
    ("quest", {"page_size": 0}, "page_size", ValueError),
    ("quest", {"budget": 8}, "budget", ValueError),
    ("quest", {"budget": 30, "page_size": 32}, "budget", ValueError),
    ("quest", {"budget": True}, "budget", TypeError),
])
def test_bad_hyper_parameters_name_the_field(method, params, field, exc):
    with pytest.raises(exc) as info:
        sparsa.get_method(method, **params)
    assert str(info.value).startswith(field)

"""The functional `nsa` method: wiring, compression targets, decode API, validation."""
import pytest
import torch

import sparsa
from sparsa.methods.nsa import NSA
from sparsa.ops.dense.reference import causal_pairs, dense_attention
from sparsa.ops.nsa import NSAConfig

from ._util import rel_err
from .test_nsa_reference import loop_nsa

SMALL = dict(block=8, stride=4, sel_block=16, n_select=4, window=20)


def _qkv(bsz, h, hkv, lq, lk, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(bsz, h, lq, d, generator=g, dtype=dtype),
            torch.randn(bsz, hkv, lk, d, generator=g, dtype=dtype),
            torch.randn(bsz, hkv, lk, d, generator=g, dtype=dtype))


def test_matches_loop_with_mean_pool_and_fixed_gates():
    q, k, v = _qkv(2, 8, 2, 70, 101, 64, dtype=torch.float64)
    gates = (0.2, 0.5, 0.9)
    out, st = sparsa.attention(q, k, v, "nsa", gates=gates, return_stats=True, **SMALL)
    ref, _, counts = loop_nsa(q, k, v, torch.tensor(gates, dtype=torch.float64).expand(2, 8, 70, 3),
                              NSAConfig(**SMALL))
    assert rel_err(out, ref) < 1e-10
    assert st.computed == sum(counts)
    assert st.dense == causal_pairs(70, 101) * 16
    assert st.info["n_select"] == 4 and st.info["pairs_win"] == counts[2]


def test_selection_branch_alone_at_full_budget_equals_dense():
    q, k, v = _qkv(2, 8, 2, 131, 131, 64, seed=1)
    out = sparsa.attention(q, k, v, "nsa", gates=(0.0, 1.0, 0.0), sel_block=16, stride=16, block=16, n_select=9)
    assert rel_err(out, dense_attention(q, k, v)) < 1e-5


@pytest.fixture(scope="module")
def long_inputs():
    return _qkv(1, 2, 1, 4096, 4096, 64, seed=2)


@pytest.mark.parametrize("target", [2.0, 5.0, 10.0, 20.0])
def test_compression_target_reached_at_4k(long_inputs, target):
    q, k, v = long_inputs
    out, st = sparsa.attention(q, k, v, "nsa", compression=target, return_stats=True)
    assert st.compression == pytest.approx(target, rel=0.25)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("context", [4096, 65536])
@pytest.mark.parametrize("target", [2.0, 5.0, 10.0, 20.0])
def test_decode_budget_reaches_target(context, target):
    m = NSA(compression=target)
    assert context / m.decode_tokens(context) == pytest.approx(target, rel=0.25)


def test_paper_geometry_kept_while_the_target_allows():
    cfg = NSA(compression=3.0).resolve(4096, 4096)
    assert (cfg.block, cfg.stride, cfg.sel_block, cfg.n_forced_init, cfg.n_forced_local) == (32, 16, 64, 1, 2)
    explicit = NSA(compression=20.0, block=64, stride=64, sel_block=64).resolve(4096, 4096)
    assert (explicit.block, explicit.stride, explicit.sel_block) == (64, 64, 64)


def test_decode_tokens_default():
    m = NSA()
    assert m.decode_tokens(65536) == (65536 - 32) // 16 + 1 + 16 * 64 + 512 == 5631
    assert m.decode_tokens(100) == 100


def test_decode_steps_match_prefill_rows():
    m = NSA(**SMALL)
    q, k, v = _qkv(2, 8, 2, 75, 75, 64, seed=3)
    full, _ = m(q, k, v)
    state = m.init_decode(q[:, :, :40], k[:, :, :40], v[:, :, :40])
    cfg = NSAConfig(**SMALL)
    for t in range(40, 75):
        kk, vv = k[:, :, :t + 1], v[:, :, :t + 1]
        pos = m.select(q[:, :, t], kk, state)
        out, state, read = m.decode_step(q[:, :, t], kk, vv, state)
        assert rel_err(out, full[:, :, t]) < 1e-5
        assert pos.shape == (2, 2, cfg.n_select * cfg.sel_block + cfg.window)
        assert int(pos.max()) == t
        expected_read = (pos >= 0).sum(-1) + cfg.n_compressed(t + 1)
        assert torch.equal(read, expected_read.repeat_interleave(4, 1).double())
        # the branches overlap, so below the cap a step may count more than the cache holds
        assert float(read.max()) <= cfg.n_compressed(t + 1) + cfg.n_select * cfg.sel_block + cfg.window
    assert state.k_cmp.shape[2] == cfg.n_compressed(75)


def test_short_and_tiny_inputs_are_finite_and_not_worse_than_dense():
    for lk, lq in [(1, 1), (5, 2), (64, 1), (100, 100), (260, 37)]:
        q, k, v = _qkv(1, 4, 1, lq, lk, 64, seed=lk)
        for target in (2.0, 4.0):
            out, st = sparsa.attention(q, k, v, "nsa", compression=target, return_stats=True)
            assert torch.isfinite(out).all()
            assert st.compression >= 1.0


def test_validation_names_the_field():
    with pytest.raises(ValueError, match="^n_select"):
        sparsa.get_method("nsa", n_select=2)
    with pytest.raises(ValueError, match="^stride"):
        sparsa.get_method("nsa", stride=12)
    with pytest.raises(ValueError, match="^gates"):
        sparsa.get_method("nsa", gates=(1.0, 2.0, 0.0))
    with pytest.raises(TypeError, match="^gates"):
        sparsa.get_method("nsa", gates=(1.0, 1.0))
    with pytest.raises(ValueError, match="^window"):
        sparsa.get_method("nsa", window=-3)
    assert NSA.phase == "both" and "nsa" in sparsa.list_methods()

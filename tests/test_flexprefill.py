"""FlexPrefill: dense at full budget, exact coverage, adaptive budgets, compression targets, errors."""
import pytest
import torch

import sparsa
from sparsa.methods.flexprefill import FlexPrefill

from ._util import causal_mask, explicit_attention, rel_err
from .test_vertical_slash import loop_mask, planted_qk


def loop_budgets(q: torch.Tensor, k: torch.Tensor, h: int, last_q: int, alpha: float, init: int,
                 local: int, floor: int) -> tuple[int, int]:
    """The cumulative-mass rule for one head, written with loops over rows and lines."""
    lq, lk, d = q.shape[2], k.shape[2], q.shape[3]
    kk = k[0, h // (q.shape[1] // k.shape[1])]
    col, diag = [0.0] * lk, [0.0] * lk
    for i in range(lq - last_q, lq):
        p = lk - lq + i
        prob = torch.softmax(torch.stack([q[0, h, i] @ kk[j] for j in range(p + 1)]) * d ** -0.5, 0)
        for j in range(p + 1):
            col[j] += float(prob[j]) / last_q
            diag[p - j] += float(prob[j]) / last_q

    def budget(mass: list[float], forced: int) -> int:
        got = sum(mass[:forced])
        n = forced
        for x in sorted(mass[forced:], reverse=True):
            if got >= alpha:
                break
            got += x
            n += 1
        return min(lk, max(n, forced, floor))

    return budget(col, init), budget(diag, local)


@pytest.mark.parametrize("lq,lk", [(333, 333), (120, 333)])
def test_compression_one_is_dense(lq, lk):
    q, k, v = torch.randn(2, 8, lq, 32), torch.randn(2, 2, lk, 32), torch.randn(2, 2, lk, 32)
    out, stats = sparsa.attention(q, k, v, "flexprefill", compression=1, return_stats=True)
    assert rel_err(out, explicit_attention(q, k, v, causal_mask(lq, lk))) <= 1e-5
    assert stats.compression == 1.0


def test_budgets_follow_cumulative_mass_and_output_matches_loop_mask():
    b, h, hkv, lq, lk = 1, 4, 2, 30, 47
    q = torch.randn(b, h, lq, 16, dtype=torch.float64) * 2.0
    k, v = torch.randn(b, hkv, lk, 16, dtype=torch.float64), torch.randn(b, hkv, lk, 16, dtype=torch.float64)
    method = FlexPrefill(alpha=0.7, min_budget=4, last_q=12, init_tokens=2, local_diagonals=3)
    out, stats = method(q, k, v)
    for hh in range(h):
        nv, ns = loop_budgets(q, k, hh, 12, 0.7, 2, 3, 4)
        assert int(stats.info["vertical_budget"][0, hh]) == nv
        assert int(stats.info["slash_budget"][0, hh]) == ns
    vi, si = method.plan(q, k)
    assert ((vi >= 0).sum(-1) == stats.info["vertical_budget"]).all()
    assert ((si >= 0).sum(-1) == stats.info["slash_budget"]).all()
    mask = loop_mask(vi, si, h, lq, lk)
    assert rel_err(out, explicit_attention(q, k, v, mask)) <= 1e-10
    assert stats.computed == float(mask.sum())


def test_concentrated_head_gets_smaller_budget():
    q, k = planted_qk([(5, 5), (200, 300)], 512)
    q[:, 0] = 0.0                             # head 0: uniform attention over all earlier keys
    v = torch.randn_like(k)
    _, stats = FlexPrefill(min_budget=0, init_tokens=4, local_diagonals=4)(q, k, v)
    nv, ns = stats.info["vertical_budget"][0], stats.info["slash_budget"][0]
    assert nv[1] < nv[0] // 4 and ns[1] < ns[0] // 4
    assert stats.per_head[1] > 2 * stats.per_head[0]
    vi, si = FlexPrefill(min_budget=0, init_tokens=4, local_diagonals=4).plan(q, k)
    assert 200 in vi[0, 1].tolist() and 300 in si[0, 1].tolist()


def test_min_and_max_budget_bound_each_head():
    q, k = planted_qk([(50, 60)], 256)
    _, stats = FlexPrefill(min_budget=40, init_tokens=4, local_diagonals=4)(q, k, torch.randn_like(k))
    assert int(stats.info["vertical_budget"].min()) >= 40 and int(stats.info["slash_budget"].min()) >= 40
    q[:] = 0.0
    _, stats = FlexPrefill(max_budget=64, min_budget=10, init_tokens=4, local_diagonals=4)(q, k, torch.randn_like(k))
    assert int(stats.info["vertical_budget"].max()) == 64 and int(stats.info["slash_budget"].max()) == 64


@pytest.mark.parametrize("target", [2, 5, 10, 20])
def test_compression_target_is_met(target):
    lk = 4096
    q, k, v = torch.randn(1, 2, lk, 64), torch.randn(1, 1, lk, 64), torch.randn(1, 1, lk, 64)
    _, stats = sparsa.attention(q, k, v, "flexprefill", compression=target, return_stats=True)
    assert 0.75 * target <= stats.compression <= 1.25 * target
    assert 0.0 <= stats.info["alpha"] <= 1.0


def test_explicit_alpha_overrides_compression():
    q, k, v = torch.randn(1, 2, 200, 16), torch.randn(1, 2, 200, 16), torch.randn(1, 2, 200, 16)
    _, a = FlexPrefill(alpha=0.5, min_budget=0, compression=10)(q, k, v)
    _, b = FlexPrefill(alpha=0.5, min_budget=0)(q, k, v)
    assert a.info["alpha"] == 0.5 and a.computed == b.computed


@pytest.mark.parametrize("params,field,exc", [
    ({"alpha": 0.0}, "alpha", ValueError),
    ({"alpha": 1.5}, "alpha", ValueError),
    ({"alpha": -0.2}, "alpha", ValueError),
    ({"alpha": "high"}, "alpha", TypeError),
    ({"last_q": 0}, "last_q", ValueError),
    ({"min_budget": -1}, "min_budget", ValueError),
    ({"max_budget": -5}, "max_budget", ValueError),
    ({"max_budget": 50}, "max_budget", ValueError),      # fewer than the 100 forced diagonals
    ({"min_budget": 300, "max_budget": 200}, "max_budget", ValueError),
    ({"local_diagonals": 0}, "local_diagonals", ValueError),
])
def test_bad_parameters_name_the_field(params, field, exc):
    with pytest.raises(exc, match=f"^{field}"):
        sparsa.get_method("flexprefill", **params)


def _line_mask(vi: torch.Tensor, si: torch.Tensor, lq: int, lk: int) -> torch.Tensor:
    """(B, H, lq, lk) causal mask of the chosen columns and diagonals."""
    pos = torch.arange(lk - lq, lk)[:, None]
    key = torch.arange(lk)[None, :]
    b, h = vi.shape[:2]
    mask = torch.zeros(b, h, lq, lk, dtype=torch.bool)
    for i in range(b):
        for j in range(h):
            cols = vi[i, j][vi[i, j] >= 0].long()
            offs = si[i, j][si[i, j] >= 0].long()
            mask[i, j] = torch.isin(key, cols).expand(lq, lk) | torch.isin(pos - key, offs)
    return mask & (key <= pos)


@pytest.mark.parametrize("target", [5.0, 10.0])
def test_reported_compression_is_the_selection_and_hits_the_target(target):
    from sparsa.ops.dense.reference import causal_pairs
    from sparsa.synthetic import synthetic_qkv
    q, k, v = synthetic_qkv(1, 9, 3, 4096, 64, seed=2)
    m = FlexPrefill(compression=target)
    out, st = m(q, k, v)
    vi, si = m.plan(q, k)
    pairs = int(_line_mask(vi, si, 4096, 4096).sum())
    assert st.computed == pairs
    assert st.compression == pytest.approx(9 * causal_pairs(4096, 4096) / pairs)
    assert st.compression == pytest.approx(target, rel=0.1)
    budgets = st.info["vertical_budget"]
    assert budgets.shape == (1, 9) and int(budgets.max()) > int(budgets.min()), "heads keep adaptive budgets"


def test_unreachable_target_reports_achieved_and_warns(monkeypatch):
    from sparsa.methods import base
    monkeypatch.setattr(base, "_warned_targets", set())
    q, k, v = torch.randn(1, 2, 2048, 64), torch.randn(1, 1, 2048, 64), torch.randn(1, 1, 2048, 64)
    with pytest.warns(sparsa.CompressionNotReached, match="flexprefill"):
        _, st = sparsa.attention(q, k, v, "flexprefill", compression=10, min_budget=1024, return_stats=True)
    assert st.compression < 9.0

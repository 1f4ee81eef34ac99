"""Device-side budget searches of the line planners: equal to the host loops they replace."""
import math
import warnings

import pytest
import torch

import sparsa
from sparsa.methods._estimate import (bisect_fraction_tensor, line_pairs, ranks, selection_order,
                                      solve_budget_tensor, take_prefix)
from sparsa.methods.base import DeferredStats, prefill_stats, solve_budget
from sparsa.methods.flexprefill import FlexPrefill
from sparsa.methods.vertical_slash import SLASH_DEFAULT, VERTICAL_DEFAULT, VerticalSlash
from sparsa.ops.dense.reference import causal_pairs


def _step_counts(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (n,), generator=g).double().cumsum(0)          # non-decreasing, with plateaus


@pytest.mark.parametrize("lo,hi", [(0, 0), (3, 4), (0, 1), (2, 97), (0, 1000), (5, 4096)])
@pytest.mark.parametrize("ways", [2, 3, 8, 16])
def test_solve_budget_tensor_matches_host(lo, hi, ways):
    table = _step_counts(hi + 1, seed=lo + 7 * hi)
    for target in [-1.0, 0.0, float(table[hi]) + 5, float(table[(lo + hi) // 2]), float(table[hi]) * 0.37 + 0.5]:
        want = solve_budget(lambda x: float(table[x]), target, lo, hi)
        got = solve_budget_tensor(lambda c: table[c], target, lo, hi, ways=ways, device="cpu")
        assert int(got) == want, (target, ways)


@pytest.mark.parametrize("ways", [2, 4, 16])
@pytest.mark.parametrize("steps", [1, 7, 40])
def test_bisect_fraction_tensor_matches_host(ways, steps):
    def count_host(x: float) -> float:
        return math.floor(x * 1000) ** 1.5

    def host(target: float) -> float:
        lo, hi = 0.0, 1.0
        if count_host(hi) <= target:
            return hi
        for _ in range(steps):
            mid = 0.5 * (lo + hi)
            if count_host(mid) < target:
                lo = mid
            else:
                hi = mid
        return lo if abs(count_host(lo) - target) < abs(count_host(hi) - target) else hi

    def count_dev(x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x * 1000) ** 1.5

    for target in [0.0, 5.0, 1234.5, 20000.0, 31622.0, 40000.0]:
        got = bisect_fraction_tensor(count_dev, target, steps, ways=ways, device="cpu")
        assert float(got) == host(target), target


def _old_vs_budgets(m: VerticalSlash, v_order, s_order, lq, lk):
    """The host search the planner used before (bisection with one read per step)."""
    init, local = min(m.init_tokens, lk), min(m.local_diagonals, lk)
    fixed_v = None if m.vertical is None else min(m.vertical, lk)
    fixed_s = None if m.slash is None else min(m.slash, lk)

    def budgets(t):
        nv = fixed_v if fixed_v is not None else min(lk, max(init, round(t * VERTICAL_DEFAULT / SLASH_DEFAULT)))
        ns = fixed_s if fixed_s is not None else min(lk, max(local, t))
        return nv, ns

    v_rank, s_rank = ranks(v_order), ranks(s_order)
    target = causal_pairs(lq, lk) * v_order.shape[0] * v_order.shape[1] / m.compression
    hi = math.ceil(lk * SLASH_DEFAULT / VERTICAL_DEFAULT)
    return budgets(solve_budget(lambda t: float(line_pairs(v_rank < budgets(t)[0], s_rank < budgets(t)[1],
                                                           lq, lk).sum()), target, 0, hi))


@pytest.mark.parametrize("kw", [dict(compression=3.0), dict(compression=7.5, init_tokens=4, local_diagonals=8),
                                dict(compression=4.0, vertical=40), dict(compression=6.0, slash=150)])
@pytest.mark.parametrize("lq,lk", [(300, 300), (77, 300)])
def test_vertical_slash_budget_search_matches_host(kw, lq, lk):
    torch.manual_seed(0)
    b, h = 2, 3
    m = VerticalSlash(**kw)
    col, diag = torch.rand(b, h, lk), torch.rand(b, h, lk)
    v_order = selection_order(col, min(m.init_tokens, lk))
    s_order = selection_order(diag, min(m.local_diagonals, lk))
    nv, ns, v_width, s_width = m._budgets(v_order, s_order, lq, lk)
    assert (int(nv), int(ns)) == _old_vs_budgets(m, v_order, s_order, lq, lk)
    assert int(nv) <= v_width <= lk and int(ns) <= s_width <= lk


def _old_alpha(m: FlexPrefill, v_cum, s_cum, v_rank, s_rank, lq, lk, floor, init, local, cap):
    def budgets(alpha):
        nv = ((v_cum < alpha).sum(-1) + 1).clamp(min=max(floor, init), max=cap).clamp(max=lk)
        ns = ((s_cum < alpha).sum(-1) + 1).clamp(min=max(floor, local), max=cap).clamp(max=lk)
        return nv, ns

    target = causal_pairs(lq, lk) * v_rank.shape[0] * v_rank.shape[1] / m.compression

    def count(alpha):
        nv, ns = budgets(alpha)
        return float(line_pairs(v_rank < nv[..., None], s_rank < ns[..., None], lq, lk).sum())

    lo, hi = 0.0, 1.0
    if count(hi) <= target:
        return hi
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if count(mid) < target:
            lo = mid
        else:
            hi = mid
    return lo if abs(count(lo) - target) < abs(count(hi) - target) else hi


@pytest.mark.parametrize("compression", [1.5, 4.0, 9.0, 100.0])
def test_flexprefill_alpha_search_matches_host(compression, monkeypatch):
    torch.manual_seed(1)
    b, h, hkv, lq, lk, d = 2, 4, 2, 150, 150, 32
    q, k = torch.randn(b, h, lq, d), torch.randn(b, hkv, lk, d)
    m = FlexPrefill(compression=compression, init_tokens=4, local_diagonals=8)
    seen = {}
    original = FlexPrefill._search_alpha

    def spy(self, budgets, v_rank, s_rank, q_len, kv_len):
        seen["args"] = (v_rank, s_rank)
        seen["alpha"] = original(self, budgets, v_rank, s_rank, q_len, kv_len)
        return seen["alpha"]

    monkeypatch.setattr(FlexPrefill, "_search_alpha", spy)
    _, _, info = m._plan(q, k, d ** -0.5)
    from sparsa.methods._estimate import last_q_line_mass
    col, diag = last_q_line_mass(q, k, d ** -0.5, m.last_q)
    v_order, s_order = selection_order(col, 4), selection_order(diag, 8)
    v_cum, s_cum = col.gather(-1, v_order).cumsum(-1), diag.gather(-1, s_order).cumsum(-1)
    v_cum, s_cum = v_cum / v_cum[..., -1:], s_cum / s_cum[..., -1:]
    want = _old_alpha(m, v_cum, s_cum, ranks(v_order), ranks(s_order), lq, lk, 0, 4, 8, lk)
    assert float(seen["alpha"]) == want
    assert info["alpha"] is seen["alpha"]


def test_take_prefix_width_pads_with_unused():
    torch.manual_seed(2)
    order = selection_order(torch.rand(2, 3, 50), 5)
    counts = torch.randint(5, 20, (2, 3))
    tight = take_prefix(order, counts)
    wide = take_prefix(order, counts, width=40)
    assert wide.shape == (2, 3, 40) and torch.equal(wide[..., :tight.shape[-1]], tight)
    assert bool((wide[..., tight.shape[-1]:] == -1).all())
    assert torch.equal(take_prefix(order, 7, width=30)[..., :7], take_prefix(order, 7))


def test_deferred_stats_read_on_first_access():
    pairs = torch.tensor([[10.0, 20.0, 40.0]], dtype=torch.float64)
    eager = prefill_stats("x", pairs, 8, 8, budget=torch.tensor(3), lists=torch.ones(1, 3))
    lazy = prefill_stats("x", pairs, 8, 8, defer=True, budget=torch.tensor(3), lists=torch.ones(1, 3))
    assert isinstance(lazy, DeferredStats) and lazy.pending
    assert lazy.dense == eager.dense                     # known without a read
    assert lazy.pending
    assert lazy.computed == eager.computed and lazy.compression == eager.compression
    assert not lazy.pending
    assert torch.equal(lazy.per_head, eager.per_head)
    assert lazy.info == {"budget": 3, "lists": lazy.info["lists"]} and isinstance(lazy.info["budget"], int)
    assert eager.info["budget"] == 3 and isinstance(eager.info["budget"], int)


def test_deferred_stats_warn_when_read(monkeypatch):
    import sparsa.methods.base as base
    monkeypatch.setattr(base, "_warned_targets", set())
    real = base.prefill_stats
    monkeypatch.setattr(base, "prefill_stats", lambda *a, defer=None, **kw: real(*a, defer=True, **kw))
    import sparsa.methods._lines as lines_mod
    monkeypatch.setattr(lines_mod, "prefill_stats", base.prefill_stats)
    torch.manual_seed(3)
    q, k, v = torch.randn(1, 2, 96, 32), torch.randn(1, 2, 96, 32), torch.randn(1, 2, 96, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, stats = VerticalSlash(compression=50.0, init_tokens=4, local_diagonals=4)(q, k, v)
    assert isinstance(stats, DeferredStats) and stats.pending
    with pytest.warns(sparsa.CompressionNotReached):
        _ = stats.compression


def test_block_sparse_planner_lists_skip_the_value_check():
    from sparsa.methods.block_sparse import BlockSparse, mean_pool
    from sparsa.ops.block_sparse import block_sparse_attention
    torch.manual_seed(4)
    q, k, v = torch.randn(1, 4, 128, 32), torch.randn(1, 2, 128, 32), torch.randn(1, 2, 128, 32)
    x = torch.randn(2, 3, 96, 8)
    padded = torch.zeros(2, 3, 96, 8)
    padded[:] = x
    assert torch.equal(mean_pool(x, 32), padded.view(2, 3, 3, 32, 8).sum(3) / torch.full((3,), 32.0)[:, None])
    m = BlockSparse(block_size=32, top_k=2)
    idx = m.plan(q, k)
    a = block_sparse_attention(q, k, v, idx, block_q=32, block_k=32)
    b = block_sparse_attention(q, k, v, idx, block_q=32, block_k=32, check_indices=False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="block_indices"):
        block_sparse_attention(q, k, v, idx[:, :, :2], block_q=32, block_k=32, check_indices=False)

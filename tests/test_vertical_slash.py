"""Vertical-Slash: dense at full budget, exact coverage, estimation, compression targets, errors."""
import math

import pytest
import torch

import sparsa
from sparsa.methods._estimate import last_q_line_mass, line_pairs, selection_order, take_prefix, top_lines
from sparsa.methods.vertical_slash import VerticalSlash
from sparsa.ops.vertical_slash import vertical_slash_attention
from sparsa.ops.vertical_slash.convert import prepare_vertical_slash, superset_routes_dense, tile_cover_mask

from ._util import causal_mask, explicit_attention, rel_err


def planted_qk(lines: list[tuple[int, int]], kv_len: int, d: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """q (1, H, L, d), k (1, H, L, d) where head h strongly attends key column ``lines[h][0]``
    (through the second half of the channels) and diagonal offset ``lines[h][1]`` (first half)."""
    h, half = len(lines), d // 2
    q = 0.3 * torch.randn(1, h, kv_len, d)
    k = 0.3 * torch.randn(1, h, kv_len, d)
    for hh, (col, off) in enumerate(lines):
        u = torch.nn.functional.normalize(torch.randn(d - half), dim=0)
        q[0, hh, :, half:] += 4.0 * u
        k[0, hh, col, half:] += 20.0 * u
        w = torch.nn.functional.normalize(torch.randn(kv_len, half), dim=-1) * 9.0
        q[0, hh, :, :half] += w
        k[0, hh, : kv_len - off, :half] += w[off:]          # key p - off matches query p
    return q, k


def loop_mask(vi: torch.Tensor, si: torch.Tensor, heads: int, q_len: int, kv_len: int) -> torch.Tensor:
    """(B, H, Lq, Lk) mask of the listed columns and diagonals, built entry by entry."""
    b, hx = vi.shape[:2]
    g = heads // hx
    m = torch.zeros(b, heads, q_len, kv_len, dtype=torch.bool)
    for bi in range(b):
        for h in range(heads):
            cols = {int(x) for x in vi[bi, h // g] if x >= 0}
            offs = {int(x) for x in si[bi, h // g] if x >= 0}
            for i in range(q_len):
                p = kv_len - q_len + i
                for j in range(p + 1):
                    m[bi, h, i, j] = j in cols or (p - j) in offs
    return m


@pytest.mark.parametrize("lq,lk", [(333, 333), (101, 333)])
def test_compression_one_is_dense(lq, lk):
    q, k, v = torch.randn(2, 8, lq, 32), torch.randn(2, 2, lk, 32), torch.randn(2, 2, lk, 32)
    out, stats = sparsa.attention(q, k, v, "vertical_slash", compression=1, return_stats=True)
    assert rel_err(out, explicit_attention(q, k, v, causal_mask(lq, lk))) <= 1e-5
    assert stats.compression == 1.0


def test_output_matches_loop_mask():
    b, h, hkv, lq, lk = 2, 4, 2, 23, 41
    q, k, v = torch.randn(b, h, lq, 16), torch.randn(b, hkv, lk, 16), torch.randn(b, hkv, lk, 16)
    method = VerticalSlash(vertical=5, slash=7, last_q=8, init_tokens=2, local_diagonals=3)
    vi, si = method.plan(q, k)
    assert vi.shape == (b, h, 5) and si.shape == (b, h, 7)
    for row in vi.flatten(0, 1).tolist():
        assert row == sorted(row) and {0, 1} <= set(row) and len(set(row)) == 5
    for row in si.flatten(0, 1).tolist():
        assert row == sorted(row) and {0, 1, 2} <= set(row) and len(set(row)) == 7
    out, stats = method(q, k, v)
    mask = loop_mask(vi, si, h, lq, lk)
    assert rel_err(out, explicit_attention(q, k, v, mask)) <= 1e-5
    assert stats.computed == float(mask.sum())
    assert stats.info["vertical"] == 5 and stats.info["slash"] == 7


def test_op_with_fixed_padded_indices():
    b, h, hkv, lq, lk = 1, 6, 3, 9, 30
    q, k, v = torch.randn(b, h, lq, 8), torch.randn(b, hkv, lk, 8), torch.randn(b, hkv, lk, 8)
    vi = torch.tensor([[[0, 7, -1], [3, -1, -1], [25, 28, 29]]], dtype=torch.int32)   # per KV head
    si = torch.tensor([[[0, 4], [2, -1], [-1, -1]]], dtype=torch.int32)
    out, pairs = vertical_slash_attention(q, k, v, vi, si, scale=0.3, backend="reference")
    mask = loop_mask(vi, si, h, lq, lk)
    assert rel_err(out, explicit_attention(q, k, v, mask, scale=0.3)) <= 1e-5
    assert torch.equal(pairs, mask.sum((-1, -2)).double())
    assert torch.isfinite(out).all()


def test_triton_backend_on_cpu_is_refused():
    q = torch.randn(1, 1, 4, 8)
    idx = torch.zeros(1, 1, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="^backend"):
        vertical_slash_attention(q, q, q, idx, idx, backend="triton")


def test_line_mass_matches_loops():
    b, h, hkv, lq, lk, d = 1, 4, 2, 10, 19, 8
    q, k = torch.randn(b, h, lq, d, dtype=torch.float64), torch.randn(b, hkv, lk, d, dtype=torch.float64)
    last_q, scale = 6, 0.4
    vert, slash = last_q_line_mass(q, k, scale, last_q)
    for hh in range(h):
        kk = k[0, hh // (h // hkv)]
        ev, es = torch.zeros(lk, dtype=torch.float64), torch.zeros(lk, dtype=torch.float64)
        for i in range(lq - last_q, lq):
            p = lk - lq + i
            s = torch.tensor([float(q[0, hh, i] @ kk[j]) * scale for j in range(p + 1)], dtype=torch.float64)
            prob = torch.softmax(s, 0)
            for j in range(p + 1):
                ev[j] += prob[j] / last_q
                es[p - j] += prob[j] / last_q
        assert torch.allclose(vert[0, hh], ev, atol=1e-12)
        assert torch.allclose(slash[0, hh], es, atol=1e-12)


@pytest.mark.parametrize("lq,lk", [(17, 17), (7, 25), (1, 12)])
def test_line_pairs_matches_explicit_count(lq, lk):
    vert = torch.rand(2, 3, lk) < 0.3
    slash = torch.rand(2, 3, lk) < 0.3
    got = line_pairs(vert, slash, lq, lk)
    for bi in range(2):
        for h in range(3):
            n = 0
            for i in range(lq):
                p = lk - lq + i
                n += sum(1 for j in range(p + 1) if vert[bi, h, j] or slash[bi, h, p - j])
            assert got[bi, h] == n


def test_estimation_picks_planted_lines():
    lines = [(200, 300), (350, 150)]
    q, k = planted_qk(lines, 512)
    method = VerticalSlash(vertical=5, slash=5, last_q=64, init_tokens=4, local_diagonals=4)
    vi, si = method.plan(q, k)
    for h, (col, off) in enumerate(lines):
        assert col in vi[0, h].tolist()
        assert off in si[0, h].tolist()
        assert {0, 1, 2, 3} <= set(vi[0, h].tolist()) and {0, 1, 2, 3} <= set(si[0, h].tolist())


@pytest.mark.parametrize("target", [2, 5, 10, 20])
def test_compression_target_is_met(target):
    lk = 4096
    q, k, v = torch.randn(1, 2, lk, 64), torch.randn(1, 1, lk, 64), torch.randn(1, 1, lk, 64)
    _, stats = sparsa.attention(q, k, v, "vertical_slash", compression=target, return_stats=True)
    assert 0.75 * target <= stats.compression <= 1.25 * target
    ratio = stats.info["slash"] / stats.info["vertical"]
    assert stats.info["vertical"] == 30 or math.isclose(ratio, 6.096, rel_tol=0.05)


def test_explicit_budgets_override_compression_and_clamp():
    q, k, v = torch.randn(1, 2, 100, 16), torch.randn(1, 2, 100, 16), torch.randn(1, 2, 100, 16)
    _, stats = VerticalSlash(vertical=40, slash=5000, compression=5)(q, k, v)
    assert stats.info["vertical"] == 40 and stats.info["slash"] == 100
    assert stats.compression == 1.0      # every diagonal kept
    _, stats = VerticalSlash(vertical=40, compression=5, init_tokens=4, local_diagonals=4)(q, k, v)
    assert stats.info["vertical"] == 40 and stats.info["slash"] < 100


@pytest.mark.parametrize("params,field,exc", [
    ({"vertical": -1}, "vertical", ValueError),
    ({"vertical": 10}, "vertical", ValueError),          # fewer than the 30 forced first columns
    ({"slash": 50}, "slash", ValueError),                # fewer than the 100 forced diagonals
    ({"slash": -3}, "slash", ValueError),
    ({"last_q": 0}, "last_q", ValueError),
    ({"last_q": 2.5}, "last_q", TypeError),
    ({"init_tokens": -1}, "init_tokens", ValueError),
    ({"local_diagonals": 0}, "local_diagonals", ValueError),
    ({"vertical": "many"}, "vertical", TypeError),
    ({"compression": 0.5}, "compression", ValueError),
    ({"exact": "yes"}, "exact", TypeError),
    ({"block_q": 96}, "block_q", ValueError),
])
def test_bad_parameters_name_the_field(params, field, exc):
    with pytest.raises(exc, match=f"^{field}"):
        sparsa.get_method("vertical_slash", **params)


@pytest.mark.parametrize("forced,count", [(0, 1), (3, 3), (3, 7), (5, 40), (2, 64)])
def test_top_lines_equals_full_sort(forced, count):
    """Same lines as the stable full sort, ties (many equal masses) to the lower index."""
    scores = torch.randint(0, 5, (2, 3, 64)).float() / 7.0
    scores[0, 0] = 0.0
    scores[1, 2, 10:20] = 1e-30
    expect = take_prefix(selection_order(scores, forced), count)
    assert torch.equal(top_lines(scores, forced, count), expect)


@pytest.mark.parametrize("lq,lk,bq,ns", [(150, 700, 64, 9), (197, 900, 128, 5)])
def test_superset_semantics_match_tile_cover(lq, lk, bq, ns):
    """exact=False attends the causal pairs of the tiles of the planned diagonals and the columns."""
    b, h, hkv = 1, 4, 2
    q, k, v = torch.randn(b, h, lq, 16), torch.randn(b, hkv, lk, 16), torch.randn(b, hkv, lk, 16)
    method = VerticalSlash(vertical=6, slash=ns, last_q=16, init_tokens=2, local_diagonals=3, exact=False,
                           block_q=bq)
    vi, si = method.plan(q, k)
    out, stats = method(q, k, v)
    layout = prepare_vertical_slash(vi, si, lq, lk, use_triton=False, block_q=bq, exact=False)
    assert not superset_routes_dense(layout)
    cover = tile_cover_mask(layout).repeat_interleave(h // vi.shape[1], 1)
    mask = (cover | loop_mask(vi, si, h, lq, lk)) & causal_mask(lq, lk)
    assert rel_err(out, explicit_attention(q, k, v, mask)) <= 1e-5
    assert stats.computed == float(mask.sum())
    _, exact_stats = VerticalSlash(vertical=6, slash=ns, last_q=16, init_tokens=2, local_diagonals=3)(q, k, v)
    assert stats.compression < exact_stats.compression


def test_superset_at_full_budget_is_dense():
    q, k, v = torch.randn(1, 4, 130, 16), torch.randn(1, 2, 130, 16), torch.randn(1, 2, 130, 16)
    out, stats = VerticalSlash(compression=1, exact=False)(q, k, v)
    assert rel_err(out, explicit_attention(q, k, v, causal_mask(130, 130))) <= 1e-5
    assert stats.compression == 1.0


def test_superset_search_aims_at_the_pairs_it_attends(monkeypatch):
    """With exact=False the compression target is met on the attended (tile) pairs: closer to the
    target than searching the lines' exact pairs alone, and the plan's count is what the op attends."""
    from sparsa.ops.vertical_slash.convert import superset_pairs
    from sparsa.synthetic import synthetic_qkv

    # scattered diagonals: each costs whole tiles, so the line search alone attends almost everything
    q, k, v = synthetic_qkv(1, 4, 2, 1024, 16, seed=3)
    target = 4.0
    small = dict(last_q=32, init_tokens=4, local_diagonals=8)
    import sparsa.ops.vertical_slash as vs_op

    def built_again(*a, **kw):
        raise AssertionError("the op built the layout the planner had already built")

    with monkeypatch.context() as m:
        m.setattr(vs_op, "prepare_vertical_slash", built_again)
        out, stats = VerticalSlash(compression=target, exact=False, **small)(q, k, v)
    assert not stats.info["dense_fallback"] and "layout" not in stats.info
    assert stats.compression == pytest.approx(stats.info["superset_planned"], rel=1e-9)
    # the lines searched on their exact pairs, then attended with superset semantics
    vi, si = VerticalSlash(compression=target, **small).plan(q, k)
    layout = prepare_vertical_slash(vi, si, 1024, 1024, use_triton=False, exact=False)
    dense = 1024 * 1025 / 2 * 4
    line_search = dense / float(superset_pairs(layout, 4).sum())
    assert line_search < target / 2             # the tiles inflate the pairs: the line search falls short
    assert abs(math.log(stats.compression / target)) < abs(math.log(line_search / target))
    vi2, si2 = VerticalSlash(compression=target, exact=False, **small).plan(q, k)
    ref, _ = vertical_slash_attention(q, k, v, vi2, si2, exact=False, backend="reference")
    assert rel_err(out, ref) <= 1e-6

"""Quest: the page bound, the simulated read sets, and decoding, against loop implementations."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.methods._scores import page_bounds, page_scores
from sparsa.methods.quest import Quest, quest_reads

from ._decode_loops import quest_read_sets, rows_attention

finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(1, 9), st.data())
def test_page_bound_dominates_every_key(d, page_size, data):
    q = torch.tensor(data.draw(st.lists(finite, min_size=d, max_size=d)), dtype=torch.float64)
    keys = torch.tensor(data.draw(st.lists(st.lists(finite, min_size=d, max_size=d),
                                           min_size=page_size, max_size=page_size)), dtype=torch.float64)
    kmin, kmax = page_bounds(keys[None, None], page_size, 1)
    bound = float(page_scores(q[None, None, None], kmin, kmax)[0, 0, 0, 0])
    true = [float(keys[j] @ q) for j in range(page_size)]
    assert bound >= max(true) - 1e-9 * (1 + abs(bound))
    # tight: with a single key the bound is that key's score
    if page_size == 1:
        assert bound == pytest.approx(true[0], rel=1e-9, abs=1e-9)


def test_group_score_is_the_sum_of_head_scores():
    g = torch.Generator().manual_seed(30)
    q = torch.randn(2, 6, 3, 8, generator=g)
    k = torch.randn(2, 2, 20, 8, generator=g)
    kmin, kmax = page_bounds(k, 4, 5)
    grouped = page_scores(q, kmin, kmax)
    per_head = torch.stack([page_scores(q[:, [h]], kmin[:, [h // 3]], kmax[:, [h // 3]])[:, 0] for h in range(6)], 1)
    torch.testing.assert_close(grouped, per_head.view(2, 2, 3, 3, 5).sum(2))
    explicit = torch.maximum(q[:, :, :, None, :] * kmax.repeat_interleave(3, 1)[:, :, None],
                             q[:, :, :, None, :] * kmin.repeat_interleave(3, 1)[:, :, None]).sum(-1)
    torch.testing.assert_close(per_head, explicit, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("page_size,budget,lq,length", [(4, 8, 16, 43), (4, 12, 43, 43), (3, 3, 10, 31),
                                                          (8, 16, 5, 64), (5, 10, 7, 30)])
def test_forward_reads_the_defined_tokens(page_size, budget, lq, length):
    g = torch.Generator().manual_seed(31)
    b, h, hkv = 2, 4, 2
    q = torch.randn(b, h, lq, length, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, length, length, generator=g, dtype=torch.float64)
    v = torch.eye(length, dtype=torch.float64).expand(b, hkv, length, length).clone()
    m = Quest(page_size=page_size, budget=budget)
    scale = 1 / math.sqrt(length)
    sets = quest_read_sets(q, k, page_size, budget // page_size)
    out, stats = m(q, k, v)
    ref = rows_attention(q, k, v, sets, scale)
    assert torch.equal(out > 0, ref > 0)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)
    last = len(sets[0][0][-1])
    current = (length - 1) // page_size
    meta = current if current > budget // page_size else 0
    assert stats.computed == b * h * (last + meta)
    assert last + meta == quest_reads(length, page_size, budget // page_size)


def test_decode_equals_simulation_rows():
    g = torch.Generator().manual_seed(32)
    b, h, hkv, p, n, d = 2, 8, 2, 29, 12, 16
    q = torch.randn(b, h, p + n, d, generator=g)
    k = torch.randn(b, hkv, p + n, d, generator=g)
    v = torch.randn(b, hkv, p + n, d, generator=g)
    m = Quest(page_size=4, budget=12)
    sim, _ = m(q[:, :, p:], k, v)
    state = m.init_decode(q[:, :, :p], k[:, :, :p], v[:, :, :p])
    for t in range(n):
        s = p + t + 1
        out, state, read = m.decode_step(q[:, :, s - 1], k[:, :, :s], v[:, :, :s], state)
        torch.testing.assert_close(out, sim[:, :, t], rtol=1e-5, atol=1e-6)
        assert torch.all(read == m.decode_tokens(s))
        _, st_ = m(q[:, :, s - 1:s], k[:, :, :s], v[:, :, :s])
        assert st_.computed == float(read.sum())


def test_compression_mapping_counts_metadata():
    # 16-token pages cost 1/16 of the context in metadata: compression 20 needs larger pages
    assert Quest(compression=20).resolve(4096)[0] == 32
    assert Quest(compression=5).resolve(4096) == (16, 34)
    ps, pages = Quest(compression=8).resolve(65536)
    assert ps == 16 and 65536 / quest_reads(65536, ps, pages) == pytest.approx(8, rel=0.01)
    # an explicit page size is kept even when the target cannot be reached
    assert Quest(compression=20, page_size=16).resolve(4096) == (16, 1)
    # an explicit budget overrides the target
    assert Quest(compression=20, budget=64).resolve(4096) == (16, 4)

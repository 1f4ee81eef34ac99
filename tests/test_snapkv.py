"""SnapKV and Ada-SnapKV: selection, per-head budgets and decoding, against loop implementations."""
from __future__ import annotations

import math

import pytest
import torch

from sparsa.methods._scores import max_pool_same
from sparsa.methods.ada_snapkv import AdaSnapKV, adaptive_selection, head_floor
from sparsa.methods.snapkv import SnapKV

from ._decode_loops import ada_kept, attend, rows_attention, snapkv_kept, snapkv_scores, window_read_sets


def identity_values(b: int, hkv: int, length: int) -> torch.Tensor:
    return torch.eye(length, dtype=torch.float64).expand(b, hkv, length, length).clone()


def make(b, h, hkv, lq, length, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, length, d, generator=g, dtype=dtype)
    return q, k


def loop_kept(m, q, k, scale):
    sc = snapkv_scores(q, k, m.window, m.kernel, scale)
    cap = m.resolve_capacity(k.shape[2])
    if isinstance(m, AdaSnapKV):
        return ada_kept(sc, cap, head_floor(cap, m.floor_ratio))
    return snapkv_kept(sc, cap)


@pytest.mark.parametrize("m,lq", [
    (SnapKV(window=5, kernel=3, capacity=7), 12),
    (SnapKV(window=5, kernel=4, capacity=7), 3),       # fewer rows than the window
    (SnapKV(window=8, kernel=1, capacity=0), 40),
    (AdaSnapKV(window=5, kernel=3, capacity=6, floor_ratio=0.5), 12),
    (AdaSnapKV(window=4, kernel=7, capacity=9, floor_ratio=0.2), 40),
    (AdaSnapKV(window=4, kernel=2, capacity=5, floor_ratio=1.0), 7),
])
def test_forward_reads_the_defined_tokens(m, lq):
    b, h, hkv, length = 2, 8, 4, 40
    q, k = make(b, h, hkv, lq, length, length, seed=20)
    v = identity_values(b, hkv, length)
    scale = 1 / math.sqrt(length)
    kept = loop_kept(m, q, k, scale)
    sets = window_read_sets(kept, lq, length, m.window)
    out, stats = m(q, k, v)
    ref = rows_attention(q, k, v, sets, scale)
    assert torch.equal(out > 0, ref > 0)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)
    assert stats.computed == sum(len(sets[bb][h_ // (h // hkv)][-1]) for bb in range(b) for h_ in range(h))


def test_max_pool_same_matches_loop():
    x = torch.randn(3, 11)
    for kernel in (1, 2, 3, 6, 7, 15):
        lo, hi = (kernel - 1) // 2, kernel // 2
        ref = torch.tensor([[max(row[max(0, i - lo):i + hi + 1].tolist()) for i in range(11)] for row in x])
        assert torch.equal(max_pool_same(x, kernel), ref)


@pytest.mark.parametrize("capacity,floor_ratio,hkv,c", [(10, 0.2, 4, 50), (7, 0.5, 3, 20), (12, 1.0, 2, 30),
                                                         (5, 0.0, 4, 9), (30, 0.2, 3, 25)])
def test_ada_budgets_sum_to_layer_total_and_respect_floor(capacity, floor_ratio, hkv, c):
    g = torch.Generator().manual_seed(21)
    # heads with very different concentration: some peaky, some flat
    temps = torch.linspace(0.05, 3.0, hkv)[None, :, None]
    scores = torch.softmax(torch.randn(2, hkv, c, generator=g) / temps, -1)
    floor = head_floor(capacity, floor_ratio)
    sel = adaptive_selection(scores, capacity, floor)
    per_head = sel.sum(-1)
    assert torch.all(per_head.sum(-1) == min(capacity * hkv, c * hkv))
    assert torch.all(per_head >= min(floor, c))
    ref = ada_kept([[s.tolist() for s in sb] for sb in scores], capacity, floor)
    assert [[sorted(torch.nonzero(sel[b, h]).flatten().tolist()) for h in range(hkv)] for b in range(2)] == \
        [[sorted(x) for x in rb] for rb in ref]
    # each head keeps a prefix of its own ranking
    for b in range(2):
        for h in range(hkv):
            kept = scores[b, h][sel[b, h]]
            dropped = scores[b, h][~sel[b, h]]
            if kept.numel() and dropped.numel():
                assert kept.min() >= dropped.max()


def test_ada_reallocates_towards_flat_heads():
    scores = torch.zeros(1, 2, 100)
    scores[0, 0, :3] = 1.0                       # peaky head: three tokens carry the mass
    scores[0, 1] = torch.linspace(0.5, 0.4, 100)  # flat head
    sel = adaptive_selection(scores, 20, head_floor(20, 0.2))
    assert sel.sum(-1).tolist() == [[4, 36]]


@pytest.mark.parametrize("m", [SnapKV(window=6, kernel=3, capacity=9),
                               AdaSnapKV(window=6, kernel=3, capacity=9, floor_ratio=0.3)])
def test_decode_matches_simulation_at_the_first_step(m):
    b, h, hkv, p, n, d = 2, 4, 2, 44, 3, 44
    q, k = make(b, h, hkv, p + n, p + n, d, seed=22)
    v = torch.randn(b, hkv, p + n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(23))
    scale = 1 / math.sqrt(d)
    qp, kp = q[:, :, :p], k[:, :, :p]
    state = m.init_decode(qp, kp, v[:, :, :p])
    kept = [[sorted(int(x) for x in state.positions[bb, kh] if x >= 0) for kh in range(hkv)] for bb in range(b)]
    # the compressed cache is what the simulation's last prompt row reads ...
    ident, _ = m(qp, kp, identity_values(b, hkv, p))
    for bb in range(b):
        for hh in range(h):
            assert kept[bb][hh // (h // hkv)] == torch.nonzero(ident[bb, hh, -1] > 0).flatten().tolist()
    # ... and the loop definition's selection plus the window
    ref_kept = window_read_sets(loop_kept(m, qp, kp, scale), 1, p, m.window)
    assert kept == [[rows[0] for rows in rb] for rb in ref_kept]
    for t in range(n):
        s = p + t + 1
        out, state, read = m.decode_step(q[:, :, s - 1], k[:, :, :s], v[:, :, :s], state)
        for bb in range(b):
            for hh in range(h):
                idx = kept[bb][hh // (h // hkv)] + list(range(p, s))
                ref = attend(q[bb, hh, s - 1], k[bb, hh // (h // hkv)], v[bb, hh // (h // hkv)], idx, scale)
                torch.testing.assert_close(out[bb, hh], ref, rtol=1e-9, atol=1e-12)
                assert read[bb, hh] == len(idx)
    if isinstance(m, SnapKV):
        assert torch.all(read == m.decode_tokens(p) + n)
    else:
        assert float(read.mean()) == m.decode_tokens(p) + n


def test_compression_sets_capacity_from_the_prompt():
    q, k = make(1, 2, 1, 40, 1000, 8, seed=24, dtype=torch.float32)
    m = SnapKV(compression=10)
    assert m.resolve_capacity(1000) == 100 - 32
    state = m.init_decode(q, k, k)
    assert int((state.positions >= 0).sum()) == 100
    assert SnapKV(compression=10, capacity=5).resolve_capacity(1000) == 5

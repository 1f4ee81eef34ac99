"""Block-Sparse (MInference) planning and attention against loop implementations written here."""
from __future__ import annotations

import pytest
import torch

import sparsa
from sparsa.methods.block_sparse import BlockSparse
from sparsa.ops.block_sparse import block_sparse_attention

from ._util import explicit_attention, rel_err

TARGETS = (2, 5, 10, 20)


def qkv(b: int, h: int, hkv: int, lq: int, lk: int, d: int = 16, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, lk, d, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, lk, d, generator=g, dtype=dtype)
    return q, k, v


def loop_plan(q: torch.Tensor, k: torch.Tensor, bs: int, top_k: int, per_kv_head: bool):
    """Selected key blocks as sets [batch][head or kv head][query block], one block at a time."""
    b, h, lq, _ = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    group = h // hkv
    off = lk - lq
    nq = -(-lq // bs)
    plans = []
    for bi in range(b):
        per_head = []
        for hx in range(hkv if per_kv_head else h):
            kv = hx if per_kv_head else hx // group
            heads = range(hx * group, hx * group + group) if per_kv_head else [hx]
            per_q = []
            for qb in range(nq):
                r0, r1 = qb * bs, min(qb * bs + bs, lq)
                qmean = sum(q[bi, hh, r0:r1].double().mean(0) for hh in heads) / len(heads)
                lo, hi = (off + r0) // bs, (off + r1 - 1) // bs
                forced = {0} | set(range(lo, hi + 1))
                scored = []
                for kb in range(hi + 1):
                    if kb not in forced:
                        kmean = k[bi, kv, kb * bs: min(kb * bs + bs, lk)].double().mean(0)
                        scored.append((float(qmean @ kmean), kb))
                scored.sort(reverse=True)
                per_q.append(forced | {kb for _, kb in scored[:max(0, top_k - len(forced))]})
            per_head.append(per_q)
        plans.append(per_head)
    return plans


def mask_from_sets(plans, heads: int, lq: int, lk: int, bs: int) -> torch.Tensor:
    b, hx = len(plans), len(plans[0])
    group = heads // hx
    off = lk - lq
    mask = torch.zeros(b, heads, lq, lk, dtype=torch.bool)
    for bi in range(b):
        for h in range(heads):
            for i in range(lq):
                p = off + i
                for kb in plans[bi][h // group][i // bs]:
                    mask[bi, h, i, kb * bs: min(kb * bs + bs, p + 1)] = True
    return mask


def sets_of(indices: torch.Tensor):
    return [[[{int(x) for x in row if x >= 0} for row in head] for head in batch] for batch in indices]


@pytest.mark.parametrize("per_kv_head", [False, True])
@pytest.mark.parametrize("lq,lk,bs,top_k", [(333, 333, 32, 4), (333, 333, 64, 3), (100, 333, 32, 3),
                                             (333, 333, 16, 2), (333, 333, 32, 100)])
def test_plan_and_output_match_loops(lq, lk, bs, top_k, per_kv_head):
    q, k, v = qkv(2, 8, 2, lq, lk)
    m = BlockSparse(block_size=bs, top_k=top_k, per_kv_head=per_kv_head)
    # the plan is compared in float64 so near-ties cannot flip between implementations
    indices = m.plan(q.double(), k.double())
    assert indices.shape[:3] == (2, 2 if per_kv_head else 8, -(-lq // bs))
    assert indices.dtype == torch.int32
    valid = indices >= 0
    assert not (valid[..., 1:] & ~valid[..., :-1]).any()
    assert ((indices[..., 1:] > indices[..., :-1]) | ~valid[..., 1:]).all()
    expected = loop_plan(q, k, bs, top_k, per_kv_head)
    assert sets_of(indices) == expected
    allowed = mask_from_sets(expected, 8, lq, lk, bs)
    out, stats = m(q, k, v)
    assert rel_err(out, explicit_attention(q, k, v, allowed)) <= 1e-5
    assert stats.computed == int(allowed.sum())
    assert stats.computed == 2 * 8 * m.pairs(top_k, lq, lk)


@pytest.mark.parametrize("lq,lk", [(333, 333), (77, 333)])
@pytest.mark.parametrize("params", [{}, {"block_size": 16}, {"per_kv_head": True}])
def test_compression_one_is_dense(lq, lk, params):
    q, k, v = qkv(2, 8, 2, lq, lk)
    out, stats = sparsa.attention(q, k, v, "block_sparse", compression=1, return_stats=True, **params)
    causal = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)[None, None]
    assert stats.compression == 1.0
    assert rel_err(out, explicit_attention(q, k, v, causal)) <= 1e-5


def test_compression_targets_are_met():
    q, k, v = qkv(1, 1, 1, 4096, 4096, d=64)
    for target in TARGETS:
        _, stats = sparsa.attention(q, k, v, "block_sparse", compression=target, return_stats=True)
        assert abs(stats.compression / target - 1) <= 0.25, (target, stats)


def test_defaults_and_overrides():
    assert BlockSparse().resolve_top_k(8192, 8192) == 100
    assert BlockSparse(compression=10, top_k=7).resolve_top_k(8192, 8192) == 7
    assert BlockSparse(compression=10).resolve_top_k(8192, 8192) < 100


@pytest.mark.parametrize("params,field,exc", [
    ({"top_k": 1}, "top_k", ValueError),
    ({"top_k": 2.5}, "top_k", TypeError),
    ({"block_size": 0}, "block_size", ValueError),
    ({"per_kv_head": "yes"}, "per_kv_head", TypeError),
    ({"compression": -3}, "compression", ValueError),
])
def test_bad_hyper_parameters_name_the_field(params, field, exc):
    with pytest.raises(exc, match=f"^{field}"):
        BlockSparse(**params)


def test_dispatch_rejects_bad_indices_and_backend():
    q, k, v = qkv(1, 4, 2, 70, 70)
    good = BlockSparse(block_size=32, top_k=2).plan(q, k)
    out, pairs = block_sparse_attention(q, k, v, good, block_q=32, block_k=32, backend="reference")
    assert out.shape == q.shape and pairs.shape == (1, 4)
    with pytest.raises(ValueError, match="^block_indices"):
        block_sparse_attention(q, k, v, good[:, :, :1], block_q=32, block_k=32)
    with pytest.raises(ValueError, match="^block_indices"):
        block_sparse_attention(q, k, v, good.flip(-1), block_q=32, block_k=32)
    with pytest.raises(ValueError, match="^backend"):
        block_sparse_attention(q, k, v, good, block_q=32, block_k=32, backend="fast")
    with pytest.raises(ValueError, match="^block_q"):
        block_sparse_attention(q, k, v, good, block_q=0, block_k=32)


def test_single_key_row_has_no_nan():
    q, k, v = qkv(1, 2, 1, 1, 1)
    out, _ = BlockSparse()(q, k, v)
    torch.testing.assert_close(out[0, :, 0], v[0, 0, 0].expand(2, -1))

"""The reference ops against explicit masks built independently here."""
import torch

from sparsa.ops.block_sparse import (block_sparse_attention_ref, check_block_indices, indices_from_block_mask,
                                     normalize_block_indices)
from sparsa.ops.dense import dense_attention, masked_attention
from sparsa.ops.sparse_decode import pages_to_tokens, sparse_decode_ref
from sparsa.ops.vertical_slash import vertical_slash_attention_ref

from ._util import causal_mask, explicit_attention, rel_err

import pytest


@pytest.mark.parametrize("b,h,hkv,lq,lk,d", [(2, 8, 2, 77, 77, 64), (1, 4, 4, 5, 131, 32), (2, 16, 1, 33, 50, 128)])
def test_dense_matches_explicit(b, h, hkv, lq, lk, d):
    q, k, v = torch.randn(b, h, lq, d), torch.randn(b, hkv, lk, d), torch.randn(b, hkv, lk, d)
    ref = explicit_attention(q, k, v, causal_mask(lq, lk))
    assert rel_err(dense_attention(q, k, v), ref) < 1e-5


def test_dense_matches_sdpa():
    q, k, v = torch.randn(2, 4, 100, 64), torch.randn(2, 4, 100, 64), torch.randn(2, 4, 100, 64)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert rel_err(dense_attention(q, k, v), sdpa) < 1e-5


def test_row_with_single_or_no_key_is_finite():
    q, k, v = torch.randn(1, 2, 6, 16), torch.randn(1, 2, 6, 16), torch.randn(1, 2, 6, 16)

    def only_first(s, e):
        m = torch.zeros(1, 1, e - s, 6, dtype=torch.bool)
        m[..., 0] = True
        m[..., 3, :] = False  # row 3 sees nothing
        return m

    out, pairs = masked_attention(q, k, v, only_first)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:, :, 0], v[:, :, 0], atol=1e-6)
    assert torch.all(out[:, :, 3] == 0)
    assert pairs.tolist() == [[5.0, 5.0]]


def _blocks_mask(idx, lq, lk, bq, bk, h):
    b, hx, nq, _ = idx.shape
    m = torch.zeros(b, h, lq, lk, dtype=torch.bool)
    g = h // hx
    for bi in range(b):
        for hh in range(h):
            for i in range(lq):
                pos = lk - lq + i
                for kb in idx[bi, hh // g, i // bq].tolist():
                    if kb < 0:
                        continue
                    for j in range(kb * bk, min(lk, (kb + 1) * bk)):
                        if j <= pos:
                            m[bi, hh, i, j] = True
    return m


@pytest.mark.parametrize("per_kv_head", [True, False])
def test_block_sparse_ref_matches_explicit(per_kv_head):
    b, h, hkv, lq, lk, d, bq, bk = 2, 4, 2, 45, 70, 16, 16, 8
    q, k, v = torch.randn(b, h, lq, d), torch.randn(b, hkv, lk, d), torch.randn(b, hkv, lk, d)
    hx = hkv if per_kv_head else h
    nq, nk = -(-lq // bq), -(-lk // bk)
    table = torch.rand(b, hx, nq, nk) < 0.4
    idx = indices_from_block_mask(table)
    check_block_indices(idx, batch=b, heads=h, kv_heads=hkv, q_len=lq, kv_len=lk, block_q=bq, block_k=bk)
    out, pairs = block_sparse_attention_ref(q, k, v, idx, block_q=bq, block_k=bk)
    mask = _blocks_mask(idx, lq, lk, bq, bk, h)
    assert rel_err(out, explicit_attention(q, k, v, mask)) < 1e-5
    assert torch.equal(pairs, mask.sum((-1, -2)).double())


def test_block_indices_validation_and_normalisation():
    idx = torch.tensor([[[[3, 1, -1, 1]]]])
    with pytest.raises(ValueError, match="block_indices"):
        check_block_indices(idx, batch=1, heads=1, kv_heads=1, q_len=10, kv_len=256, block_q=64, block_k=64)
    norm = normalize_block_indices(idx)
    assert norm.tolist() == [[[[1, 3, -1, -1]]]]
    check_block_indices(norm, batch=1, heads=1, kv_heads=1, q_len=10, kv_len=256, block_q=64, block_k=64)
    with pytest.raises(ValueError, match="block_indices"):
        check_block_indices(torch.tensor([[[[0, 9]]]]), batch=1, heads=1, kv_heads=1, q_len=10, kv_len=256,
                            block_q=64, block_k=64)
    with pytest.raises(TypeError, match="block_indices"):
        check_block_indices(torch.zeros(1, 1, 1, 1), batch=1, heads=1, kv_heads=1, q_len=10, kv_len=256,
                            block_q=64, block_k=64)


def test_vertical_slash_ref_matches_explicit():
    b, h, hkv, lq, lk, d = 2, 4, 1, 40, 57, 16
    q, k, v = torch.randn(b, h, lq, d), torch.randn(b, hkv, lk, d), torch.randn(b, hkv, lk, d)
    vert = torch.randint(0, lk, (b, h, 5))
    vert[0, 0, 2] = -1
    slash = torch.randint(0, lk, (b, h, 4))
    slash[1, 2, 0] = -1
    mask = torch.zeros(b, h, lq, lk, dtype=torch.bool)
    for bi in range(b):
        for hh in range(h):
            cols = {c for c in vert[bi, hh].tolist() if c >= 0}
            offs = {o for o in slash[bi, hh].tolist() if o >= 0}
            for i in range(lq):
                p = lk - lq + i
                for j in range(p + 1):
                    mask[bi, hh, i, j] = j in cols or (p - j) in offs
    out, pairs = vertical_slash_attention_ref(q, k, v, vert, slash)
    assert rel_err(out, explicit_attention(q, k, v, mask)) < 1e-5
    assert torch.equal(pairs, mask.sum((-1, -2)).double())
    with pytest.raises(ValueError, match="vertical_indices"):
        vertical_slash_attention_ref(q, k, v, torch.full((b, h, 2), lk), slash)


def test_sparse_decode_matches_explicit():
    b, h, hkv, lk, d = 2, 8, 2, 50, 32
    q, k, v = torch.randn(b, h, d), torch.randn(b, hkv, lk, d), torch.randn(b, hkv, lk, d)
    idx = torch.randint(-1, lk, (b, hkv, 12))
    mask = torch.zeros(b, h, 1, lk, dtype=torch.bool)
    for bi in range(b):
        for hh in range(h):
            for t in idx[bi, hh // 4].tolist():
                if t >= 0:
                    mask[bi, hh, 0, t] = True
    ref = explicit_attention(q[:, :, None], k, v, mask)[:, :, 0]
    assert rel_err(sparse_decode_ref(q, k, v, idx), ref) < 1e-5
    pages = torch.tensor([[[0, 3, -1]]])
    toks = pages_to_tokens(pages, 4, 14)
    assert [t for t in toks[0, 0].tolist() if t >= 0] == [0, 1, 2, 3, 12, 13]

"""Local patterns (window, sinks, global tokens) through the block-sparse kernel, against the
references, on the CPU under the Triton interpreter."""
import os

import pytest

os.environ["TRITON_INTERPRET"] = "1"          # before any triton-dependent import
pytest.importorskip("triton", reason="triton is not installed")

import torch  # noqa: E402

from sparsa.ops.block_sparse import (LocalMask, block_mask_from_indices, block_sparse_attention_ref,  # noqa: E402
                                     local_attention, local_attention_ref, local_block_lists, local_pairs,
                                     num_blocks)
from .test_block_sparse_triton import qkv, random_indices, rel_err  # noqa: E402
from sparsa.ops.block_sparse.triton import block_sparse_attention_triton, local_attention_triton  # noqa: E402


def kept_pairs(lq: int, lk: int, window, sink: int, glob) -> torch.Tensor:
    """(lq, lk) bool mask of the local pattern, from explicit loops."""
    g = set(glob or ())
    m = torch.zeros(lq, lk, dtype=torch.bool)
    for i in range(lq):
        p = lk - lq + i
        for j in range(p + 1):
            m[i, j] = window is None or p - j < window or j < sink or j in g or p in g
    return m


CASES = [
    # batch, heads, kv_heads, q_len, kv_len, head_dim, window, sink, global positions, block_q, block_k
    (2, 4, 4, 201, 201, 64, 37, 0, (), 64, 64),                 # plain window, GQA 1
    (2, 8, 2, 130, 201, 64, 37, 3, (0, 1, 50, 77, 190), 64, 64),  # GQA 4, global rows and columns, q_len < kv_len
    (1, 8, 1, 97, 97, 64, 20, 5, (), 32, 32),                  # GQA 8, A-shape
    (2, 8, 1, 61, 300, 128, 45, 0, (3, 4, 299), 64, 32),       # GQA 8, head_dim 128, global last position
    (1, 4, 2, 150, 150, 128, 1, 1, (), 16, 64),                # window 1: the diagonal and one sink
    (1, 2, 1, 70, 130, 64, 500, 4, (9,), 64, 64),              # window wider than the context: causal
]


@pytest.mark.parametrize("b,h,hkv,lq,lk,d,window,sink,glob,bq,bk", CASES)
def test_local_kernel_matches_reference_fp32(b, h, hkv, lq, lk, d, window, sink, glob, bq, bk):
    gen = torch.Generator().manual_seed(hash((b, h, hkv, lq, lk, d, window, sink)) % 2**31)
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.float32, gen)
    out = local_attention_triton(q, k, v, window=window, sink=sink, global_positions=glob, scale=0.13,
                                 block_q=bq, block_k=bk)
    ref, ref_pairs = local_attention_ref(q, k, v, window=window, sink=sink, global_positions=glob, scale=0.13)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-4
    assert float(ref_pairs[0, 0]) == float(kept_pairs(lq, lk, window, sink, glob).sum())
    out2, pairs = local_attention(q, k, v, window=window, sink=sink, global_positions=glob, scale=0.13,
                                  backend="triton", block_q=bq, block_k=bk)
    assert torch.equal(out2, out)
    assert torch.equal(pairs, ref_pairs)


def test_local_kernel_bf16():
    gen = torch.Generator().manual_seed(3)
    q, k, v = qkv(2, 8, 2, 190, 190, 128, torch.bfloat16, gen)
    out, _ = local_attention(q, k, v, window=50, sink=4, global_positions=(100,), backend="triton")
    ref, _ = local_attention_ref(q.float(), k.float(), v.float(), window=50, sink=4, global_positions=(100,))
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) <= 1e-2


@pytest.mark.parametrize("lq,lk,window,sink,glob,bq,bk", [
    (201, 201, 37, 3, (0, 1, 50, 77, 190), 64, 64), (130, 201, 7, 0, (150,), 32, 16),
    (97, 97, 20, 40, (), 16, 32), (5, 300, 64, 2, (1, 2, 3, 298), 64, 64), (64, 64, 64, 0, (), 64, 64),
])
def test_block_lists_cover_the_pattern(lq, lk, window, sink, glob, bq, bk):
    mask = LocalMask.build(window, sink, glob, lk)
    idx, n_clean, n_vis = local_block_lists(mask, lq, lk, bq, bk)
    kept = kept_pairs(lq, lk, window, sink, glob)
    assert local_pairs(mask, lq, lk) == int(kept.sum())
    nq, nk = num_blocks(lq, bq), num_blocks(lk, bk)
    pad_q, pad_k = nq * bq - lq, nk * bk - lk
    blocks = torch.nn.functional.pad(kept, (0, pad_k, 0, pad_q)).view(nq, bq, nk, bk)
    row_ok = torch.nn.functional.pad(torch.ones(lq, dtype=torch.bool), (0, pad_q)).view(nq, bq)
    needed = blocks.any(3).any(1)                                  # (nq, nk): blocks holding a kept pair
    # every pair of the valid rows kept, and the key block not cut by the end of the sequence
    whole = (blocks | ~row_ok[:, :, None, None]).all(3).all(1)
    whole &= (torch.arange(nk) * bk + bk <= lk)[None, :]
    for qb in range(nq):
        row = [int(x) for x in idx[qb] if x >= 0]
        assert len(row) == len(set(row)) == int(n_vis[qb])
        listed = torch.zeros(nk, dtype=torch.bool)
        listed[row] = True
        assert torch.equal(listed, needed[qb]), qb
        clean = row[:int(n_clean[qb])]
        # no global-only key block or global-only query block here: clean is exactly "whole"
        assert set(clean) == {kb for kb in row if bool(whole[qb, kb])}, qb
        assert clean == sorted(clean)
        # -1 padding only at the end
        n = int(n_vis[qb])
        assert bool((idx[qb, :n] >= 0).all()) and bool((idx[qb, n:] == -1).all())


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("window,sink,glob", [(30, 0, ()), (17, 5, (60, 61, 150)), (1, 0, (0,))])
def test_element_mask_on_arbitrary_lists(shared, window, sink, glob):
    gen = torch.Generator().manual_seed(11)
    b, h, hkv, lq, lk, d, bq, bk = 2, 8, 2, 130, 200, 64, 32, 32
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.float32, gen)
    idx = random_indices(b, hkv if shared else h, lq, lk, bq, bk, gen)
    out = block_sparse_attention_triton(q, k, v, idx, block_q=bq, block_k=bk, window=window, sink=sink,
                                        global_positions=glob)
    ref, _ = block_sparse_attention_ref(q, k, v, idx, block_q=bq, block_k=bk, window=window, sink=sink,
                                        global_positions=glob)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-4


def test_full_window_equals_block_lists_without_mask():
    gen = torch.Generator().manual_seed(5)
    b, h, hkv, lq, lk, d = 1, 4, 2, 100, 180, 64
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.float32, gen)
    nq, nk = num_blocks(lq, 32), num_blocks(lk, 32)
    full = torch.arange(nk, dtype=torch.int32).expand(b, hkv, nq, nk).contiguous()
    plain, _ = block_sparse_attention_ref(q, k, v, full, block_q=32, block_k=32)
    out = block_sparse_attention_triton(q, k, v, full, block_q=32, block_k=32, window=lk, sink=3)
    assert rel_err(out, plain) <= 1e-4
    table = block_mask_from_indices(full, nk)
    assert bool(table.all())


def test_local_mask_normalisation():
    m = LocalMask.build(10, 2, (2, 3, 5, 99), 100)
    assert (m.window, m.sink, m.globals) == (10, 4, (5, 99))
    assert not LocalMask.build(100, 4, (7,), 100).active
    assert LocalMask.build(None, 4, torch.tensor([1, 1, 0]), 10).globals == ()
    assert LocalMask.build(3, 0, torch.tensor([1, 1, 0]), 10).sink == 2


def test_bad_inputs_name_the_argument(monkeypatch):
    q = torch.randn(1, 2, 64, 64)
    with pytest.raises(ValueError, match="^global_positions"):
        local_attention(q, q, q, window=8, global_positions=(64,))
    with pytest.raises(ValueError, match="^global_positions"):
        local_attention(q, q, q, window=8, global_positions=(-1,))
    with pytest.raises(TypeError, match="^global_positions"):
        local_attention(q, q, q, window=8, global_positions=(1.5,))
    with pytest.raises(TypeError, match="^global_positions"):
        local_attention(q, q, q, window=8, global_positions=torch.tensor([1.0]))
    with pytest.raises(TypeError, match="^global_positions"):
        local_attention(q, q, q, window=8, global_positions=3)
    with pytest.raises(ValueError, match="^window"):
        local_attention(q, q, q, window=0)
    with pytest.raises(TypeError, match="^window"):
        local_attention(q, q, q, window=2.5)
    with pytest.raises(ValueError, match="^sink"):
        local_attention(q, q, q, window=8, sink=-1)
    with pytest.raises(ValueError, match="^backend"):
        local_attention(q[..., :32], q[..., :32], q[..., :32], window=8, backend="triton")
    with pytest.raises(ValueError, match="^block_q"):
        local_attention_triton(q, q, q, window=8, block_q=48)
    # auto on CPU tensors takes the reference
    out, _ = local_attention(q[..., :32], q[..., :32], q[..., :32], window=8)
    assert out.shape == (1, 2, 64, 32)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="^q: .*CUDA"):
        local_attention_triton(q, q, q, window=8)

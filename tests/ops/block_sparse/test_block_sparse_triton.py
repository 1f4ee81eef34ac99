"""The Triton block-sparse kernel against the reference, on the CPU under the Triton interpreter."""
import os

import pytest

os.environ["TRITON_INTERPRET"] = "1"          # before any triton-dependent import
pytest.importorskip("triton", reason="triton is not installed")

import torch  # noqa: E402

from sparsa.ops.block_sparse import (block_sparse_attention, block_sparse_attention_ref,  # noqa: E402
                                     normalize_block_indices, num_blocks)
from sparsa.ops.block_sparse.triton import block_sparse_attention_triton, heads_per_program  # noqa: E402
from sparsa.ops.dense.reference import dense_attention  # noqa: E402


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def random_indices(b: int, hx: int, q_len: int, kv_len: int, block_q: int, block_k: int,
                   gen: torch.Generator) -> torch.Tensor:
    """Sorted random lists with repeats removed, some rows empty, some past the diagonal."""
    nq, nk = num_blocks(q_len, block_q), num_blocks(kv_len, block_k)
    width = max(1, (nk + 1) // 2)
    raw = torch.randint(-1, nk, (b, hx, nq, width), generator=gen)
    raw[:, :, 0, :] = -1                         # an empty row in every head
    raw[..., -1, 0] = nk - 1                      # the last query block sees the last key block
    return normalize_block_indices(raw)


def qkv(b, h, hkv, lq, lk, d, dtype, gen):
    return (torch.randn(b, h, lq, d, generator=gen).to(dtype), torch.randn(b, hkv, lk, d, generator=gen).to(dtype),
            torch.randn(b, hkv, lk, d, generator=gen).to(dtype))


CASES = [
    # batch, heads, kv_heads, q_len, kv_len, head_dim, block_q, block_k, lists per KV head
    (2, 4, 4, 200, 200, 64, 32, 64, False),
    (2, 8, 2, 130, 200, 64, 64, 32, True),     # GQA 4, two heads stacked per program
    (1, 8, 1, 200, 200, 64, 32, 32, True),     # GQA 8, four heads stacked
    (1, 8, 1, 100, 161, 64, 64, 64, False),    # GQA 8, per-head lists
    (1, 2, 1, 70, 150, 128, 64, 64, True),     # head_dim 128
]


@pytest.mark.parametrize("b,h,hkv,lq,lk,d,bq,bk,shared", CASES)
def test_kernel_matches_reference_fp32(b, h, hkv, lq, lk, d, bq, bk, shared):
    gen = torch.Generator().manual_seed(hash((b, h, hkv, lq, lk, d, bq, bk)) % 2**31)
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.float32, gen)
    idx = random_indices(b, hkv if shared else h, lq, lk, bq, bk, gen)
    out = block_sparse_attention_triton(q, k, v, idx, block_q=bq, block_k=bk, scale=0.11)
    ref, ref_pairs = block_sparse_attention_ref(q, k, v, idx, block_q=bq, block_k=bk, scale=0.11)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-4
    # the first query block has an empty list: zeros
    assert out[:, :, :bq].abs().max() == 0
    out2, pairs = block_sparse_attention(q, k, v, idx, block_q=bq, block_k=bk, scale=0.11, backend="triton")
    assert torch.equal(out2, out)
    assert torch.equal(pairs, ref_pairs)


def test_heads_per_program():
    assert heads_per_program(32, 8, 8, 64) == 2
    assert heads_per_program(32, 32, 8, 64) == 1
    assert heads_per_program(8, 1, 1, 32) == 4
    assert heads_per_program(16, 1, 1, 128) == 1


def test_fp16_and_full_lists_equal_dense():
    gen = torch.Generator().manual_seed(1)
    b, h, hkv, lq, lk, d = 1, 4, 2, 96, 140, 64
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.float16, gen)
    nq, nk = num_blocks(lq, 32), num_blocks(lk, 32)
    full = torch.arange(nk, dtype=torch.int32).expand(b, hkv, nq, nk).contiguous()
    out = block_sparse_attention_triton(q, k, v, full, block_q=32, block_k=32)
    assert out.dtype == torch.float16
    assert rel_err(out, dense_attention(q.float(), k.float(), v.float())) <= 1e-2


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(2)
    b, h, lq, d = 1, 2, 64, 64
    base = torch.randn(b, lq, h, d, generator=gen)
    q = base.transpose(1, 2)                                   # strided heads, last dim contiguous
    k = torch.randn(b, h, d, lq, generator=gen).transpose(2, 3)  # last dim not contiguous
    v = torch.randn(b, h, lq, d, generator=gen)
    idx = random_indices(b, h, lq, lq, 32, 32, gen)
    out = block_sparse_attention_triton(q, k, v, idx, block_q=32, block_k=32)
    ref, _ = block_sparse_attention_ref(q, k, v, idx, block_q=32, block_k=32)
    assert rel_err(out, ref) <= 1e-4


def test_bad_inputs_name_the_argument(monkeypatch):
    q = torch.randn(1, 2, 64, 64)
    idx = torch.zeros(1, 2, 2, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="^q: .*head_dim"):
        block_sparse_attention_triton(q[..., :32], q[..., :32], q[..., :32], idx, block_q=32, block_k=32)
    with pytest.raises(TypeError, match="^q: "):
        qd = q.double()
        block_sparse_attention_triton(qd, qd, qd, idx, block_q=32, block_k=32)
    with pytest.raises(ValueError, match="^block_q"):
        block_sparse_attention_triton(q, q, q, idx, block_q=48, block_k=32)
    with pytest.raises(ValueError, match="^block_indices"):
        bad = torch.tensor([1, 0], dtype=torch.int32).expand(1, 2, 2, 2)
        block_sparse_attention_triton(q, q, q, bad, block_q=32, block_k=32)
    with pytest.raises(ValueError, match="^block_indices"):
        block_sparse_attention_triton(q, q, q, idx[:, :, :1], block_q=32, block_k=32)
    with pytest.raises(ValueError, match="^backend"):
        block_sparse_attention(q[..., :32], q[..., :32], q[..., :32], idx, block_q=32, block_k=32, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="^q: .*CUDA"):
        block_sparse_attention_triton(q, q, q, idx, block_q=32, block_k=32)

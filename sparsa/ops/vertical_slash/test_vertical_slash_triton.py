"""The Triton vertical-slash kernels (conversion and attention) against their references,
on the CPU under the Triton interpreter."""
import os

import pytest

os.environ["TRITON_INTERPRET"] = "1"          # before any triton-dependent import
pytest.importorskip("triton", reason="triton is not installed")

import torch  # noqa: E402

from sparsa.ops.dense.reference import dense_attention, query_positions  # noqa: E402
from sparsa.ops.vertical_slash import vertical_slash_attention, vertical_slash_attention_ref  # noqa: E402
from sparsa.ops.vertical_slash.convert import (VS_TILE, prepare_vertical_slash, tile_cover_mask,  # noqa: E402
                                               vertical_slash_pairs, vertical_slash_superset_ref)
from sparsa.ops.vertical_slash.triton import vertical_slash_attention_triton  # noqa: E402


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def random_lines(b: int, hx: int, kv_len: int, nv: int, ns: int, gen: torch.Generator):
    """Random columns and offsets with repeats and -1 slots; one head gets no line at all."""
    vi = torch.randint(-1, kv_len, (b, hx, nv), generator=gen)
    si = torch.randint(-1, kv_len, (b, hx, ns), generator=gen)
    si[..., : ns // 3] = torch.randint(0, 40, (b, hx, ns // 3), generator=gen)   # clustered near the diagonal
    vi[0, 0] = -1
    si[0, 0] = -1
    return vi.to(torch.int32), si


def qkv(b, h, hkv, lq, lk, d, dtype, gen):
    return (torch.randn(b, h, lq, d, generator=gen).to(dtype), torch.randn(b, hkv, lk, d, generator=gen).to(dtype),
            torch.randn(b, hkv, lk, d, generator=gen).to(dtype))


CASES = [
    # batch, heads, kv_heads, q_len, kv_len, head_dim, lines per KV head, n_vertical, n_slash, block_q
    (2, 4, 4, 200, 200, 64, False, 12, 16, 64),
    (2, 8, 2, 130, 200, 64, True, 20, 30, 64),     # GQA 4, two heads stacked per program
    (1, 8, 1, 200, 200, 64, False, 6, 40, 128),    # GQA 8, per-head lines
    (1, 2, 1, 70, 150, 128, True, 5, 9, 128),      # head_dim 128, q_len < kv_len
]


@pytest.mark.parametrize("b,h,hkv,lq,lk,d,shared,nv,ns,bq", CASES)
def test_conversion_kernel_matches_spec(b, h, hkv, lq, lk, d, shared, nv, ns, bq):
    gen = torch.Generator().manual_seed(lq * 7 + lk)
    vi, si = random_lines(b, hkv if shared else h, lk, nv, ns, gen)
    for exact in (True, False):
        spec = prepare_vertical_slash(vi, si, lq, lk, use_triton=False, block_q=bq, exact=exact)
        fast = prepare_vertical_slash(vi, si, lq, lk, use_triton=True, block_q=bq, exact=exact)
        assert torch.equal(spec.tiles, fast.tiles)
        assert torch.equal(spec.clean_count, fast.clean_count)
        assert torch.equal(spec.masked_count, fast.masked_count)
    # tiles are disjoint and cover every causal pair of every chosen diagonal
    ts = spec.tile_starts()
    both = (ts[..., 1:] >= 0) & (ts[..., :-1] >= 0)
    assert bool(((ts[..., 1:] - ts[..., :-1] >= VS_TILE) | ~both).all())
    cover = tile_cover_mask(spec)
    pos = query_positions(lq, lk)
    offset = pos[:, None] - torch.arange(lk)[None, :]
    on_diag = spec.offset_table.bool()[:, :, offset.clamp_min(0)] & (offset >= 0)
    assert bool((cover | ~on_diag).all())


@pytest.mark.parametrize("b,h,hkv,lq,lk,d,shared,nv,ns,bq", CASES)
def test_kernel_matches_reference_fp32(b, h, hkv, lq, lk, d, shared, nv, ns, bq):
    gen = torch.Generator().manual_seed(lq * 13 + lk)
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.float32, gen)
    vi, si = random_lines(b, hkv if shared else h, lk, nv, ns, gen)
    out = vertical_slash_attention_triton(q, k, v, vi, si, scale=0.13, block_q=bq)
    ref, ref_pairs = vertical_slash_attention_ref(q, k, v, vi, si, scale=0.13)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-4
    assert out[0, 0].abs().max() == 0             # a head with no line outputs zeros
    out2, pairs = vertical_slash_attention(q, k, v, vi, si, scale=0.13, backend="triton")
    assert rel_err(out2, ref) <= 1e-4
    assert torch.equal(pairs, ref_pairs)


@pytest.mark.parametrize("bq", [64, 128])
def test_band_with_clean_tiles(bq):
    """A band of recent diagonals: most tiles run unmasked; the result is still exact."""
    gen = torch.Generator().manual_seed(bq)
    b, h, hkv, lq, lk, d = 1, 2, 1, 330, 400, 64
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.float32, gen)
    si = torch.cat([torch.arange(0, 200), torch.tensor([230, 231, 300])]).expand(b, h, -1)
    vi = torch.tensor([0, 1, 2, 250]).expand(b, h, -1)
    layout = prepare_vertical_slash(vi, si, lq, lk, use_triton=True, block_q=bq)
    assert int(layout.clean_count.sum()) > 0
    out = vertical_slash_attention_triton(q, k, v, layout=layout)
    ref, _ = vertical_slash_attention_ref(q, k, v, vi, si)
    assert rel_err(out, ref) <= 1e-4


def test_superset_semantics_and_bf16():
    gen = torch.Generator().manual_seed(5)
    b, h, hkv, lq, lk, d = 1, 4, 2, 150, 150, 64
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.bfloat16, gen)
    vi, si = random_lines(b, h, lk, 8, 10, gen)
    exact = vertical_slash_attention_triton(q, k, v, vi, si, block_q=64)
    layout = prepare_vertical_slash(vi, si, lq, lk, use_triton=True, block_q=64, exact=False)
    sup = vertical_slash_attention_triton(q, k, v, layout=layout)
    ref_exact, _ = vertical_slash_attention_ref(q.float(), k.float(), v.float(), vi, si)
    ref_sup, _ = vertical_slash_superset_ref(q.float(), k.float(), v.float(), layout)
    assert exact.dtype == torch.bfloat16
    assert rel_err(exact, ref_exact) <= 1e-2
    assert rel_err(sup, ref_sup) <= 1e-2
    assert rel_err(ref_sup, ref_exact) > 0.05       # the two semantics really differ here


def test_all_lines_equal_dense_and_pairs():
    gen = torch.Generator().manual_seed(3)
    b, h, hkv, lq, lk, d = 1, 2, 1, 90, 130, 64
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.float32, gen)
    si = torch.arange(lk).expand(b, h, lk)
    vi = torch.tensor([0, 5, 5, 129, -1]).expand(b, h, 5)
    out, pairs = vertical_slash_attention(q, k, v, vi, si, backend="triton")
    assert rel_err(out, dense_attention(q, k, v)) <= 1e-4
    layout = prepare_vertical_slash(vi, si, lq, lk, use_triton=True)
    assert torch.equal(pairs, vertical_slash_pairs(layout, h))
    assert float(pairs[0, 0]) == (lk - lq + 1 + lk) * lq / 2


def test_bad_inputs_name_the_argument(monkeypatch):
    q = torch.randn(1, 2, 64, 64)
    vi = torch.zeros(1, 2, 3, dtype=torch.int32)
    with pytest.raises(ValueError, match="^slash_indices"):
        vertical_slash_attention_triton(q, q, q, vi, torch.full((1, 2, 2), 64))
    with pytest.raises(ValueError, match="^vertical_indices"):
        vertical_slash_attention_triton(q, q, q, vi[:, :1].expand(1, 3, 3), vi)
    with pytest.raises(TypeError, match="^slash_indices"):
        vertical_slash_attention_triton(q, q, q, vi, vi.float())
    with pytest.raises(ValueError, match="^q: .*head_dim"):
        vertical_slash_attention_triton(q[..., :16], q[..., :16], q[..., :16], vi, vi)
    with pytest.raises(ValueError, match="^backend"):
        vertical_slash_attention(q[..., :16], q[..., :16], q[..., :16], vi, vi, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="^q: .*CUDA"):
        vertical_slash_attention_triton(q, q, q, vi, vi)

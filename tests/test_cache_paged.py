"""PagedKVCache: paging, page bounds maintained on append (Quest's bound property), growth, bad input."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.cache import PagedKVCache
from sparsa.ops.kv_quant import dequantize, quantize
from sparsa.ops.sparse_decode import quest_page_scores_ref


def make(b=2, hkv=2, L=37, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hkv, L, d, generator=g).to(dtype), torch.randn(b, hkv, L, d, generator=g).to(dtype))


def check_bounds(c: PagedKVCache, keys: torch.Tensor, exact: bool = True) -> None:
    """keys (B, Hkv, S, D): the values the cache holds; bounds must cover every page exactly or
    outwards (native bounds: every page; int8 bounds: the complete pages, the ones scored)."""
    ps = c.page_size
    kmin, kmax = c.bound_values()
    for b, s in enumerate(c.seq_lens_host):
        for p in range(-(-s // ps) if c.bounds == "native" else s // ps):
            phys = int(c.page_table[b, p])
            page = keys[b, :, p * ps:min(s, (p + 1) * ps)].float()
            assert bool((kmin[phys] <= page.amin(1)).all())
            assert bool((kmax[phys] >= page.amax(1)).all())
            if exact and c.quant is None and c.dtype == torch.float32:
                assert torch.equal(c.kmin[phys], page.amin(1)) and torch.equal(c.kmax[phys], page.amax(1))


def test_from_dense_pages_every_token_and_its_bounds():
    k, v = make()
    c = PagedKVCache.from_dense(k, v, page_size=4, lengths=[37, 22], reserve=3)
    kd, vd = c.to_dense()
    torch.testing.assert_close(kd[0], k[0])
    torch.testing.assert_close(kd[1, :, :22], k[1, :, :22])
    assert kd[1, :, 22:].abs().max() == 0
    check_bounds(c, k)
    # distinct physical pages, enough for the prompt plus the reserve
    used = [int(x) for x in c.page_table.flatten() if x >= 0]
    assert len(used) == len(set(used)) == 10 + 7


def test_append_updates_bounds_and_allocates_pages():
    k, v = make(L=30)
    c = PagedKVCache.from_dense(k[:, :, :9], v[:, :, :9], page_size=4, reserve=0)
    pages0 = c.num_pages()
    for t in range(9, 30):
        c.append(k[:, :, t], v[:, :, t])
    assert c.num_pages() > pages0                     # the pool grew
    kd, vd = c.to_dense()
    torch.testing.assert_close(kd, k)
    torch.testing.assert_close(vd, v)
    check_bounds(c, k)


@pytest.mark.parametrize("quant,dtype", [("int8", torch.float32), ("int4", torch.bfloat16), (None, torch.bfloat16)])
def test_bounds_cover_the_keys_attention_reads(quant, dtype):
    k, v = make(L=26, d=32, dtype=dtype)
    c = PagedKVCache.from_dense(k[:, :, :17], v[:, :, :17], page_size=4, quant=quant)
    for t in range(17, 26):
        c.append(k[:, :, t], v[:, :, t])
    held = dequantize(quantize(k, quant)) if quant else k
    torch.testing.assert_close(c.to_dense()[0], held.float())
    check_bounds(c, held)


finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.sampled_from([None, "int8", "int4"]), st.integers(0, 2**31 - 1), st.data())
def test_quest_score_bounds_every_true_score(page_size, quant, seed, data):
    """For every page before the current one: score >= Σ_group q·k for every key k in it."""
    gen = torch.Generator().manual_seed(seed)
    b, h, hkv, d = 1, 4, 2, 8
    L = data.draw(st.integers(page_size + 1, 5 * page_size + 3))
    k = torch.randn(b, hkv, L, d, generator=gen) * data.draw(st.floats(0.1, 20))
    k[0, 0, 0] = torch.tensor(data.draw(st.lists(finite, min_size=d, max_size=d)))
    c = PagedKVCache.from_dense(k[:, :, :-1], k[:, :, :-1], page_size, quant=quant)
    c.append(k[:, :, -1], k[:, :, -1])
    q = torch.randn(b, h, d, generator=gen)
    s = quest_page_scores_ref(q, c.kmin, c.kmax, c.page_table, c.seq_lens, page_size, scale=c.kscale)
    held = dequantize(quantize(k, quant)) if quant else k
    g = h // hkv
    cur = (L - 1) // page_size
    for hi in range(hkv):
        true = (q[0, hi * g:(hi + 1) * g].double() @ held[0, hi].double().T).sum(0)     # (L,)
        for p in range(cur):
            top = float(true[p * page_size:(p + 1) * page_size].max())
            assert float(s[0, hi, p]) >= top - 1e-4 * (1 + abs(top))
        assert torch.isinf(s[0, hi, cur:]).all()


def test_rewind_keeps_valid_bounds():
    k, v = make(L=12)
    c = PagedKVCache.from_dense(k[:, :, :10], v[:, :, :10], page_size=4)
    c.append(k[:, :, 10], v[:, :, 10])
    c.rewind(1)
    assert c.seq_lens.tolist() == [10, 10]
    check_bounds(c, k, exact=False)


def test_memory_accounting():
    k, v = make(b=1, hkv=2, L=64, d=32)
    c = PagedKVCache.from_dense(k, v, page_size=16, reserve=0)
    kv = 2 * 2 * 64 * 32 * 4
    meta = 2 * 4 * 2 * 32 * 4
    assert c.nbytes() == kv + meta + c.page_table.numel() * 4 + 8
    assert c.meta_bytes_per_page() == 2 * 32 * 4
    c4 = PagedKVCache.from_dense(k.bfloat16(), v.bfloat16(), page_size=16, reserve=0, quant="int4")
    assert c4.kv_bytes_per_token() == 2 * (16 + 4)


def test_bad_input_is_refused():
    k, v = make()
    c = PagedKVCache.from_dense(k, v, page_size=4)
    with pytest.raises(ValueError, match="k: expected shape"):
        c.append(torch.randn(2, 1, 16), torch.randn(2, 1, 16))
    with pytest.raises(TypeError, match="k: dtype"):
        c.append(k[:, :, 0].half(), v[:, :, 0].half())
    with pytest.raises(ValueError, match="page_size"):
        PagedKVCache.from_dense(k, v, page_size=0)
    with pytest.raises(ValueError, match="lengths"):
        PagedKVCache.from_dense(k, v, lengths=[38, 2])
    with pytest.raises(ValueError, match="group_size"):
        PagedKVCache.from_dense(k, v, quant="int4:g5")

"""Quest's int8 page bounds: outward rounding (the score stays an upper bound of every q·k),
the memory they save, the reads they cost in token-equivalents, the method-level simulation
against the cache decoder, and bad input."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsa
from sparsa.cache import PagedKVCache
from sparsa.methods import init_cache
from sparsa.methods.quest import Quest, page_meta_tokens, quest_reads
from sparsa.ops.kv_quant import dequantize, quantize
from sparsa.ops.sparse_decode import (bounds_bytes_per_page, default_bounds, dequantize_bounds, quantize_bounds,
                                      quest_page_scores_ref)

from ._util import rel_err

magnitude = st.sampled_from([1e-30, 1e-3, 1.0, 50.0, 1e4, 1e30])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), magnitude, st.integers(0, 2**31 - 1), st.booleans())
def test_quantized_bounds_cover_the_true_bounds_and_stay_tight(d, mag, seed, with_zero_page):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, d, generator=gen) * mag
    y = torch.randn(3, 5, d, generator=gen) * mag
    lo, hi = torch.minimum(x, y), torch.maximum(x, y)
    if with_zero_page:
        lo[0], hi[0] = 0.0, 0.0
    cmin, cmax, scale = quantize_bounds(lo, hi)
    assert cmin.dtype == cmax.dtype == torch.int8 and scale.dtype == torch.float32
    assert int(cmin.abs().max()) <= 127 and int(cmax.abs().max()) <= 127
    dlo, dhi = dequantize_bounds(cmin, cmax, scale)
    assert bool((dlo <= lo).all()) and bool((dhi >= hi).all())
    # at most two steps of the scale outwards
    s = scale[..., None]
    assert bool((hi - lo >= 0).all()) and bool((dhi - hi <= 2 * s).all()) and bool((lo - dlo <= 2 * s).all())
    amax = torch.maximum(lo.abs().amax(-1), hi.abs().amax(-1))
    assert bool((scale * 127 >= amax).all())


CACHES = [(torch.bfloat16, None), (torch.float16, None), (torch.float32, "int8"), (torch.bfloat16, "int4"),
          (torch.bfloat16, "int4:g16")]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(CACHES), st.integers(1, 6), st.integers(0, 2**31 - 1), magnitude, st.data())
def test_int8_bounds_score_bounds_every_true_score(cache, page_size, seed, mag, data):
    """For random q: the score of every scored page >= Σ_group q·k of every key k in it (the
    keys as the cache holds them: bf16/fp16 values, or dequantized int8/int4 codes)."""
    dtype, quant = cache
    mag = min(mag, 1e3) if dtype == torch.float16 or quant else mag      # float16 range (outliers x10)
    gen = torch.Generator().manual_seed(seed)
    b, h, hkv, d = 2, 4, 2, 32
    L = data.draw(st.integers(page_size + 1, 6 * page_size + 3))
    prompt = data.draw(st.integers(1, L - 1))
    k = torch.randn(b, hkv, L, d, generator=gen) * mag
    k = k * (1 + 9 * (torch.rand(d, generator=gen) > 0.9))               # outlier channels
    k = k.to(dtype)
    c = PagedKVCache.from_dense(k[:, :, :prompt], k[:, :, :prompt], page_size, quant=quant, reserve=1)
    assert c.bounds == "int8"
    for t in range(prompt, L):                                           # appends complete pages
        c.append(k[:, :, t], k[:, :, t], backend="reference")
    q = torch.randn(b, h, d, generator=gen)
    s = quest_page_scores_ref(q, c.kmin, c.kmax, c.page_table, c.seq_lens, page_size, scale=c.kscale)
    held = (dequantize(quantize(k.float(), quant)) if quant else k).double()
    g = h // hkv
    cur = (L - 1) // page_size
    for bi in range(b):
        for hi in range(hkv):
            qg = q[bi, hi * g:(hi + 1) * g].double()
            true = (qg @ held[bi, hi].T).sum(0)                           # (L,) group-summed q·k
            tol = 1e-5 * float((qg.abs().sum(0) * held[bi, hi].abs().amax(0)).sum()) + 1e-30
            for p in range(cur):
                top = float(true[p * page_size:(p + 1) * page_size].max())
                assert float(s[bi, hi, p]) >= top - tol, (bi, hi, p)
            assert torch.isinf(s[bi, hi, cur:]).all()


def test_memory_ratio_int4_quest_cache():
    """int4 Quest cache (int8 bounds) against the bf16 cache, head_dim 128, 16-token pages."""
    gen = torch.Generator().manual_seed(0)
    b, hkv, L, d, ps = 1, 2, 4096, 128, 16
    k = torch.randn(b, hkv, L, d, generator=gen).bfloat16()
    v = torch.randn(b, hkv, L, d, generator=gen).bfloat16()
    bf16 = PagedKVCache.from_dense(k, v, ps, bounds="native", reserve=0)
    bf16_int8 = PagedKVCache.from_dense(k, v, ps, reserve=0)
    int4 = PagedKVCache.from_dense(k, v, ps, quant="int4", reserve=0)
    assert (bf16_int8.bounds, int4.bounds) == ("int8", "int8")
    pages = b * hkv * L // ps
    table = int4.page_table.numel() * 4 + b * 8
    assert int4.nbytes() == pages * (ps * 2 * (64 + 4) + 2 * d + 4) + table
    assert bf16.nbytes() == pages * (ps * 2 * d * 2 + 2 * d * 2) + table
    assert bf16_int8.nbytes() == pages * (ps * 2 * d * 2 + 2 * d + 4) + table
    assert bf16.nbytes() / int4.nbytes() >= 3.5                       # 3.57 (3.24 with bf16 bounds)
    assert bf16_int8.nbytes() / int4.nbytes() == pytest.approx(3.47, abs=0.01)
    assert (2 * L * d * 2 * hkv) / int4.nbytes() == pytest.approx(3.36, abs=0.01)     # dense bf16 K/V


def test_defaults_and_token_equivalents():
    assert default_bounds(torch.bfloat16, False) == default_bounds(torch.float16, False) == "int8"
    assert default_bounds(torch.float32, False) == "native" and default_bounds(torch.float32, True) == "int8"
    assert bounds_bytes_per_page("int8", 128, torch.bfloat16) == 260
    assert bounds_bytes_per_page("native", 128, torch.bfloat16) == 512
    assert page_meta_tokens("int8", 128, torch.bfloat16) == 260 / 512
    assert page_meta_tokens("int8", 128, torch.bfloat16, "int4") == 260 / 136
    assert page_meta_tokens("native", 64, torch.float64) == 1.0
    m = Quest()
    assert m.meta_tokens(torch.bfloat16, 128) == 260 / 512
    assert m.meta_tokens(torch.float32, 128) == 1.0
    assert Quest(bounds="native").meta_tokens(torch.bfloat16, 128) == 1.0
    # the paper's setting at 64K: 4096 + 16 tokens and 4095 scored pages' bounds
    assert m.decode_tokens(65536, 260 / 512) == pytest.approx(4096 + 16 + 4095 * 260 / 512)
    assert quest_reads(65536, 16, 256, 0.5) == 4096 + 16 + 4095 * 0.5


@pytest.mark.parametrize("dtype,quant", [(torch.bfloat16, None), (torch.float32, "int4"), (torch.float32, None)])
def test_step_reads_count_the_bounds_bytes(dtype, quant):
    g = torch.Generator().manual_seed(5)
    b, h, hkv, L, d, ps = 2, 8, 2, 200, 64, 8
    q = torch.randn(b, h, L + 4, d, generator=g).to(dtype)
    k = torch.randn(b, hkv, L + 4, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, L + 4, d, generator=g).to(dtype)
    m = Quest(page_size=ps, budget=32)
    dec = init_cache(m, q[:, :, :L], k[:, :, :L], v[:, :, :L], quant=quant, backend="reference")
    c = dec.cache
    assert c.bounds == ("native" if dtype == torch.float32 and quant is None else "int8")
    meta_tok = c.meta_bytes_per_page() / c.kv_bytes_per_token()
    for t in range(L, L + 4):
        _, stats = dec.step(q[:, :, t], k[:, :, t], v[:, :, t])
        cur = t // ps
        toks = 4 * ps + (t + 1 - cur * ps)
        assert torch.allclose(stats.tokens_read, torch.full((b, h), toks + cur * meta_tok, dtype=torch.float64))
        per_head = toks * c.kv_bytes_per_token() + cur * c.meta_bytes_per_page()
        assert stats.bytes_read == pytest.approx(b * hkv * per_head)
        state = m.init_decode(q[:, :, :L], k[:, :, :L], v[:, :, :L], quant=quant)
        assert state.meta == pytest.approx(meta_tok)
        assert float(stats.tokens_read[0, 0]) == pytest.approx(m.decode_tokens(t + 1, state.meta))


def test_compression_target_counts_int8_bounds():
    """With half-size bounds a target is met with more selected pages, and is still met."""
    g = torch.Generator().manual_seed(6)
    q = torch.randn(1, 4, 1, 64, generator=g).bfloat16()
    k = torch.randn(1, 2, 4096, 64, generator=g).bfloat16()
    native = Quest(compression=8, bounds="native")
    int8 = Quest(compression=8)
    assert int8.init_decode(q, k, k).pages > native.init_decode(q, k, k).pages
    for m in (native, int8):
        _, st_ = m(q, k, k.clone())
        assert st_.compression == pytest.approx(8, rel=0.25)


def test_int8_bounds_decoder_equals_the_method_simulation():
    """The cache decoder (reference ops; the kernels are compared with it in test_cache_triton)
    reads what Quest's own decode_step with int8 bounds reads."""
    g = torch.Generator().manual_seed(7)
    b, h, hkv, L, n, d = 2, 8, 2, 61, 10, 32
    q = torch.randn(b, h, L + n, d, generator=g)
    k = torch.randn(b, hkv, L + n, d, generator=g) * 2
    v = torch.randn(b, hkv, L + n, d, generator=g)
    m = Quest(page_size=4, budget=12, bounds="int8")
    state = m.init_decode(q[:, :, :L], k[:, :, :L], v[:, :, :L])
    dec = init_cache(m, q[:, :, :L], k[:, :, :L], v[:, :, :L], backend="reference")
    assert dec.cache.bounds == "int8"
    for t in range(L, L + n):
        ref, state, read = m.decode_step(q[:, :, t], k[:, :, :t + 1], v[:, :, :t + 1], state)
        out, stats = dec.step(q[:, :, t], k[:, :, t], v[:, :, t])
        assert rel_err(out, ref) <= 1e-5
        torch.testing.assert_close(stats.tokens_read, read, rtol=0, atol=1e-9)


def test_native_override_and_bad_input():
    g = torch.Generator().manual_seed(8)
    q = torch.randn(1, 4, 40, 32, generator=g).bfloat16()
    k = torch.randn(1, 2, 40, 32, generator=g).bfloat16()
    dec = init_cache(Quest(page_size=4, budget=8), q, k, k, bounds="native")
    assert dec.cache.bounds == "native" and dec.cache.kscale is None and dec.cache.kbounds.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="bounds"):
        Quest(bounds="int4")
    with pytest.raises(ValueError, match="bounds"):
        PagedKVCache.from_dense(k, k, 4, bounds="fp8")
    with pytest.raises(ValueError, match="bounds"):
        PagedKVCache.from_dense(k.double(), k.double(), 4, bounds="int8")
    with pytest.raises(ValueError, match="bounds"):
        init_cache(sparsa.get_method("h2o", heavy=4, recent=4), q, k, k, bounds="int8")
    c = PagedKVCache.from_dense(k, k, 4)
    with pytest.raises(ValueError, match="scale"):
        quest_page_scores_ref(q[:, :, 0], c.kmin, c.kmax, c.page_table, c.seq_lens, 4)
    assert math.isclose(c.meta_tokens_per_page(), (2 * 32 + 4) / (2 * 32 * 2))

"""Decode methods on the compact caches (reference path): same outputs and reads as the methods'
own decode_step, kept tokens equal to independent loop implementations, dense at compression 1,
memory freed, ragged batches, bad input."""
from __future__ import annotations

import math

import pytest
import torch

import sparsa
from sparsa.cache import dense_cache_bytes
from sparsa.methods import init_cache

from ._decode_loops import H2OLoopDecoder, ada_kept, quest_read_sets, rows_attention, snapkv_kept, snapkv_scores
from ._util import causal_mask, explicit_attention, rel_err

METHODS = ["h2o", "snapkv", "ada_snapkv", "streaming", "quest"]


def inputs(b=2, h=8, hkv=2, L=60, d=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, L, d, generator=g, dtype=dtype), torch.randn(b, hkv, L, d, generator=g, dtype=dtype),
            torch.randn(b, hkv, L, d, generator=g, dtype=dtype))


def kept_sets(dec) -> list[list[set[int]]]:
    pos = dec.cache.positions()
    return [[{int(p) for p in pos[b, h] if p >= 0} for h in range(pos.shape[1])] for b in range(pos.shape[0])]


def state_sets(positions: torch.Tensor) -> list[list[set[int]]]:
    return [[{int(p) for p in positions[b, h] if p >= 0} for h in range(positions.shape[1])]
            for b in range(positions.shape[0])]


@pytest.mark.parametrize("method", METHODS + ["dense"])
def test_compression_one_equals_dense_decoding(method):
    q, k, v = inputs()
    p, n = 41, 6
    ref = explicit_attention(q, k, v, causal_mask(q.shape[2], k.shape[2]))
    m = None if method == "dense" else sparsa.get_method(method, compression=1)
    dec = init_cache(m, q[:, :, :p], k[:, :, :p], v[:, :, :p], backend="reference")
    for t in range(p, p + n):
        out, stats = dec.step(q[:, :, t], k[:, :, t], v[:, :, t])
        assert rel_err(out, ref[:, :, t]) <= 1e-10
        assert stats.compression == pytest.approx(1.0)
        assert torch.equal(stats.tokens_read, torch.full((2, 8), float(t + 1), dtype=torch.float64))


@pytest.mark.parametrize("m", [
    sparsa.get_method("h2o", heavy=7, recent=4),
    sparsa.get_method("h2o", compression=5),
    sparsa.get_method("streaming", sink=3, window=9),
    sparsa.get_method("snapkv", window=6, kernel=3, capacity=10),
    sparsa.get_method("ada_snapkv", window=6, kernel=3, capacity=10, floor_ratio=0.3),
    sparsa.get_method("quest", page_size=4, budget=12),
    sparsa.get_method("quest", compression=4),
], ids=lambda m: f"{m.name}")
def test_same_outputs_reads_and_kept_tokens_as_decode_step(m):
    q, k, v = inputs(seed=1)
    p, n = 45, 8
    st = m.init_decode(q[:, :, :p], k[:, :, :p], v[:, :, :p])
    dec = init_cache(m, q[:, :, :p], k[:, :, :p], v[:, :, :p], backend="reference")
    for t in range(p, p + n):
        ref, st, read = m.decode_step(q[:, :, t], k[:, :, :t + 1], v[:, :, :t + 1], st)
        out, stats = dec.step(q[:, :, t], k[:, :, t], v[:, :, t])
        assert rel_err(out, ref) <= 1e-10
        assert torch.equal(stats.tokens_read, read)
        if hasattr(st, "positions"):
            assert kept_sets(dec) == state_sets(st.positions)
        assert stats.compression == pytest.approx(float(t + 1) * read.numel() / float(read.sum()))


def test_h2o_keeps_exactly_the_loop_decoders_tokens():
    q, k, v = inputs(b=1, h=4, hkv=2, L=50, d=8, seed=2)
    p, heavy, recent = 30, 6, 4
    scale = 1 / math.sqrt(8)
    loop = H2OLoopDecoder(q[:, :, :p], k[:, :, :p], heavy, recent, scale)
    dec = init_cache(sparsa.get_method("h2o", heavy=heavy, recent=recent), q[:, :, :p], k[:, :, :p], v[:, :, :p],
                     backend="reference")
    assert kept_sets(dec) == [[set(c) for c in loop.cache[0]]]
    for t in range(p, 50):
        ref, reads = loop.step(q[:, :, t], k[:, :, :t + 1], v[:, :, :t + 1])
        out, stats = dec.step(q[:, :, t], k[:, :, t], v[:, :, t])
        assert rel_err(out, ref) <= 1e-10
        assert stats.tokens_read[0, ::2].tolist() == reads[0]
        assert kept_sets(dec) == [[set(c) for c in loop.cache[0]]]
        assert dec.cache.length.max() <= heavy + recent - 1


def test_streaming_keeps_sinks_and_window():
    q, k, v = inputs(b=1, L=40, seed=3)
    dec = init_cache(sparsa.get_method("streaming", sink=2, window=7), q[:, :, :20], k[:, :, :20], v[:, :, :20],
                     backend="reference")
    for t in range(20, 40):
        out, _ = dec.step(q[:, :, t], k[:, :, t], v[:, :, t])
        read = sorted({0, 1} | set(range(t - 6, t + 1)))
        g = 4
        for h in range(8):
            kh, vh = k[:, h // g:h // g + 1, read], v[:, h // g:h // g + 1, read]
            ref = explicit_attention(q[:, h:h + 1, t:t + 1], kh, vh, torch.ones(1, 1, 1, len(read), dtype=torch.bool))
            assert rel_err(out[:, h], ref[:, 0, 0]) <= 1e-10
        assert kept_sets(dec) == [[{0, 1} | set(range(t - 5, t + 1))] * 2]


@pytest.mark.parametrize("name", ["snapkv", "ada_snapkv"])
def test_prompt_compressors_keep_the_loop_selection(name):
    q, k, v = inputs(b=2, h=4, hkv=2, L=48, d=8, seed=4)
    window, kernel, cap = 6, 3, 9
    kw = {"floor_ratio": 0.2} if name == "ada_snapkv" else {}
    m = sparsa.get_method(name, window=window, kernel=kernel, capacity=cap, **kw)
    dec = init_cache(m, q, k, v, backend="reference")
    scores = snapkv_scores(q, k, window, kernel, 1 / math.sqrt(8))
    sel = snapkv_kept(scores, cap) if name == "snapkv" else ada_kept(scores, cap, int(0.2 * cap))
    expect = [[set(s) | set(range(48 - window, 48)) for s in per_b] for per_b in sel]
    assert kept_sets(dec) == expect
    # memory per head follows each head's own count (Ada: heads differ)
    counts = dec.cache.length
    assert int(counts.sum()) == sum(len(s) for per_b in expect for s in per_b)
    out, _ = dec.step(q[:, :, -1], k[:, :, -1], v[:, :, -1])      # generated tokens are appended, never evicted
    assert kept_sets(dec) == [[s | {48} for s in per_b] for per_b in expect]


def test_quest_reads_the_loop_pages():
    q, k, v = inputs(b=1, h=4, hkv=2, L=70, d=8, seed=5)
    ps, budget = 4, 12
    dec = init_cache(sparsa.get_method("quest", page_size=ps, budget=budget), q[:, :, :50], k[:, :, :50],
                     v[:, :, :50], backend="reference")
    for t in range(50, 70):
        out, stats = dec.step(q[:, :, t], k[:, :, t], v[:, :, t])
        sets = quest_read_sets(q[:, :, t:t + 1], k[:, :, :t + 1], ps, budget // ps)
        ref = rows_attention(q[:, :, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1], sets, 1 / math.sqrt(8))
        assert rel_err(out, ref[:, :, 0]) <= 1e-10
        cur = t // ps
        assert stats.tokens_read[0, 0] == budget + (t - cur * ps + 1) + cur


@pytest.mark.parametrize("params", [{"name": "h2o", "heavy": 100, "recent": 100}, {"name": "snapkv", "capacity": 500},
                                    {"name": "streaming", "sink": 4, "window": 400},
                                    {"name": "quest", "budget": 4096}, {"name": "ada_snapkv", "capacity": 999}])
def test_budget_beyond_the_context_is_dense(params):
    q, k, v = inputs(L=40)
    kw = dict(params)
    m = sparsa.get_method(kw.pop("name"), **kw)
    dec = init_cache(m, q[:, :, :30], k[:, :, :30], v[:, :, :30], backend="reference")
    ref = explicit_attention(q, k, v, causal_mask(40, 40))
    for t in range(30, 40):
        out, stats = dec.step(q[:, :, t], k[:, :, t], v[:, :, t])
        assert rel_err(out, ref[:, :, t]) <= 1e-10
        assert stats.compression == pytest.approx(1.0)


@pytest.mark.parametrize("method", METHODS)
def test_ragged_batch_equals_each_sequence_alone(method):
    q, k, v = inputs(b=2, L=50, seed=6)
    lengths = [50, 33]
    m = sparsa.get_method(method, compression=3) if method != "streaming" else sparsa.get_method(method, window=9)
    # right-padded batch: sequence 1's real tokens are its first 33
    dec = init_cache(m, q[:, :, :50], k[:, :, :50], v[:, :, :50], lengths=lengths, backend="reference")
    alone = [init_cache(m, q[i:i + 1, :, :n], k[i:i + 1, :, :n], v[i:i + 1, :, :n], backend="reference")
             for i, n in enumerate(lengths)]
    g = torch.Generator().manual_seed(9)
    for _ in range(5):
        qt = torch.randn(2, 8, 16, generator=g, dtype=torch.float64)
        kt = torch.randn(2, 2, 16, generator=g, dtype=torch.float64)
        vt = torch.randn(2, 2, 16, generator=g, dtype=torch.float64)
        out, stats = dec.step(qt, kt, vt)
        for i in range(2):
            o, s = alone[i].step(qt[i:i + 1], kt[i:i + 1], vt[i:i + 1])
            assert rel_err(out[i:i + 1], o) <= 1e-10
            assert torch.equal(stats.tokens_read[i:i + 1], s.tokens_read)
    assert dec.seq_lens.tolist() == [55, 38]


def test_memory_freed_at_compression_ten():
    b, h, hkv, L, d = 1, 8, 2, 3000, 128
    g = torch.Generator().manual_seed(7)
    q = torch.randn(b, h, 64, d, generator=g).bfloat16()
    k = torch.randn(b, hkv, L, d, generator=g).bfloat16()
    dense = dense_cache_bytes(b, hkv, L, d, torch.bfloat16)
    for name in ["h2o", "snapkv", "ada_snapkv", "streaming"]:
        dec = init_cache(sparsa.get_method(name, compression=10), q, k, k, backend="reference")
        assert dec.nbytes() <= dense / 8, name
        dec4 = init_cache(sparsa.get_method(name, compression=10), q, k, k, quant="int4", backend="reference")
        assert dec.nbytes() / dec4.nbytes() >= 3.3, name       # positions and scores are not quantized
    full = init_cache(None, q, k, k, backend="reference").nbytes()
    full4 = init_cache(None, q, k, k, quant="int4", backend="reference").nbytes()
    assert full / full4 >= 3.5


def test_bad_input_is_refused():
    q, k, v = inputs(L=20)
    dec = init_cache(sparsa.get_method("h2o", heavy=4, recent=4), q, k, v, backend="reference")
    with pytest.raises(ValueError, match="q: expected shape"):
        dec.step(q[:, :4, 0], k[:, :, 0], v[:, :, 0])
    with pytest.raises(ValueError, match="k: expected shape"):
        dec.step(q[:, :, 0], k[:, :1, 0], v[:, :1, 0])
    with pytest.raises(TypeError, match="dtype"):
        dec.step(q[:, :, 0].float(), k[:, :, 0].float(), v[:, :, 0].float())
    with pytest.raises(ValueError, match="rewind"):
        dec.rewind()
    with pytest.raises(ValueError, match="page_size"):
        init_cache(sparsa.get_method("quest", page_size=4, budget=8), q, k, v, page_size=8)
    with pytest.raises(ValueError, match="page_size"):
        init_cache(sparsa.get_method("snapkv"), q, k, v, page_size=8)
    with pytest.raises(ValueError, match="q: with per-sequence lengths"):
        init_cache("h2o", q[:, :, -4:], k, v, lengths=[20, 10])
    with pytest.raises(TypeError, match="method"):
        init_cache(sparsa.get_method("vertical_slash"), q, k, v)
    with pytest.raises(ValueError, match="quant"):
        init_cache("snapkv", q, k, v, quant="int3")
    with pytest.raises(ValueError, match="k: head_dim"):
        init_cache("snapkv", q, k[..., :8], v[..., :8])

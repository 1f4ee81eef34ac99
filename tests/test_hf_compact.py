"""Decode methods applied through sparsa.apply decode on their compact stores: the cache holds
what the method keeps (tokens per head, bytes), dense at compression 1, padded batches, chunked
prompts, and the errors of what a compact store cannot do."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import sparsa  # noqa: E402
from sparsa.integrations.hf import SparsaCache, chunked_prefill, compat  # noqa: E402

from .test_hf_models import _quiet_transformers, greedy, prompt, tiny_model  # noqa: E402,F401

COMPACT = ("h2o", "snapkv", "ada_snapkv", "streaming", "quest")
STORAGE = {"quest": "paged"}
KV_HEADS, HEAD_DIM = 2, 16          # the tiny model's


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return tiny_model("llama")


def run(model: torch.nn.Module, handle, ids: torch.Tensor, mask: torch.Tensor | None = None, new: int = 5):
    """Greedy generation with an explicit cache; returns (output, cache)."""
    cache = handle.new_cache()
    out = greedy(model, ids, mask, new=new, **{compat.cache_kwarg_name(model): cache})
    return out, cache


def kv_bytes(tokens: int) -> int:
    return 2 * tokens * HEAD_DIM * 4            # keys + values, fp32


@pytest.mark.parametrize("name", COMPACT)
def test_compression_1_is_dense_and_compact(name: str, llama: torch.nn.Module) -> None:
    ids = prompt(2, 72)
    new = 6
    ref = greedy(llama, ids, new=new)
    with sparsa.apply(llama, decode=sparsa.get_method(name, compression=1.0)) as h:
        out, cache = run(llama, h, ids, new=new)
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.scores, ref.scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    held = 72 + new - 1
    assert cache.get_seq_length() == held
    for layer in (0, 1):
        assert cache.storage(layer) == STORAGE.get(name, "varlen")
        assert compat.layer_kv(cache, layer)[0].numel() == 0           # the full keys and values are freed
        assert torch.equal(cache.layer_tokens(layer), torch.full((2, KV_HEADS), held))
    assert h.stats("decode").compression == pytest.approx(1.0)


def expected_tokens(name: str, prompt_len: int, new: int) -> int | None:
    """Tokens every KV head holds after ``new - 1`` decode steps at compression 10 (None: per-head)."""
    budget = round(prompt_len / 10)
    if name in ("h2o", "streaming"):
        return budget - 1                       # the next token fills the budget; one eviction per step
    if name == "snapkv":
        return budget + new - 1                 # kept prompt tokens, then every generated token
    if name == "quest":
        return prompt_len + new - 1             # nothing is evicted
    return None


@pytest.mark.parametrize("name", COMPACT)
def test_compression_10_holds_what_the_method_keeps(name: str, llama: torch.nn.Module) -> None:
    length, new = 600, 5
    ids = prompt(2, length, seed=2)
    with sparsa.apply(llama, decode=sparsa.get_method(name, compression=10.0), layers={0: None}) as h:
        out, cache = run(llama, h, ids, new=new)
        read = h.layer_stats[(1, "decode")]
    assert all(torch.isfinite(s).all() for s in out.scores)
    held = length + new - 1
    # layer 0 stays a dense DynamicCache layer
    assert cache.storage(0) == "dense"
    assert torch.equal(cache.layer_tokens(0), torch.full((2, KV_HEADS), held))
    assert cache.layer_nbytes(0) == 2 * kv_bytes(held) * KV_HEADS
    tokens = cache.layer_tokens(1)
    expect = expected_tokens(name, length, new)
    if expect is not None:
        assert torch.equal(tokens, torch.full((2, KV_HEADS), expect))
    else:                                       # Ada-SnapKV: the layer's budget, split unevenly
        assert torch.equal(tokens.sum(1), torch.full((2,), KV_HEADS * (round(length / 10) + new - 1)))
        assert len(set(tokens.flatten().tolist())) > 1
    nbytes = cache.layer_nbytes(1)
    assert nbytes >= int(tokens.sum()) * kv_bytes(1)
    assert nbytes == sum(d.nbytes() for d in cache.sparsa_states[1].decoders())
    dense_bytes = 2 * kv_bytes(held) * KV_HEADS
    if name == "quest":
        assert nbytes >= dense_bytes and read.compression > 5.0      # holds everything, reads ~1/10
    else:
        assert nbytes <= dense_bytes / 5 and read.compression > 5.0
    assert cache.nbytes() == cache.layer_nbytes(0) + nbytes


@pytest.mark.parametrize("name", COMPACT)
def test_left_padded_batch_plans_each_row(name: str, llama: torch.nn.Module) -> None:
    rows = [prompt(1, 600, seed=5)[0], prompt(1, 400, seed=6)[0]]
    ids = torch.zeros(2, 600, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, 600 - len(r):] = r
        mask[i, 600 - len(r):] = 1
    new = 4
    method = sparsa.get_method(name, compression=10.0)
    with sparsa.apply(llama, decode=method) as h:
        batch, cache = run(llama, h, ids, mask, new=new)
        assert cache.sparsa_states[0].decoder is not None          # one batched store, rows packed
        tokens = cache.layer_tokens(0)
        for i, r in enumerate(rows):
            alone, alone_cache = run(llama, h, r[None], new=new)
            assert torch.equal(batch.sequences[i, -new:], alone.sequences[0, -new:])
            for step in range(new):
                torch.testing.assert_close(batch.scores[step][i], alone.scores[step][0], atol=1e-4, rtol=0)
            assert torch.equal(tokens[i], alone_cache.layer_tokens(0)[0])
    if name == "snapkv":
        assert tokens[:, 0].tolist() == [60 + new - 1, 40 + new - 1]   # each row's own budget


def test_chunked_prompt_builds_the_store_at_the_first_step(llama: torch.nn.Module) -> None:
    ids = prompt(1, 90, seed=7)
    snap = sparsa.get_method("snapkv", window=8, kernel=3, capacity=16)
    key = compat.cache_kwarg_name(llama)
    with sparsa.apply(llama, decode=snap), torch.no_grad():
        res = chunked_prefill(llama, ids, 32)
        cache = res.cache
        assert cache.storage(0) == "pending" and compat.layer_kv(cache, 0)[0].shape[2] == 90
        nxt = res.logits.argmax(-1, keepdim=True)
        chunked = llama(nxt, **{key: cache}).logits[:, -1]
        assert cache.storage(0) == "varlen" and compat.layer_kv(cache, 0)[0].numel() == 0
        assert cache.layer_tokens(0).tolist() == [[8 + 16 + 1] * KV_HEADS]
        one = llama(ids, **{key: h_cache(llama)})
        single = llama(nxt, **{key: compat.output_cache(one)}).logits[:, -1]
    torch.testing.assert_close(res.logits, one.logits[:, -1], atol=1e-4, rtol=0)
    torch.testing.assert_close(chunked, single, atol=1e-4, rtol=0)


@pytest.mark.skipif(not compat.generate_supports_prefill_chunk(), reason="generate() has no prefill chunking")
def test_generate_with_prefill_chunks(llama: torch.nn.Module) -> None:
    """generate(prefill_chunk_size=...) keeps the full cache until decoding starts; SnapKV's window
    fits in the last chunk, so the generation is the one-call prompt's."""
    ids = prompt(2, 75, seed=8)
    snap = sparsa.get_method("snapkv", window=8, kernel=3, capacity=16)
    with sparsa.apply(llama, decode=snap):
        ref = greedy(llama, ids, new=4)
    with sparsa.apply(llama, decode=snap, prefill_chunk=16):
        out = greedy(llama, ids, new=4)
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.scores, ref.scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def h_cache(model: torch.nn.Module) -> SparsaCache:
    return SparsaCache(compat.text_config(model))


def test_padded_chunked_prompt_decodes_each_row(llama: torch.nn.Module) -> None:
    """A padded prompt run in chunks gets one store per row; each row decodes as it would alone."""
    rows = [prompt(1, 64, seed=11)[0], prompt(1, 44, seed=12)[0]]
    ids = torch.zeros(2, 64, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, 64 - len(r):] = r
        mask[i, 64 - len(r):] = 1
    key = compat.cache_kwarg_name(llama)
    quest = sparsa.get_method("quest", page_size=8, budget=16)
    with sparsa.apply(llama, decode=quest), torch.no_grad():
        res = chunked_prefill(llama, ids, 20, attention_mask=mask)
        nxt = res.logits.argmax(-1, keepdim=True)
        full_mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
        out = llama(nxt, attention_mask=full_mask, position_ids=mask.sum(-1, keepdim=True),
                    **{key: res.cache}).logits[:, -1]
        assert res.cache.sparsa_states[0].row_decoders is not None
        for i, r in enumerate(rows):
            alone = chunked_prefill(llama, r[None], 20)
            step = llama(nxt[i:i + 1], **{key: alone.cache}).logits[:, -1]
            torch.testing.assert_close(out[i], step[0], atol=1e-4, rtol=0)


def test_prefill_cache_from_given_keys_and_values(llama: torch.nn.Module) -> None:
    """Quest at compression 1 on a cache filled from random K/V decodes like the dense model."""
    g = torch.Generator().manual_seed(0)
    b, length = 2, 50
    kv = [(torch.randn(b, KV_HEADS, length, HEAD_DIM, generator=g), torch.randn(b, KV_HEADS, length, HEAD_DIM,
                                                                                generator=g)) for _ in range(2)]
    q = torch.randn(b, 4, 8, HEAD_DIM, generator=g)
    nxt = prompt(b, 1, seed=9)
    key = compat.cache_kwarg_name(llama)
    dense = compat.dynamic_cache_class()()
    for layer, (k, v) in enumerate(kv):
        dense.update(k, v, layer)
    with torch.no_grad():
        ref = llama(nxt, **{key: dense}).logits
    with sparsa.apply(llama, decode=sparsa.get_method("quest", compression=1.0)) as h, torch.no_grad():
        cache = h.new_cache()
        for layer, (k, v) in enumerate(kv):
            h.prefill_cache(cache, layer, k, v, q)
        assert cache.storage(1) == "paged" and cache.get_seq_length() == length
        got = llama(nxt, **{key: cache}).logits
        with pytest.raises(ValueError, match="already filled"):
            h.prefill_cache(cache, 0, *kv[0], q)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    with sparsa.apply(llama, decode="snapkv") as h:
        with pytest.raises(ValueError, match="queries"):
            h.prefill_cache(h.new_cache(), 0, *kv[0])


def test_what_a_compact_store_refuses(llama: torch.nn.Module) -> None:
    ids = prompt(2, 40, seed=3)
    key = compat.cache_kwarg_name(llama)
    with sparsa.apply(llama, decode=sparsa.get_method("h2o", heavy=8, recent=8)), torch.no_grad():
        out = llama(ids)
        cache = compat.output_cache(out)
        assert cache.storage(0) == "varlen"
        with pytest.raises(RuntimeError, match="already holds only"):
            llama(ids[:, :3], **{key: cache})
        pad_step = torch.ones(2, 41, dtype=torch.long)
        pad_step[0, -1] = 0
        with pytest.raises(ValueError, match="padding"):
            llama(ids[:, :1], attention_mask=pad_step, **{key: cache})
    with sparsa.apply(llama, decode="quest"):
        out = greedy(llama, ids, new=3)
        cache = compat.output_cache(out)
    if compat.TRANSFORMERS_VERSION.major >= 5:
        cache.crop(0)                                       # removes nothing
    with pytest.raises(NotImplementedError, match="crop"):
        cache.crop(-1)

"""Chunked prefill: each chunk attends (sparsely) to everything cached before it."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import sparsa  # noqa: E402
from sparsa.integrations.hf import SparsaCache, chunked_prefill, compat  # noqa: E402

from .test_hf_models import _quiet_transformers, greedy, logits, prompt, tiny_model  # noqa: E402,F401


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return tiny_model("llama")


def test_chunked_prefill_dense_equals_one_pass(llama: torch.nn.Module) -> None:
    ids = prompt(2, 70)
    full = logits(llama, ids)[:, -1]
    for chunk in (7, 23, 100):
        res = chunked_prefill(llama, ids, chunk)
        assert isinstance(res.cache, SparsaCache) and res.cache.get_seq_length() == 70
        torch.testing.assert_close(res.logits, full, atol=1e-4, rtol=0)


def test_chunked_sliding_window_equals_one_pass(llama: torch.nn.Module) -> None:
    """A position-based pattern gives the same result whatever the chunking."""
    ids = prompt(1, 90)
    with sparsa.apply(llama, sparsa.get_method("sliding_window", window=16)) as h:
        full = logits(llama, ids)[:, -1]
        for chunk in (16, 25):
            res = chunked_prefill(llama, ids, chunk)
            torch.testing.assert_close(res.logits, full, atol=1e-4, rtol=0)
            assert h.layer_stats[(0, "prefill")].compression > 1.0


def test_chunked_prefill_then_generate(llama: torch.nn.Module) -> None:
    """Prefill all but the last prompt token in chunks, then generate() continues from the cache."""
    ids = prompt(1, 80)
    quest = sparsa.get_method("quest", page_size=8, budget=16)
    window = sparsa.get_method("sliding_window", window=16)
    with sparsa.apply(llama, window, decode=quest) as h:
        ref = greedy(llama, ids, new=5).sequences
        res = chunked_prefill(llama, ids[:, :-1], 24)
        assert set(res.cache.sparsa_states) == {0, 1}
        out = llama.generate(ids, max_new_tokens=5, do_sample=False, **{compat.cache_kwarg_name(llama): res.cache})
        assert h.stats("decode").compression > 1.5
    assert torch.equal(out, ref)


@pytest.mark.skipif(not compat.generate_supports_prefill_chunk(), reason="generate() has no prefill chunking")
def test_apply_prefill_chunk_in_generate(llama: torch.nn.Module) -> None:
    # Some versions run the last prompt token as the first one-token step, which takes the
    # decode rule; a window rule in both phases reads the same keys either way.
    ids = prompt(2, 75)
    window = sparsa.get_method("sliding_window", window=16)
    with sparsa.apply(llama, window, decode=window):
        ref = greedy(llama, ids, new=4)
    with sparsa.apply(llama, window, decode=window, prefill_chunk=16) as h:
        assert h.prefill_chunk == 16
        out = greedy(llama, ids, new=4)
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.scores, ref.scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_chunked_prefill_sparse_methods_and_padding(llama: torch.nn.Module) -> None:
    """Sparse prefill methods accept chunks (q_len < kv_len); a padded batch matches its rows alone."""
    # the second row's padding is exactly one chunk, so both rows see the same chunk boundaries alone
    rows = [prompt(1, 64, seed=11)[0], prompt(1, 44, seed=12)[0]]
    ids = torch.zeros(2, 64, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, 64 - len(r):] = r
        mask[i, 64 - len(r):] = 1
    methods = [sparsa.get_method("vertical_slash", last_q=16, init_tokens=4, local_diagonals=8, vertical=16, slash=8),
               sparsa.get_method("block_sparse", block_size=8, top_k=3)]
    for method in methods:
        with sparsa.apply(llama, method) as h:
            batch = chunked_prefill(llama, ids, 20, attention_mask=mask)
            assert torch.isfinite(batch.logits).all()
            assert h.stats("prefill").compression > 1.0
            for i, r in enumerate(rows):
                alone = chunked_prefill(llama, r[None], 20)
                torch.testing.assert_close(batch.logits[i], alone.logits[0], atol=1e-4, rtol=0)


def test_chunked_prefill_bad_input(llama: torch.nn.Module) -> None:
    ids = prompt(1, 10)
    with pytest.raises(ValueError, match="chunk"):
        chunked_prefill(llama, ids, 0)
    with pytest.raises(ValueError, match="input_ids"):
        chunked_prefill(llama, ids[0], 4)
    with pytest.raises(ValueError, match="attention_mask"):
        chunked_prefill(llama, ids, 4, attention_mask=torch.ones(1, 9))

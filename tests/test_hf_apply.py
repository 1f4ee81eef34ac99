"""sparsa.apply with every registered method: dense equivalence, sparse runs, padding, undo, errors."""
from __future__ import annotations

from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import sparsa  # noqa: E402
from sparsa.integrations.hf import AUTO, SparsaCache, compat  # noqa: E402
from sparsa.methods.base import DecodeMethod  # noqa: E402

from .test_hf_models import _quiet_transformers, greedy, logits, prompt, tiny_model  # noqa: E402,F401

#: Methods whose compression-1 form is not dense attention (NSA mixes three gated branches).
NOT_DENSE_AT_1 = {"nsa"}

def _check_generation(name: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    assert torch.equal(got, expected)


#: Explicit small budgets so that sparsity really happens on 40-200-token prompts.
SMALL_BUDGETS: dict[str, dict[str, Any]] = {
    "sliding_window": dict(window=16),
    "bigbird": dict(block_size=8, window_blocks=1, global_blocks=1, random_blocks=1),
    "streaming": dict(sink=4, window=16),
    "vertical_slash": dict(last_q=16, init_tokens=4, local_diagonals=8, vertical=16, slash=8),
    "block_sparse": dict(block_size=8, top_k=3),
    "flexprefill": dict(compression=4.0, last_q=16, init_tokens=4, local_diagonals=4),
    "h2o": dict(heavy=8, recent=8),
    "snapkv": dict(window=8, kernel=3, capacity=16),
    "ada_snapkv": dict(window=8, kernel=3, capacity=16),
    "quest": dict(page_size=8, budget=16),
    "nsa": dict(block=8, stride=4, sel_block=8, n_select=4, window=16),
}


def sparse_methods() -> list[str]:
    return [n for n in sparsa.list_methods() if n != "dense"]


def small(name: str) -> sparsa.Method:
    """``name`` with small budgets (compression 10 when the method has no entry above)."""
    params = SMALL_BUDGETS.get(name, {"compression": 10.0})
    return sparsa.get_method(name, **params)


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return tiny_model("llama")


@pytest.fixture(scope="module")
def llama_ref(llama: torch.nn.Module) -> dict[str, torch.Tensor]:
    ids = prompt(2, 72)
    return {"ids": ids, "logits": logits(llama, ids), "gen": greedy(llama, ids).sequences}


# ----------------------------------------------------------------------------------- compression 1

@pytest.mark.parametrize("name", [m for m in sparsa.list_methods() if m not in NOT_DENSE_AT_1])
def test_compression_1_equals_dense(name: str, llama: torch.nn.Module, llama_ref: dict) -> None:
    method = sparsa.get_method(name, compression=1.0)
    with sparsa.apply(llama, method) as handle:
        got = logits(llama, llama_ref["ids"])
        gen = greedy(llama, llama_ref["ids"])
    torch.testing.assert_close(got, llama_ref["logits"], atol=1e-4, rtol=0)
    _check_generation(name, gen.sequences, llama_ref["gen"])
    # the method ran: prefill for prefill methods, its decode rule for decode methods
    ran = handle.plans[0].prefill or handle.plans[0].decode
    assert name == "dense" or ran is method


@pytest.mark.parametrize("name", [n for n in sparse_methods() if n not in NOT_DENSE_AT_1])
def test_compression_1_as_decode_rule(name: str, llama: torch.nn.Module, llama_ref: dict) -> None:
    """Any method given as ``decode=`` (stateful or not) decodes densely at compression 1."""
    method = sparsa.get_method(name, compression=1.0)
    with sparsa.apply(llama, None, decode=method) as handle:
        gen = greedy(llama, llama_ref["ids"])
    assert handle.plans[1].decode is method and handle.plans[1].prefill is None
    _check_generation(name, gen.sequences, llama_ref["gen"])


# ----------------------------------------------------------------------------------- sparse budgets

@pytest.mark.parametrize("name", sparse_methods())
def test_small_budget_generation_runs(name: str, llama: torch.nn.Module) -> None:
    ids = prompt(2, 120, seed=3)
    mask = torch.ones_like(ids)
    mask[1, :20] = 0
    method = small(name)
    with sparsa.apply(llama, method) as handle:
        out = greedy(llama, ids, mask, new=6)
    assert out.sequences.shape == (2, 126)
    assert all(torch.isfinite(s).all() for s in out.scores)
    phase = "decode" if isinstance(method, DecodeMethod) else "prefill"
    assert handle.stats(phase).compression > 1.5, handle.stats(phase)
    if name in ("h2o", "snapkv", "ada_snapkv", "quest", "streaming"):
        # their decode steps read a bounded budget, so decode compression grows with the prompt
        assert handle.stats("decode").compression > 2.0


def test_compression_10_generation_runs(llama: torch.nn.Module) -> None:
    ids = prompt(1, 160, seed=4)
    for name in sparse_methods():
        with sparsa.apply(llama, sparsa.get_method(name, compression=10.0)):
            out = greedy(llama, ids, new=3)
        assert all(torch.isfinite(s).all() for s in out.scores), name


# ----------------------------------------------------------------------------------- padding

def _padded_batch() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    rows = [prompt(1, 70, seed=5)[0], prompt(1, 52, seed=6)[0]]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask, rows


@pytest.mark.parametrize("name", sparse_methods())
def test_left_padding_matches_each_row_alone(name: str, llama: torch.nn.Module) -> None:
    ids, mask, rows = _padded_batch()
    new = 5
    with sparsa.apply(llama, small(name)):
        batch_logits = logits(llama, ids, mask)
        batch = greedy(llama, ids, mask, new=new)
        for i, row in enumerate(rows):
            alone_logits = logits(llama, row[None])
            alone = greedy(llama, row[None], new=new)
            n = len(row)
            torch.testing.assert_close(batch_logits[i, -n:], alone_logits[0], atol=1e-4, rtol=0)
            assert torch.equal(batch.sequences[i, -new:], alone.sequences[0, -new:]), name
            for step in range(new):
                torch.testing.assert_close(batch.scores[step][i], alone.scores[step][0], atol=1e-4, rtol=0)


def test_right_padding_forward(llama: torch.nn.Module) -> None:
    """Training-style forward (no cache) of a right-padded batch: real positions match each row alone."""
    rows = [prompt(1, 60, seed=7)[0], prompt(1, 41, seed=8)[0]]
    ids = torch.zeros(2, 60, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    for name in ("sliding_window", "vertical_slash", "block_sparse"):
        with sparsa.apply(llama, small(name)):
            got = logits(llama, ids, mask)
            for i, r in enumerate(rows):
                torch.testing.assert_close(got[i, :len(r)], logits(llama, r[None])[0], atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------- plans, undo

def test_plans_and_layer_overrides(llama: torch.nn.Module) -> None:
    quest = sparsa.get_method("quest", page_size=8, budget=16)
    with sparsa.apply(llama, "vertical_slash", decode=quest, layers={0: None}) as h:
        assert h.plans[0].prefill is None and h.plans[0].decode is None
        assert h.plans[1].prefill.name == "vertical_slash" and h.plans[1].decode is quest
        assert "layer 0: prefill=dense, decode=dense" in h.describe()
        greedy(llama, prompt(1, 100), new=3)
        assert h.layer_stats[(0, "decode")].compression == 1.0
        assert h.layer_stats[(1, "decode")].compression > 1.5
    with sparsa.apply(llama, "h2o", layers={-1: ("streaming", None), 0: {"decode": "quest"}}) as h:
        assert h.plans[0].prefill is None and h.plans[0].decode.name == "quest"
        assert h.plans[1].prefill.name == "streaming" and h.plans[1].decode is None
    # decode follows prefill: decode-only methods prefill densely, prefill-only methods decode densely
    with sparsa.apply(llama, "snapkv") as h:
        assert h.plans[0].prefill is None and h.plans[0].decode.name == "snapkv"
    with sparsa.apply(llama, "vertical_slash") as h:
        assert h.plans[0].prefill.name == "vertical_slash" and h.plans[0].decode is None
    with sparsa.apply(llama, "streaming", decode=AUTO) as h:
        assert h.plans[0].prefill.name == "streaming" and h.plans[0].decode.name == "streaming"


def test_context_manager_restores_everything(llama: torch.nn.Module, llama_ref: dict) -> None:
    impl = compat.get_attn_implementation(llama)
    hooks = len(llama._forward_pre_hooks)
    handle = sparsa.apply(llama, small("vertical_slash"), decode=small("quest"))
    assert handle.active and "generate" in llama.__dict__
    assert not torch.allclose(logits(llama, llama_ref["ids"]), llama_ref["logits"], atol=1e-4)
    with handle:
        pass
    assert not handle.active
    assert compat.get_attn_implementation(llama) == impl
    assert "generate" not in llama.__dict__ and len(llama._forward_pre_hooks) == hooks
    assert not compat.is_registered(handle.name)
    torch.testing.assert_close(logits(llama, llama_ref["ids"]), llama_ref["logits"], atol=0, rtol=0)
    assert torch.equal(greedy(llama, llama_ref["ids"]).sequences, llama_ref["gen"])
    handle.remove()  # idempotent
    with sparsa.apply(llama, "quest") as again:  # and the model can be wrapped again
        assert again.name != handle.name


def test_manual_decode_loop_uses_sparsa_cache(llama: torch.nn.Module, llama_ref: dict) -> None:
    ids = llama_ref["ids"][:1]
    with sparsa.apply(llama, sparsa.get_method("snapkv", compression=1.0)) as h, torch.no_grad():
        out = llama(ids)
        cache = compat.output_cache(out)
        assert isinstance(cache, SparsaCache) and set(cache.sparsa_states) == {0, 1}
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        step = llama(nxt, **{compat.cache_kwarg_name(llama): cache})
        assert h.layer_stats[(0, "decode")].method == "snapkv"
    expected = llama_ref["gen"][0, ids.shape[1] + 1]
    assert int(step.logits[0, -1].argmax()) == int(expected)


# ----------------------------------------------------------------------------------- errors

def test_bad_arguments(llama: torch.nn.Module) -> None:
    impl = compat.get_attn_implementation(llama)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        sparsa.apply(llama, "nope")
    with pytest.raises(ValueError, match="unknown method"):
        sparsa.apply(llama, "dense", decode="nope")
    with pytest.raises(TypeError, match="prefill"):
        sparsa.apply(llama, 3)
    with pytest.raises(ValueError, match="out of range"):
        sparsa.apply(llama, "quest", layers={5: None})
    with pytest.raises(TypeError, match="layer indices"):
        sparsa.apply(llama, "quest", layers={"0": None})
    with pytest.raises(ValueError, match="keys must be"):
        sparsa.apply(llama, "quest", layers={0: {"prefil": None}})
    with pytest.raises(ValueError, match="on_unsupported"):
        sparsa.apply(llama, "quest", on_unsupported="ignore")
    with pytest.raises(ValueError, match="prefill_chunk"):
        sparsa.apply(llama, "quest", prefill_chunk=0)
    assert compat.get_attn_implementation(llama) == impl
    with sparsa.apply(llama, "quest"):
        with pytest.raises(RuntimeError, match="already applied"):
            sparsa.apply(llama, "quest")


def test_decode_state_needs_sparsa_cache(llama: torch.nn.Module) -> None:
    ids = prompt(1, 40)
    dyn = compat.dynamic_cache_class()()
    with sparsa.apply(llama, "quest"), torch.no_grad():
        with pytest.raises(RuntimeError, match="SparsaCache"):
            llama.generate(ids, max_new_tokens=3, do_sample=False, **{compat.cache_kwarg_name(llama): dyn})
    # prefill-only methods decode densely and need no state
    with sparsa.apply(llama, "vertical_slash"), torch.no_grad():
        dyn = compat.dynamic_cache_class()()
        out = llama.generate(ids, max_new_tokens=3, do_sample=False, **{compat.cache_kwarg_name(llama): dyn})
    assert out.shape == (1, 43)


def test_static_cache_and_beam_search_are_rejected(llama: torch.nn.Module) -> None:
    ids = prompt(1, 40)
    with sparsa.apply(llama, "h2o"), torch.no_grad():
        with pytest.raises(TypeError, match="StaticCache"):
            llama.generate(ids, max_new_tokens=2, do_sample=False, cache_implementation="static")
        with pytest.raises(NotImplementedError, match="beam search"):
            llama.generate(ids, max_new_tokens=2, do_sample=False, num_beams=2)


def test_attention_dropout_is_rejected() -> None:
    model = tiny_model("llama", attention_dropout=0.1).train()
    with sparsa.apply(model, "sliding_window"):
        with pytest.raises(ValueError, match="dropout"):
            model(prompt(1, 20), use_cache=False)


def test_import_sparsa_does_not_import_transformers() -> None:
    import subprocess
    import sys
    code = "import sys, sparsa; assert 'transformers' not in sys.modules; assert callable(sparsa.apply)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_caller_built_4d_masks(llama: torch.nn.Module) -> None:
    ids = prompt(2, 30)
    pad = torch.ones(2, 30, dtype=torch.bool)
    pad[1, :9] = False
    causal = torch.ones(30, 30, dtype=torch.bool).tril()
    mask4d = causal[None, None] & pad[:, None, None, :]
    with sparsa.apply(llama, small("sliding_window"), layers={0: None}):
        with torch.no_grad():
            a = llama(ids, attention_mask=pad.long(), use_cache=False).logits
            b = llama(ids, attention_mask=mask4d, use_cache=False).logits
            torch.testing.assert_close(b[pad], a[pad], atol=1e-4, rtol=0)
            with pytest.raises(ValueError, match="attention_mask"):
                llama(ids, attention_mask=torch.ones(2, 1, 30, 30, dtype=torch.bool), use_cache=False)


def test_packed_sequences_are_rejected(llama: torch.nn.Module) -> None:
    ids = prompt(1, 20)
    packed = torch.cat([torch.arange(12), torch.arange(8)])[None]
    with sparsa.apply(llama, small("sliding_window")), torch.no_grad():
        llama(ids, position_ids=torch.arange(20)[None], use_cache=False)
        with pytest.raises(ValueError, match="packed"):
            llama(ids, position_ids=packed, use_cache=False)

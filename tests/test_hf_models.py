"""sparsa.apply on every supported model family (tiny random-weight models, CPU, fp32).

Also holds the model builders and helpers the other test_hf_* files import.
"""
from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import sparsa  # noqa: E402
from sparsa.integrations.hf import compat  # noqa: E402

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3")
VOCAB = 128
WINDOW = 24  # the Gemma / windowed-Mistral sliding window: shorter than the prompts below

_COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=1024, pad_token_id=0)


def tiny_model(family: str = "llama", seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A 2-layer, 4-head (2 KV heads), hidden-64 causal LM of ``family`` with random weights."""
    kw = dict(_COMMON)
    if family == "llama":
        cfg, cls = transformers.LlamaConfig, transformers.LlamaForCausalLM
    elif family == "qwen2":
        cfg, cls = transformers.Qwen2Config, transformers.Qwen2ForCausalLM
    elif family == "qwen3":
        cfg, cls = transformers.Qwen3Config, transformers.Qwen3ForCausalLM
        kw["head_dim"] = 16
    elif family == "mistral":
        cfg, cls = transformers.MistralConfig, transformers.MistralForCausalLM
        kw["sliding_window"] = None
    elif family == "gemma2":
        cfg, cls = transformers.Gemma2Config, transformers.Gemma2ForCausalLM
        kw.update(head_dim=16, sliding_window=WINDOW, attn_logit_softcapping=None, query_pre_attn_scalar=16)
    elif family == "gemma3":
        cfg, cls = transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM
        kw.update(head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=16,
                  layer_types=["sliding_attention", "full_attention"])
    else:
        raise ValueError(family)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = cls(cfg(**kw)).eval()
    model.generation_config.eos_token_id = None  # random weights: never stop early
    return model


def prompt(batch: int = 1, length: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (batch, length), generator=g)


@torch.no_grad()
def logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return model(ids, attention_mask=mask, use_cache=False).logits


@torch.no_grad()
def greedy(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None, new: int = 6,
           **kwargs: Any) -> Any:
    if mask is None:
        mask = torch.ones_like(ids)
    return model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0,
                          output_scores=True, return_dict_in_generate=True, **kwargs)


def quiet_apply(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """sparsa.apply without the sliding-window-layer warning (tested separately)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return sparsa.apply(model, *args, **kwargs)


@pytest.fixture(autouse=True)
def _quiet_transformers():
    transformers.logging.set_verbosity_error()
    yield


# ----------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("family", FAMILIES)
def test_dense_equals_model_and_restores(family: str) -> None:
    """compression-1 sliding window and Quest reproduce the model; exiting restores it."""
    model = tiny_model(family)
    ids = prompt(2, 56)
    before_impl = compat.get_attn_implementation(model)
    ref = logits(model, ids)
    ref_gen = greedy(model, ids).sequences
    for method in ("sliding_window", "quest"):
        with quiet_apply(model, sparsa.get_method(method, compression=1.0)) as handle:
            assert compat.get_attn_implementation(model) == handle.name
            torch.testing.assert_close(logits(model, ids), ref, atol=1e-4, rtol=0)
            assert torch.equal(greedy(model, ids).sequences, ref_gen)
        assert compat.get_attn_implementation(model) == before_impl
        assert not compat.is_registered(handle.name)
    torch.testing.assert_close(logits(model, ids), ref, atol=0, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_sparse_generation_per_family(family: str) -> None:
    model = tiny_model(family)
    ids = prompt(1, 80)
    with quiet_apply(model, sparsa.get_method("sliding_window", window=16),
                     decode=sparsa.get_method("quest", page_size=8, budget=16)) as handle:
        out = greedy(model, ids, new=5)
    assert all(torch.isfinite(s).all() for s in out.scores)
    full = [p.layer for p in handle.plans if p.window is None]
    assert full, "every family here has a full-attention layer"
    for layer in full:
        assert handle.layer_stats[(layer, "prefill")].compression > 1.5
        assert handle.layer_stats[(layer, "decode")].compression > 1.5


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_gemma_sliding_layers_keep_their_window(family: str) -> None:
    model = tiny_model(family)
    ids = prompt(1, 60)
    ref = logits(model, ids)
    with pytest.warns(UserWarning, match="sliding window"):
        handle = sparsa.apply(model, sparsa.get_method("sliding_window", compression=1.0))
    with handle:
        assert handle.plans[0].window == WINDOW and handle.plans[1].window is None
        assert "window" in handle.describe().splitlines()[0]
        torch.testing.assert_close(logits(model, ids), ref, atol=1e-4, rtol=0)
    # layers overridden to dense do not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with sparsa.apply(model, "quest", layers={0: None}):
            pass


def test_mistral_with_window_runs_its_window() -> None:
    model = tiny_model("mistral", sliding_window=WINDOW)
    ids = prompt(2, 50)
    ref = logits(model, ids)
    ref_gen = greedy(model, ids).sequences
    with pytest.warns(UserWarning, match="sliding window"):
        handle = sparsa.apply(model, "h2o")
    with handle:
        assert all(p.window == WINDOW for p in handle.plans)
        torch.testing.assert_close(logits(model, ids), ref, atol=1e-4, rtol=0)
        assert torch.equal(greedy(model, ids).sequences, ref_gen)


def test_gemma2_softcap_is_an_error_or_dense() -> None:
    model = tiny_model("gemma2", attn_logit_softcapping=50.0)
    impl = compat.get_attn_implementation(model)
    with pytest.raises(ValueError, match="soft-cap"):
        sparsa.apply(model, "vertical_slash")
    assert compat.get_attn_implementation(model) == impl
    ids = prompt(2, 40)
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    ref = logits(model, ids, mask)
    with pytest.warns(UserWarning):
        handle = sparsa.apply(model, "vertical_slash", on_unsupported="dense")
    with handle:
        assert all(p.prefill is None and p.decode is None for p in handle.plans)
        got = logits(model, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], ref[real], atol=1e-4, rtol=0)


def test_unsupported_family_is_rejected_before_any_change() -> None:
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=VOCAB)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    impl = compat.get_attn_implementation(model)
    with pytest.raises(ValueError, match="not supported.*llama"):
        sparsa.apply(model, "quest")
    assert compat.get_attn_implementation(model) == impl
    with pytest.raises(TypeError, match="model"):
        sparsa.apply(torch.nn.Linear(2, 2), "quest")


def test_version_check() -> None:
    assert compat.check_version() == compat.TRANSFORMERS_VERSION
    with pytest.raises(RuntimeError, match="not supported"):
        compat.check_version("4.40.0")
    with pytest.raises(RuntimeError, match="not supported"):
        compat.check_version("6.0.0")

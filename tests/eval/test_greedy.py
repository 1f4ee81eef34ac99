"""Greedy decoding: a padded batch prefilled row by row gives what one masked forward gives."""
from __future__ import annotations

import pytest
import torch

from sparsa.eval import greedy as greedy_mod
from sparsa.eval.greedy import Prompt, greedy_generate
from sparsa.integrations.hf import compat

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny():
    from sparsa.eval.models import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="module")
def prompts(tiny):
    from sparsa.eval.prompts import split_prompt_ids
    from sparsa.eval.tasks import generate

    _, tok = tiny
    # three lengths, so two of the three rows are padded
    return [Prompt(*split_prompt_ids(tok, generate("niah_single", 384 + 64 * s, s, tok))) for s in range(3)]


def _masked_prefill(model, rows):
    width = max(len(x) for x in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, x in enumerate(rows):
        ids[i, width - len(x):] = torch.tensor(x)
        mask[i, width - len(x):] = 1
    cache = compat.dynamic_cache_class()()
    out = model(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                past_key_values=cache, use_cache=True)
    return out.logits[:, -1].float(), compat.output_cache(out) or cache, mask


def test_rows_prefilled_one_by_one_equal_one_masked_forward(tiny, prompts):
    model, _ = tiny
    rows = [p.ids for p in prompts]
    assert len({len(r) for r in rows}) == 3
    width = max(len(r) for r in rows)
    with torch.no_grad():
        want_logits, want_cache, mask = _masked_prefill(model, rows)
        got_logits, got_cache = greedy_mod._prefill_rows(model, rows, width, torch.device("cpu"),
                                                         compat.cache_kwarg_name(model))
    # fp32 on the CPU: the two paths sum the same products in different orders (masked softmax
    # over the padded width vs. causal over the real keys); 1e-4 is ~100x that rounding
    torch.testing.assert_close(got_logits, want_logits, atol=1e-4, rtol=1e-4)
    real = mask.bool()
    layer = 0
    while compat.layer_kv(want_cache, layer)[0] is not None:
        for a, b in zip(compat.layer_kv(got_cache, layer), compat.layer_kv(want_cache, layer)):
            assert a.shape == b.shape
            torch.testing.assert_close(a.transpose(1, 2)[real], b.transpose(1, 2)[real], atol=1e-4, rtol=1e-4)
            assert not a.transpose(1, 2)[~real].any()  # padded slots are zeros
        layer += 1
    assert layer == model.config.num_hidden_layers


def test_row_prefill_generates_what_the_masked_batch_generates(tiny, prompts, monkeypatch):
    model, _ = tiny
    calls = []
    real = greedy_mod._prefill_rows
    monkeypatch.setattr(greedy_mod, "_prefill_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    rows = greedy_generate(model, prompts, max_new_tokens=6, row_prefill=True)
    assert calls == [1]
    masked = greedy_generate(model, prompts, max_new_tokens=6)
    assert calls == [1]  # off by default
    assert rows.ids == masked.ids
    # an unpadded batch needs no row prefill
    greedy_generate(model, [prompts[0], prompts[0]], max_new_tokens=2, row_prefill=True)
    assert calls == [1]


def test_stack_left_padded_places_each_row_at_the_right():
    caches = []
    for n in (2, 4):
        c = compat.dynamic_cache_class()()
        k = torch.arange(1, n + 1, dtype=torch.float32).view(1, 1, n, 1).expand(1, 2, n, 3).contiguous()
        c.update(k, -k, 0)
        caches.append(c)
    merged = compat.stack_left_padded(caches, 5)
    keys, values = compat.layer_kv(merged, 0)
    assert keys.shape == (2, 2, 5, 3)
    assert keys[0, 0, :, 0].tolist() == [0, 0, 0, 1, 2]
    assert keys[1, 1, :, 2].tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(values, -keys)
    with pytest.raises(ValueError, match="caches"):
        compat.stack_left_padded(caches, 3)
    with pytest.raises(ValueError, match="caches"):
        compat.stack_left_padded([], 3)

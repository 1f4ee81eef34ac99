"""StreamingLLM run as a prefill method: pairs counted from an explicit mask, targets solved on them."""
import pytest
import torch

import sparsa
from sparsa.methods.streaming import Streaming
from sparsa.ops.dense.reference import causal_pairs

from .test_hf_models import logits, prompt, tiny_model


def explicit_pairs(lq: int, lk: int, sink: int, window: int) -> int:
    """Pairs of the causal sink + window mask, built as a full (lq, lk) matrix."""
    pos = torch.arange(lk - lq, lk)[:, None]
    key = torch.arange(lk)[None, :]
    mask = (key <= pos) & ((key < sink) | (pos - key < window))
    return int(mask.sum())


@pytest.mark.parametrize("lq,lk", [(3200, 3200), (777, 3200), (333, 333)])
@pytest.mark.parametrize("target", [2.0, 5.0, 10.0])
def test_prefill_reading_counts_the_pairs_computed(lq, lk, target):
    q, k, v = (torch.randn(1, 2, n, 16) for n in (lq, lk, lk))
    q, k, v = q, k[:, :1], v[:, :1]
    _, st = Streaming(compression=target).for_prefill()(q, k, v)
    window = st.info["window"]
    pairs = explicit_pairs(lq, lk, 4, window)
    assert st.phase == "prefill" and st.computed == 2 * pairs
    assert st.compression == pytest.approx(causal_pairs(lq, lk) / pairs)
    # the window is the one whose exact pair count is closest to the target
    want = causal_pairs(lq, lk) / target
    for w in (window - 1, window + 1):
        if 1 <= w <= lk:
            assert abs(explicit_pairs(lq, lk, 4, w) - want) >= abs(pairs - want)


def test_decode_reading_used_as_prefill_was_the_mismatch():
    """At 3.2K the decode reading (tokens per step) says 10; the pairs it computes say ~5.3."""
    q, k, v = torch.randn(1, 1, 3200, 16), torch.randn(1, 1, 3200, 16), torch.randn(1, 1, 3200, 16)
    m = Streaming(compression=10.0)
    _, st_decode = m(q, k, v)
    _, st_prefill = m.for_prefill()(q, k, v)
    assert st_decode.phase == "decode" and st_decode.compression == pytest.approx(10.0, rel=0.01)
    assert st_prefill.phase == "prefill" and st_prefill.compression == pytest.approx(10.0, rel=0.01)
    sink, window = st_decode.info["sink"], st_decode.info["window"]
    assert causal_pairs(3200, 3200) / explicit_pairs(3200, 3200, sink, window) == pytest.approx(5.29, abs=0.05)


def test_for_prefill_keeps_explicit_budgets_and_other_methods():
    m = Streaming(sink=2, window=50)
    p = m.for_prefill()
    assert p.mode == "prefill" and (p.sink, p.window) == (2, 50)
    assert p.for_prefill() is p
    vs = sparsa.get_method("vertical_slash")
    assert vs.for_prefill() is vs


def test_hf_prefill_stats_count_pairs():
    model = tiny_model("llama")
    ids = prompt(1, 200)
    with sparsa.apply(model, Streaming(compression=4.0)) as handle:
        logits(model, ids)
        st = handle.stats("prefill")
    assert st.phase == "prefill"
    # every layer and head: the pairs of the window solved for 200 rows
    window = Streaming(compression=4.0).for_prefill().resolve_window(200, 200)
    heads = 4 * 2  # query heads x layers of the tiny model
    assert st.computed == heads * explicit_pairs(200, 200, 4, window)
    assert st.compression == pytest.approx(4.0, rel=0.05)

"""Property tests over shapes: every method, any batch / GQA ratio / head dim / odd length."""
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import sparsa

from ._util import causal_mask, explicit_attention, rel_err

TRAINED = {"nsa"}

shapes = st.fixed_dictionaries({
    "batch": st.integers(1, 2),
    "kv_heads": st.integers(1, 2),
    "group": st.sampled_from([1, 2, 3, 4, 8, 16]),
    "head_dim": st.sampled_from([64, 128]),
    "kv_len": st.integers(1, 260),
    "q_frac": st.floats(0.0, 1.0),
    "seed": st.integers(0, 2**16),
})


def make(s):
    g = torch.Generator().manual_seed(s["seed"])
    h = s["kv_heads"] * s["group"]
    lq = max(1, int(round(s["q_frac"] * s["kv_len"])))
    q = torch.randn(s["batch"], h, lq, s["head_dim"], generator=g)
    k = torch.randn(s["batch"], s["kv_heads"], s["kv_len"], s["head_dim"], generator=g)
    v = torch.randn(s["batch"], s["kv_heads"], s["kv_len"], s["head_dim"], generator=g)
    return q, k, v


@settings(max_examples=12, deadline=None)
@given(shapes)
def test_dense_reference_matches_explicit(s):
    q, k, v = make(s)
    ref = explicit_attention(q, k, v, causal_mask(q.shape[2], k.shape[2]))
    assert rel_err(sparsa.attention(q, k, v), ref) < 1e-5


@settings(max_examples=8, deadline=None)
@given(shapes)
# the shapes that must always be covered: GQA group 3, batch > 1, odd lengths, both head dims
@example({"batch": 2, "kv_heads": 2, "group": 3, "head_dim": 64, "kv_len": 131, "q_frac": 0.6, "seed": 1})
@example({"batch": 2, "kv_heads": 1, "group": 3, "head_dim": 128, "kv_len": 97, "q_frac": 1.0, "seed": 2})
def test_every_method_at_compression_one_equals_dense(s):
    q, k, v = make(s)
    dense = sparsa.attention(q, k, v, "dense")
    for name in sparsa.list_methods():
        if name in TRAINED or name == "dense":
            continue
        out = sparsa.attention(q, k, v, name, compression=1.0)
        assert out.shape == q.shape and out.dtype == q.dtype
        assert rel_err(out, dense) < 1e-5, name


@settings(max_examples=8, deadline=None)
@given(shapes, st.sampled_from([2.0, 4.0]))
def test_every_method_is_finite_at_any_shape(s, target):
    q, k, v = make(s)
    for name in sparsa.list_methods():
        if name == "dense":
            continue
        out, stats = sparsa.attention(q, k, v, name, compression=target, return_stats=True)
        assert out.shape == q.shape, name
        assert torch.isfinite(out).all(), name
        assert stats.compression >= 1.0 - 1e-9, name

"""Public API: registry, argument checking, stats."""
import pytest
import torch

import sparsa
from sparsa.ops.dense.reference import causal_pairs

EXPECTED = ["dense", "sliding_window", "bigbird", "streaming", "vertical_slash", "block_sparse", "flexprefill",
            "h2o", "snapkv", "ada_snapkv", "quest", "nsa"]


def qkv(b=1, h=4, hkv=2, lq=40, lk=40, d=16, dtype=torch.float32):
    return torch.randn(b, h, lq, d, dtype=dtype), torch.randn(b, hkv, lk, d, dtype=dtype), \
        torch.randn(b, hkv, lk, d, dtype=dtype)


def test_every_method_is_registered():
    assert sparsa.list_methods() == EXPECTED


def test_get_method_unknown_name_and_param():
    with pytest.raises(ValueError, match="method: unknown method 'nope'"):
        sparsa.get_method("nope")
    with pytest.raises(TypeError, match="windoww"):
        sparsa.get_method("sliding_window", windoww=3)
    with pytest.raises(ValueError, match="unknown method"):
        sparsa.attention(*qkv(), method="nope")


@pytest.mark.parametrize("bad", [0.5, -1, 0, float("nan"), float("inf")])
def test_compression_below_one_rejected(bad):
    with pytest.raises(ValueError, match="compression"):
        sparsa.attention(*qkv(), method="sliding_window", compression=bad)


def test_compression_wrong_type():
    with pytest.raises(TypeError, match="compression"):
        sparsa.attention(*qkv(), method="sliding_window", compression="10")


def test_shape_dtype_device_errors():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="kv_heads"):
        sparsa.attention(q, torch.randn(1, 3, 40, 16), torch.randn(1, 3, 40, 16))
    with pytest.raises(TypeError, match="dtype"):
        sparsa.attention(q, k.double(), v.double())
    with pytest.raises(ValueError, match="v: shape"):
        sparsa.attention(q, k, v[:, :, :30])
    with pytest.raises(ValueError, match="head_dim"):
        sparsa.attention(q, torch.randn(1, 2, 40, 8), torch.randn(1, 2, 40, 8))
    with pytest.raises(ValueError, match="batch"):
        sparsa.attention(q, torch.randn(2, 2, 40, 16), torch.randn(2, 2, 40, 16))
    with pytest.raises(ValueError, match="q_len"):
        sparsa.attention(torch.randn(1, 4, 41, 16), k, v)
    with pytest.raises(ValueError, match="dimensions"):
        sparsa.attention(q[0], k, v)
    with pytest.raises(TypeError, match="q: expected a torch.Tensor"):
        sparsa.attention(q.numpy(), k, v)
    with pytest.raises(TypeError, match="dtype"):
        sparsa.attention(q.int(), k.int(), v.int())
    if torch.device("meta") is not None:
        with pytest.raises(ValueError, match="device"):
            sparsa.attention(q, k.to("meta"), v.to("meta"))


def test_scale_and_backend_errors():
    with pytest.raises(ValueError, match="scale"):
        sparsa.attention(*qkv(), scale=-1.0)
    with pytest.raises(ValueError, match="backend"):
        sparsa.attention(*qkv(), method="dense", backend="cuda-magic")


def test_backend_triton_on_cpu_is_a_clear_error(monkeypatch):
    from sparsa.backend import resolve_backend

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("triton", torch.device("cpu"))
    assert resolve_backend("auto", torch.device("cpu")) == "reference"
    monkeypatch.setenv("SPARSA_BACKEND", "reference")
    assert resolve_backend(None, torch.device("cpu")) == "reference"


def test_stats_and_method_object():
    q, k, v = qkv(lq=64, lk=64)
    out, st = sparsa.attention(q, k, v, "dense", return_stats=True)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert st.compression == pytest.approx(1.0) and st.sparsity == pytest.approx(0.0)
    assert st.dense == causal_pairs(64, 64) * 4
    m = sparsa.get_method("sliding_window", window=8)
    out2, st2 = sparsa.attention(q, k, v, m, return_stats=True)
    assert st2.compression > 3
    with pytest.raises(TypeError, match="window"):
        sparsa.attention(q, k, v, m, window=3)
    _, st3 = sparsa.attention(q, k, v, sparsa.get_method("sliding_window"), compression=2.0, return_stats=True)
    assert st3.compression == pytest.approx(2.0, rel=0.25)


def test_dense_rejects_compression():
    with pytest.raises(ValueError, match="compression"):
        sparsa.get_method("dense", compression=2)


def test_bf16_inputs_give_bf16_output():
    q, k, v = qkv(dtype=torch.bfloat16)
    out = sparsa.attention(q, k, v, "sliding_window", window=8)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_causal_pairs():
    assert causal_pairs(4, 4) == 10
    assert causal_pairs(1, 5) == 5
    assert causal_pairs(2, 5) == 9

"""Sliding window, A-shape / StreamingLLM and BigBird: the Triton path (run by the interpreter on
the CPU) against each method's reference path, outputs and stats."""
import os

import pytest

os.environ["TRITON_INTERPRET"] = "1"          # before any triton-dependent import
pytest.importorskip("triton", reason="triton is not installed")

import torch  # noqa: E402

import sparsa  # noqa: E402
from sparsa.methods.bigbird import BigBird  # noqa: E402
from sparsa.methods.sliding_window import SlidingWindow  # noqa: E402
from sparsa.methods.streaming import Streaming  # noqa: E402

from ._util import causal_mask, explicit_attention, rel_err  # noqa: E402

SHAPES = [
    # batch, heads, kv_heads, q_len, kv_len, head_dim
    (2, 4, 4, 201, 201, 64),      # GQA 1
    (2, 8, 2, 133, 250, 64),      # GQA 4, q_len < kv_len
    (2, 8, 1, 97, 161, 128),      # GQA 8, head_dim 128
]


def qkv(b, h, hkv, lq, lk, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, lq, d, generator=g).to(dtype), torch.randn(b, hkv, lk, d, generator=g).to(dtype),
            torch.randn(b, hkv, lk, d, generator=g).to(dtype))


def both_paths(method, q, k, v):
    out_t, st_t = method(q, k, v, backend="triton")
    out_r, st_r = method(q, k, v, backend="reference")
    assert torch.isfinite(out_t).all()
    assert st_t.computed == st_r.computed and st_t.dense == st_r.dense
    assert torch.equal(st_t.per_head, st_r.per_head)
    assert st_t.info == st_r.info
    return out_t, out_r, st_t


METHODS = [
    SlidingWindow(window=37),
    SlidingWindow(window=20, global_positions=(0, 5, 96, 150, 160)),   # global rows and columns
    SlidingWindow(compression=3, global_positions=(1, 2)),
    Streaming(sink=4, window=30, mode="prefill"),
    Streaming(sink=0, window=1, mode="prefill"),
    Streaming(compression=4, mode="prefill"),
    Streaming(sink=7, window=50),                                        # decode mode: same rows
    BigBird(block_size=16, seed=3),
    BigBird(block_size=32, window_blocks=2, global_blocks=1, random_blocks=2, seed=1),
    BigBird(compression=3),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.name}-{abs(hash(repr(m))) % 10**6}")
def test_triton_path_equals_reference(method, shape):
    q, k, v = qkv(*shape, seed=sum(shape))
    out_t, out_r, _ = both_paths(method, q, k, v)
    assert rel_err(out_t, out_r) <= 1e-4


@pytest.mark.parametrize("method", [SlidingWindow(window=40, global_positions=(3, 70)),
                                    Streaming(sink=4, window=33, mode="prefill"), BigBird(block_size=32)],
                         ids=lambda m: m.name)
def test_bf16(method):
    q, k, v = qkv(2, 8, 2, 150, 190, 128, seed=4, dtype=torch.bfloat16)
    out_t, _ = method(q, k, v, backend="triton")
    out_r, _ = method(q.float(), k.float(), v.float(), backend="reference")
    assert out_t.dtype == torch.bfloat16
    assert rel_err(out_t, out_r) <= 1e-2


@pytest.mark.parametrize("method,params", [("sliding_window", {}), ("streaming", {"mode": "prefill"}),
                                           ("streaming", {}), ("bigbird", {"block_size": 32})])
def test_compression_one_is_dense_on_the_kernel(method, params):
    q, k, v = qkv(2, 8, 2, 100, 170, 64, seed=9)
    out, stats = sparsa.attention(q, k, v, method, compression=1, return_stats=True, backend="triton", **params)
    assert stats.compression == 1.0
    assert rel_err(out, explicit_attention(q, k, v, causal_mask(100, 170)[None, None])) <= 1e-4


def test_backend_is_chosen_by_argument_and_environment(monkeypatch):
    import sparsa.ops.block_sparse.triton as kernels

    calls = []
    real = kernels.local_attention_triton

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "local_attention_triton", spy)
    q, k, v = qkv(1, 2, 1, 70, 70, 64)
    sparsa.attention(q, k, v, "sliding_window", window=9)            # CPU tensors, auto: reference
    assert not calls
    sparsa.attention(q, k, v, "sliding_window", window=9, backend="triton")
    assert len(calls) == 1
    monkeypatch.setenv("SPARSA_BACKEND", "triton")
    sparsa.attention(q, k, v, "streaming", sink=2, window=9)
    assert len(calls) == 2
    sparsa.attention(q, k, v, "streaming", sink=2, window=9, backend="reference")
    assert len(calls) == 2
    monkeypatch.setenv("SPARSA_BACKEND", "reference")
    sparsa.attention(q, k, v, "sliding_window", window=9)
    assert len(calls) == 2


def test_unsupported_head_dim_on_triton_names_backend():
    q, k, v = qkv(1, 2, 1, 40, 40, 32)
    with pytest.raises(ValueError, match="^backend"):
        sparsa.attention(q, k, v, "sliding_window", window=9, backend="triton")
    with pytest.raises(ValueError, match="^backend"):
        sparsa.attention(q, k, v, "streaming", window=9, backend="triton")

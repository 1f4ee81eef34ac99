"""Decode methods on the caches through the Triton kernels (TRITON_INTERPRET=1 on the CPU):
the same outputs, reads and kept tokens as the reference path."""
from __future__ import annotations

import os

import pytest

os.environ["TRITON_INTERPRET"] = "1"          # before any triton-dependent import
pytest.importorskip("triton", reason="triton is not installed")

import torch  # noqa: E402

import sparsa  # noqa: E402
from sparsa.methods import init_cache  # noqa: E402

from ._util import rel_err  # noqa: E402


def inputs(b=2, h=8, hkv=2, L=64, d=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*s, generator=g).to(dtype) for s in ((b, h, L, d), (b, hkv, L, d), (b, hkv, L, d)))


def kept(dec) -> list[list[set[int]]]:
    pos = dec.cache.positions()
    return [[{int(p) for p in pos[b, h] if p >= 0} for h in range(pos.shape[1])] for b in range(pos.shape[0])]


CASES = [
    ("h2o", {"heavy": 9, "recent": 6}, None),
    ("h2o", {"heavy": 9, "recent": 6}, "int4"),
    ("streaming", {"sink": 2, "window": 11}, None),
    ("snapkv", {"window": 6, "kernel": 3, "capacity": 10}, "int8"),
    ("ada_snapkv", {"window": 6, "kernel": 3, "capacity": 10}, None),
    ("quest", {"page_size": 4, "budget": 12}, None),
    ("quest", {"page_size": 8, "budget": 16}, "int4:g16"),
    ("quest", {"page_size": 4, "budget": 12, "bounds": "int8"}, None),
    ("quest", {"page_size": 5, "budget": 15, "bounds": "native"}, "int8"),
    ("dense", {}, None),
]


@pytest.mark.parametrize("name,kw,quant", CASES)
def test_triton_path_matches_reference_path(name, kw, quant):
    q, k, v = inputs(seed=len(name) + len(kw))
    p = 52
    m = None if name == "dense" else sparsa.get_method(name, **kw)
    ref = init_cache(m, q[:, :, :p], k[:, :, :p], v[:, :, :p], quant=quant, backend="reference")
    tri = init_cache(m, q[:, :, :p], k[:, :, :p], v[:, :, :p], quant=quant, backend="triton")
    for t in range(p, 64):
        o_ref, s_ref = ref.step(q[:, :, t], k[:, :, t], v[:, :, t])
        o, s = tri.step(q[:, :, t], k[:, :, t], v[:, :, t])
        assert rel_err(o, o_ref) <= 1e-5
        assert torch.equal(s.tokens_read, s_ref.tokens_read)
        if name != "quest":
            assert kept(tri) == kept(ref)
        else:
            assert torch.equal(tri.last_page_list, ref.last_page_list)
    if tri.cache.__class__.__name__ == "VarlenKVCache" and tri.cache.score is not None:
        torch.testing.assert_close(tri.cache.scores(), ref.cache.scores(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["h2o", "quest"])
def test_bf16_through_the_kernels(name):
    q, k, v = inputs(b=1, h=4, hkv=1, L=80, d=64, dtype=torch.bfloat16, seed=3)
    p = 72
    m = sparsa.get_method(name, compression=3)
    ref = init_cache(m, q[:, :, :p], k[:, :, :p], v[:, :, :p], backend="reference")
    tri = init_cache(m, q[:, :, :p], k[:, :, :p], v[:, :, :p], backend="triton")
    for t in range(p, 80):
        o_ref, _ = ref.step(q[:, :, t], k[:, :, t], v[:, :, t])
        o, _ = tri.step(q[:, :, t], k[:, :, t], v[:, :, t])
        assert o.dtype == torch.bfloat16
        assert rel_err(o, o_ref) <= 1e-2

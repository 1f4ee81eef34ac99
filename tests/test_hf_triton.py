"""sparsa.apply's compact decode through the Triton kernels (TRITON_INTERPRET=1 on the CPU): the
same generations as the reference path and as dense attention at compression 1."""
from __future__ import annotations

import os

import pytest

os.environ["TRITON_INTERPRET"] = "1"          # before any triton-dependent import
pytest.importorskip("triton", reason="triton is not installed")
pytest.importorskip("transformers")

import torch  # noqa: E402

import sparsa  # noqa: E402
from sparsa.integrations.hf import compat  # noqa: E402

from ._util import TritonLaunches  # noqa: E402
from .test_hf_models import _quiet_transformers, greedy, prompt, tiny_model  # noqa: E402,F401

COMPACT = ("h2o", "snapkv", "ada_snapkv", "streaming", "quest")
SMALL = {"h2o": dict(heavy=8, recent=8), "snapkv": dict(window=8, kernel=3, capacity=16),
         "ada_snapkv": dict(window=8, kernel=3, capacity=16), "streaming": dict(sink=4, window=16),
         "quest": dict(page_size=8, budget=16)}


@pytest.fixture(scope="module")
def llama32() -> torch.nn.Module:
    """Head dim 32, a size the kernels take."""
    return tiny_model("llama", hidden_size=128, num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("name", COMPACT)
def test_triton_compact_decode_matches(name: str, llama32: torch.nn.Module) -> None:
    ids = prompt(2, 61, seed=4)
    mask = torch.ones_like(ids)
    mask[1, :13] = 0
    new = 4
    ref = greedy(llama32, ids, mask, new=new)
    with sparsa.apply(llama32, decode=sparsa.get_method(name, compression=1.0), backend="triton") as h:
        cache = h.new_cache()
        out = greedy(llama32, ids, mask, new=new, **{compat.cache_kwarg_name(llama32): cache})
    assert cache.storage(0) in ("varlen", "paged")
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.scores, ref.scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    method = sparsa.get_method(name, **SMALL[name])
    runs = {}
    for backend in ("triton", "reference"):
        with sparsa.apply(llama32, decode=method, backend=backend) as h:
            cache = h.new_cache()
            runs[backend] = greedy(llama32, ids, mask, new=new, **{compat.cache_kwarg_name(llama32): cache})
            assert h.stats("decode").compression > 1.5
        runs[backend + "_tokens"] = cache.layer_tokens(1)
    assert torch.equal(runs["triton"].sequences, runs["reference"].sequences)
    for a, b in zip(runs["triton"].scores, runs["reference"].scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert torch.equal(runs["triton_tokens"], runs["reference_tokens"])


def test_decode_kernels_do_not_specialise_on_what_changes_every_step(monkeypatch, llama32: torch.nn.Module) -> None:
    # Triton compiles a kernel variant per pattern of its int arguments (== 1, divisible by 16)
    # unless they are named in do_not_specialize: an argument that follows the cache length
    # would compile new variants while generating
    launches = TritonLaunches(monkeypatch)
    ids = prompt(1, 61, seed=4)
    seen = set()
    for name in COMPACT:           # per method: page sizes and capacities differ between methods
        launches.calls.clear()
        with sparsa.apply(llama32, decode=sparsa.get_method(name, **SMALL[name]), backend="triton") as h:
            greedy(llama32, ids, torch.ones_like(ids), new=20, **{compat.cache_kwarg_name(llama32): h.new_cache()})
        seen |= set(launches.calls)
        for fn in launches.calls:
            _, specialised = launches.step_args(fn)
            assert not specialised, f"{name}, {fn}: specialised on {sorted(specialised)}"
    assert {"_decode_kernel", "_quest_select_kernel"} <= seen

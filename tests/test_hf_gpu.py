"""sparsa.apply on CUDA (the methods dispatch to their GPU kernels); skipped without a GPU."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

import sparsa  # noqa: E402

from .test_hf_apply import NOT_DENSE_AT_1, small, sparse_methods  # noqa: E402
from .test_hf_models import _quiet_transformers, greedy, logits, prompt, tiny_model  # noqa: E402,F401


@pytest.fixture(scope="module")
def cuda_llama() -> torch.nn.Module:
    return tiny_model("llama", hidden_size=256, num_attention_heads=4, num_key_value_heads=1,
                      intermediate_size=256).cuda()


@pytest.mark.parametrize("name", [n for n in sparsa.list_methods() if n not in NOT_DENSE_AT_1])
def test_cuda_compression_1_equals_dense(name: str, cuda_llama: torch.nn.Module) -> None:
    ids = prompt(2, 300).cuda()
    ref = logits(cuda_llama, ids)
    with sparsa.apply(cuda_llama, sparsa.get_method(name, compression=1.0)):
        got = logits(cuda_llama, ids)
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=0)


@pytest.mark.parametrize("name", sparse_methods())
def test_cuda_bf16_generation(name: str, cuda_llama: torch.nn.Module) -> None:
    model = cuda_llama.to(torch.bfloat16)
    try:
        ids = prompt(2, 257, seed=3).cuda()
        mask = torch.ones_like(ids)
        mask[1, :31] = 0
        with sparsa.apply(model, small(name)) as handle:
            out = greedy(model, ids, mask, new=8)
        assert all(torch.isfinite(s).all() for s in out.scores)
        assert max(handle.stats("prefill").compression, handle.stats("decode").compression) > 1.5
    finally:
        cuda_llama.float()


@pytest.mark.parametrize("name", ["h2o", "snapkv", "ada_snapkv", "streaming", "quest"])
def test_cuda_compact_decode_equals_dense(name: str, cuda_llama: torch.nn.Module) -> None:
    """Compression 1 on the compact stores through the CUDA kernels: the dense model's generation."""
    from sparsa.integrations.hf import compat

    ids = prompt(2, 300, seed=5).cuda()
    mask = torch.ones_like(ids)
    mask[1, :40] = 0
    ref = greedy(cuda_llama, ids, mask, new=8)
    with sparsa.apply(cuda_llama, decode=sparsa.get_method(name, compression=1.0)) as handle:
        cache = handle.new_cache()
        out = greedy(cuda_llama, ids, mask, new=8, **{compat.cache_kwarg_name(cuda_llama): cache})
    assert cache.storage(0) in ("varlen", "paged") and compat.layer_kv(cache, 0)[0].numel() == 0
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.scores, ref.scores):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=0)

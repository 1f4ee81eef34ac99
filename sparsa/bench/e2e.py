"""End-to-end prefill of a Llama-3-8B-shaped model (random bf16 weights) through transformers.

Dense: the model's SDPA attention with the cuDNN backend (the fastest dense kernel on Hopper)
and with PyTorch's default backend choice. Sparse: the same model under ``sparsa.apply`` with
a prefill method, in the same run. Each time is the median of ``reps`` full forward passes
(one warm-up first) over one random prompt, with the KV cache filled as in serving and only
the last position's logits computed. Peak GPU memory is reported per configuration.

The per-layer shape is Llama-3-8B's (hidden 4096, 32 query heads, 8 KV heads, head_dim 128,
MLP 14336); ``layers`` below 32 keeps the run short without changing the per-layer ratio of
attention to linear time (recorded in each row's params).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .timing import ResultsFile

SHAPE = {"batch": 1, "heads": 32, "kv_heads": 8, "head_dim": 128}


def llama3_8b_config(layers: int = 32, max_positions: int = 131072) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                       rope_theta=500000.0, max_position_embeddings=max_positions, tie_word_embeddings=False)


def build_model(layers: int, max_positions: int, device: str = "cuda") -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    cfg = llama3_8b_config(layers, max_positions)
    cfg._attn_implementation = "sdpa"
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def _time_forward(model: torch.nn.Module, ids: torch.Tensor, reps: int, ctx: Any) -> tuple[float, float]:
    """(median ms, peak GiB) of ``reps`` prefill passes after one warm-up."""
    times = []
    torch.cuda.reset_peak_memory_stats()
    for i in range(reps + 1):
        with ctx(), torch.inference_mode():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) * 1000.0
        del out
        if i:
            times.append(dt)
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def run_e2e_bench(contexts: Sequence[int], methods: Sequence[str], out_path: str | Path, *, layers: int = 32,
                  reps: int = 2, compression: float | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Time dense and sparse prefill end to end; rows are added to ``out_path`` as they come."""
    if not torch.cuda.is_available():
        raise RuntimeError("run_e2e_bench needs a CUDA GPU")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import sparsa

    res = ResultsFile(out_path)
    model = build_model(layers, max(contexts))
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n in contexts:
        ids = torch.randint(0, model.config.vocab_size, (1, n), device="cuda", generator=gen)
        base = {}
        for name, ctx in (("sdpa_cudnn", lambda: sdpa_kernel([SDPBackend.CUDNN_ATTENTION])),
                          ("sdpa_default", contextlib.nullcontext)):
            base[name] = _time_forward(model, ids, reps, ctx)
            if progress:
                print(f"{n:>7} dense {name:<13} {base[name][0]:9.1f} ms  peak {base[name][1]:.1f} GiB", flush=True)
        for method in methods:
            params = {} if compression is None else {"compression": compression}
            m = sparsa.get_method(method, **params)
            with sparsa.apply(model, prefill=m):
                ms, peak = _time_forward(model, ids, reps, contextlib.nullcontext)
            if progress:
                print(f"{n:>7} {method:<19} {ms:9.1f} ms  peak {peak:.1f} GiB  "
                      f"speedup vs cuDNN {base['sdpa_cudnn'][0] / ms:.2f}x", flush=True)
            for bname in ("sdpa_cudnn",):
                res.add({"bench": "e2e", "method": method, "pass": "e2e_prefill", "shape": dict(SHAPE),
                         "context": n, "compression": compression, "params": {"layers": layers, **params},
                         "ms": ms, "baseline": bname, "baseline_ms": base[bname][0],
                         "speedup": base[bname][0] / ms,
                         "metrics": {"peak_gib": peak, "baseline_peak_gib": base[bname][1],
                                     "sdpa_default_ms": base["sdpa_default"][0]}})
    return res.rows

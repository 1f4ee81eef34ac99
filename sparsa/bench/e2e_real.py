"""Prefill of a real pretrained model, dense SDPA against ``sparsa.apply``, in one run.

One forward of real text (Python standard-library source, tokenized by the model's own
tokenizer) with ``use_cache=False`` and ``logits_to_keep=1``, timed as the median of ``reps``
passes after a warm-up, for the model's SDPA attention and for each sparse prefill method on
the same input. Each row carries the method's achieved compression (model-wide, from its own
stats), whether any layer fell back to dense, and the card.

``profile=True`` adds, per configuration, a profiler pass that splits the GPU time into
attention (sparsa's kernels and SDPA's), pattern estimation and index building (the other
kernels launched inside sparsa's attention), the model's linear layers (GEMMs) and the rest,
plus the host time of the forward, so a slow row names the part that holds it back.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

import sparsa

from ..eval.corpus import haystack_lines
from ..eval.models import load_model
from .timing import ResultsFile, device_info

#: name -> (method, parameters); "paper" runs a method with its paper defaults
REAL_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "vertical_slash_paper": ("vertical_slash", {}),
    "vertical_slash_c10": ("vertical_slash", {"compression": 10.0}),
    "block_sparse_c10": ("block_sparse", {"compression": 10.0}),
    "streaming_c10": ("streaming", {"compression": 10.0}),
    "flexprefill": ("flexprefill", {}),
    "flexprefill_c10": ("flexprefill", {"compression": 10.0}),
}


def real_text_ids(tokenizer: Any, n: int) -> torch.Tensor:
    """(1, n) token ids of standard-library source text (repeated if the corpus runs out)."""
    lines = haystack_lines("eval")
    ids: list[int] = []
    i = 0
    step = 2000
    while len(ids) < n:
        chunk = "\n".join(lines[i % len(lines):i % len(lines) + step]) + "\n"
        ids.extend(tokenizer(chunk, add_special_tokens=False).input_ids)
        i += step
    return torch.tensor(ids[:n])[None]


def _forward(model: torch.nn.Module, ids: torch.Tensor) -> None:
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False, logits_to_keep=1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(model: torch.nn.Module, ids: torch.Tensor, reps: int) -> float:
    """Median ms of ``reps`` forwards after one warm-up."""
    times = []
    for i in range(reps + 1):
        _sync(ids.device)
        t0 = time.perf_counter()
        _forward(model, ids)
        _sync(ids.device)
        if i:
            times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


_ATTN = ("attn", "attention", "fmha", "flash", "cudnn", "_fwd_kernel", "sparse", "slash", "block_sparse",
         "band", "local")
_GEMM = ("gemm", "cutlass", "sm90_xmma", "matmul", "cublas", "nvjet")


def split_device_time(events: Iterable[Any]) -> dict[str, Any]:
    """GPU ms per kernel kind (attention, gemm, other) from profiler ``key_averages()`` entries.

    Only device-side entries (the kernels themselves) are counted: a CPU operator such as
    ``aten::mm`` also carries the device time of the kernels it launched, so counting both would
    count every kernel twice. ``top`` lists the eight longest kernels.
    """
    split: dict[str, Any] = {"attention_ms": 0.0, "gemm_ms": 0.0, "other_ms": 0.0}
    top: list[tuple[float, str]] = []
    for evt in events:
        if evt.device_type == DeviceType.CPU:
            continue
        t = float(getattr(evt, "self_device_time_total", 0.0) or 0.0) / 1000.0
        if t <= 0:
            continue
        name = evt.key.lower()
        kind = "attention_ms" if any(s in name for s in _ATTN) else (
            "gemm_ms" if any(s in name for s in _GEMM) else "other_ms")
        split[kind] += t
        top.append((t, evt.key[:80]))
    split["top"] = [f"{t:.2f} ms {k}" for t, k in sorted(top, reverse=True)[:8]]
    return split


def profile_split(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, Any]:
    """GPU ms of one forward split by kernel kind (attention, gemm, other) and its host ms.

    The split is by kernel name, so it is a guide, not an exact account.
    """
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        _forward(model, ids)
        host = (time.perf_counter() - t0) * 1000.0
        torch.cuda.synchronize()
    split = split_device_time(prof.key_averages())
    split["host_ms"] = host
    return split


def run_e2e_real(model_path: str, contexts: Sequence[int], methods: Sequence[str], out_path: str | Path, *,
                 reps: int = 3, profile: bool = False, progress: bool = True,
                 device: str = "cuda") -> list[dict[str, Any]]:
    """Time dense and sparse prefill of a real model; rows are added to ``out_path`` as they come.

    model_path: a HF model directory or a ``.gguf`` file (see :func:`sparsa.eval.models.load_model`).
    contexts: prompt lengths in tokens (RoPE is extrapolated past the model's trained context:
    speed does not depend on answer quality). methods: keys of :data:`REAL_METHODS`.
    device: "cuda" for the benchmark; "cpu" runs the same harness (no cuDNN baseline: both dense
    rows are SDPA's CPU kernel) for tests.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("run_e2e_real needs a CUDA GPU (device='cuda')")
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ValueError(f"reps: must be an int >= 1, got {reps!r}")
    if not contexts or any(isinstance(n, bool) or not isinstance(n, int) or n < 16 for n in contexts):
        raise ValueError(f"contexts: prompt lengths must be ints >= 16, got {list(contexts)}")
    bad = [m for m in methods if m not in REAL_METHODS]
    if bad:
        raise ValueError(f"methods: unknown {bad}; choose from {list(REAL_METHODS)}")

    on_gpu = device.startswith("cuda")
    model, tok = load_model(model_path, device=device, dtype=torch.bfloat16 if on_gpu else torch.float32)
    cfg = model.config
    if getattr(cfg, "max_position_embeddings", 0) < max(contexts):
        cfg.max_position_embeddings = max(contexts)
    shape = {"batch": 1, "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
             "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
             "layers": cfg.num_hidden_layers}
    res = ResultsFile(out_path)
    dev = device_info()
    for n in contexts:
        ids = real_text_ids(tok, n).to(device)

        if on_gpu:
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                cudnn_ms = _time(model, ids, reps)
        else:
            cudnn_ms = _time(model, ids, reps)
        default_ms = _time(model, ids, reps)
        # the faster of the two dense runs is the baseline (the model's SDPA at its best here)
        baseline, dense_ms = min((("sdpa_cudnn" if on_gpu else "sdpa_cpu", cudnn_ms), ("sdpa_default", default_ms)),
                                 key=lambda x: x[1])
        profile = profile and on_gpu
        dense_prof = profile_split(model, ids) if profile else None
        if progress:
            print(f"{n:>7} dense sdpa cudnn {cudnn_ms:9.1f} ms, default {default_ms:9.1f} ms", flush=True)
        for key in methods:
            name, params = REAL_METHODS[key]
            m = sparsa.get_method(name, **params)
            with sparsa.apply(model, prefill=m, decode=None) as h:
                ms = _time(model, ids, reps)
                h.reset_stats()
                _forward(model, ids)
                st = h.stats("prefill")
                fallback = sum(int(bool(s.info.get("dense_fallback"))) for (_, p), s in h.layer_stats.items()
                               if p == "prefill")
                prof = profile_split(model, ids) if profile else None
            row = {"bench": "e2e_real", "method": name, "pass": "e2e_prefill", "shape": shape, "context": n,
                   "compression": params.get("compression"), "params": {"config": key, **params},
                   "ms": ms, "baseline": "sdpa_cudnn" if on_gpu else "sdpa_cpu", "baseline_ms": cudnn_ms, "speedup": cudnn_ms / ms,
                   "metrics": {"sdpa_default_ms": default_ms, "speedup_vs_best_dense": dense_ms / ms,
                               "best_dense": baseline, "achieved_compression": None if st is None else st.compression,
                               "dense_fallback_layers": fallback, "model": str(model_path),
                               "device": dev.get("device")}}
            if profile:
                row["metrics"]["profile"] = prof
                row["metrics"]["baseline_profile"] = dense_prof
            res.add(row)
            if progress:
                ach = row["metrics"]["achieved_compression"]
                print(f"{n:>7} {key:<22} {ms:9.1f} ms  {dense_ms / ms:5.2f}x  achieved "
                      f"{'-' if ach is None else f'{ach:.2f}'}  fallback layers {fallback}", flush=True)
                if prof:
                    print(f"        attn {prof['attention_ms']:.1f} gemm {prof['gemm_ms']:.1f} other "
                          f"{prof['other_ms']:.1f} host {prof['host_ms']:.1f} ms; top: {prof['top'][:4]}",
                          flush=True)
    return res.rows

"""End-to-end prefill and decode of a Llama-3-8B-shaped model (random bf16 weights) through transformers.

Prefill (:func:`run_e2e_bench`). Dense: the model's SDPA attention with the cuDNN backend (the
fastest dense kernel on Hopper) and with PyTorch's default backend choice. Sparse: the same
model under ``sparsa.apply`` with a prefill method, in the same run. Each time is the median of
``reps`` full forward passes (one warm-up first) over one random prompt, with the KV cache
filled as in serving and only the last position's logits computed. Peak GPU memory is reported
per configuration.

Decode (:func:`run_e2e_decode_bench`). Tokens per second of one-token forward passes (batch
16 by default) after a 64K-token context. Running a 64K prompt of 16 sequences through the
model would dominate the run, so every layer's cache is filled directly with random normal
keys and values of the right shape (and, for the methods that plan from the prompt, 32 random
prompt queries: SnapKV's observation window, the rows H2O accumulates): decode speed depends on
how many tokens each step reads, not on their values. Configurations, all in one run:

* ``sdpa`` (the baseline): the model's own SDPA attention (PyTorch's backend choice) on
  transformers' ``DynamicCache``, as ``generate()`` runs it (the cache grows by concatenation);
* ``full_cache``: ``sparsa.apply`` with SnapKV at compression 1, i.e. every token in sparsa's
  per-head store (appends in place, sparsa's decode kernel): dense decoding without the
  concatenation;
* each decode method through ``sparsa.apply(model, decode=...)`` on its compact store: Quest
  at its default 4,096-token budget, SnapKV / H2O / StreamingLLM at compression 10 (every layer).

Each configuration runs ``warmup`` steps, then ``steps`` steps timed with CUDA events (ms per
step, tokens/s = batch / step time). Two more measurements tell where a step's time goes: the
host time to issue one step (Python and launches, measured over a few steps issued to an idle
device, so the host never waits for it) and the GPU busy time per step (the kernels' device
time, from a profiler pass over a few more steps). When the host time exceeds the GPU busy
time, Python overhead bounds the speed (``host_bound`` in the row's metrics). Rows also carry the cache bytes held
(all layers) against the dense cache's, the achieved decode compression and peak memory. The
first step's logits of ``full_cache`` are compared with ``sdpa``'s (same keys, values and
tokens) as an end-to-end check of the compact path.

The per-layer shape is Llama-3-8B's (hidden 4096, 32 query heads, 8 KV heads, head_dim 128,
MLP 14336); ``layers`` below 32 keeps the run short without changing the per-layer ratio of
attention to linear time (recorded in each row's params).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

import sparsa

from .._validation import check_compression, check_int
from ..cache import dense_cache_bytes
from .timing import ResultsFile, rel_err

SHAPE = {"batch": 1, "heads": 32, "kv_heads": 8, "head_dim": 128}


def llama3_8b_config(layers: int = 32, max_positions: int = 131072) -> Any:
    from transformers import LlamaConfig  # local: defers transformers

    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                       rope_theta=500000.0, max_position_embeddings=max_positions, tie_word_embeddings=False)


def build_model(layers: int, max_positions: int, device: str = "cuda") -> torch.nn.Module:
    from transformers import LlamaForCausalLM  # local: defers transformers

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


def check_e2e_args(contexts: Sequence[int], methods: Sequence[str], *, layers: int = 32, reps: int = 2,
                   compression: float | None = None) -> None:
    """``ValueError`` / ``TypeError`` naming the first bad argument of :func:`run_e2e_bench` (no GPU needed)."""
    if not contexts or any(isinstance(n, bool) or not isinstance(n, int) or n < 16 for n in contexts):
        raise ValueError(f"contexts: prompt lengths must be ints >= 16, got {list(contexts)}")
    prefill = [m for m in sparsa.list_methods() if m != "dense" and sparsa.get_method(m).phase != "decode"]
    bad = [m for m in methods if m not in prefill]
    if not methods or bad:
        raise ValueError(f"methods: {bad or 'none given'}; choose sparse prefill methods from {prefill}")
    check_int("layers", layers, minimum=1)
    check_int("reps", reps, minimum=1)
    check_compression(compression)


def run_e2e_bench(contexts: Sequence[int], methods: Sequence[str], out_path: str | Path, *, layers: int = 32,
                  reps: int = 2, compression: float | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Time dense and sparse prefill end to end; rows are added to ``out_path`` as they come."""
    check_e2e_args(contexts, methods, layers=layers, reps=reps, compression=compression)
    if not torch.cuda.is_available():
        raise RuntimeError("run_e2e_bench needs a CUDA GPU")

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


# ----------------------------------------------------------------------------- decode

#: decode configurations: name -> (method, parameters); "full_cache" is every token in sparsa's store
DECODE_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "full_cache": ("snapkv", {"compression": 1.0}),
    "quest": ("quest", {"budget": 4096}),
    "snapkv": ("snapkv", {"compression": 10.0}),
    "h2o": ("h2o", {"compression": 10.0}),
    "streaming": ("streaming", {"compression": 10.0}),
}
PLAN_QUERIES = 32           # prompt queries the evicting methods plan from (SnapKV's default window)
PROFILE_STEPS = 4
HOST_PROBE_STEPS = 3


def _random_kv(layer: int, batch: int, kv_heads: int, context: int, head_dim: int, heads: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random normal (k, v (B, Hkv, L, D), q (B, H, PLAN_QUERIES, D)) of one layer, bf16."""
    gen = torch.Generator(device=device).manual_seed(1000 + layer)
    shape = (batch, kv_heads, context, head_dim)
    k = torch.randn(shape, generator=gen, device=device, dtype=torch.bfloat16)
    v = torch.randn(shape, generator=gen, device=device, dtype=torch.bfloat16)
    q = torch.randn(batch, heads, PLAN_QUERIES, head_dim, generator=gen, device=device, dtype=torch.bfloat16)
    return k, v, q


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device, reset: bool = False) -> float | None:
    if device.type != "cuda":
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def _gpu_busy_ms(step: Callable[[], None], n: int) -> float | None:
    """Sum of the device time of the kernels ``n`` steps run, per step (None without a profiler)."""
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                step()
            torch.cuda.synchronize()
        total = 0.0
        for evt in prof.key_averages():
            t = getattr(evt, "self_device_time_total", None)
            total += float(t if t is not None else getattr(evt, "self_cuda_time_total", 0.0))
        return total / 1000.0 / n
    except Exception as exc:  # noqa: BLE001 - the profiler is optional here
        print(f"  gpu busy time: profiler unavailable ({type(exc).__name__}: {str(exc)[:80]})", flush=True)
        return None


def _time_decode(model: torch.nn.Module, cache: Any, ids: torch.Tensor, steps: int,
                 warmup: int) -> dict[str, Any]:
    """Run ``warmup`` then ``steps`` greedy one-token forwards on ``cache``; returns the timings
    (ms per step from CUDA events, host ms per step to issue them, GPU busy ms per step) and the
    first step's last-position logits (float32, for the cross-check)."""
    from ..integrations.hf import compat  # local: loads transformers
    key = compat.cache_kwarg_name(model)
    device = ids.device
    state: dict[str, Any] = {"ids": ids, "first": None}

    def step() -> None:
        out = model(input_ids=state["ids"], use_cache=True, logits_to_keep=1, **{key: cache})
        logits = out.logits[:, -1]
        if state["first"] is None:
            state["first"] = logits.float().clone()
        state["ids"] = logits.argmax(-1, keepdim=True)

    with torch.no_grad():
        for _ in range(warmup):
            step()
        _sync(device)
        cuda = device.type == "cuda"
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall_ms = (time.perf_counter() - t0) * 1000.0 / steps
        if cuda:
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end) / steps
        else:
            ms = wall_ms
        # host cost of issuing a step, from an idle device: a few steps fit in the launch queue,
        # so the host does not wait for the device as it does in a long loop
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(HOST_PROBE_STEPS):
            step()
        host_ms = (time.perf_counter() - t0) * 1000.0 / HOST_PROBE_STEPS
        _sync(device)
        busy = _gpu_busy_ms(step, PROFILE_STEPS) if cuda else None
        finite = bool(torch.isfinite(state["first"]).all())
    return {"ms": ms, "host_ms": host_ms, "gpu_busy_ms": busy, "first_logits": state["first"], "finite": finite}


def check_e2e_decode_args(*, context: int, batch: int, layers: int, steps: int, warmup: int,
                          methods: Sequence[str] | None = None) -> list[str]:
    """Validate :func:`run_e2e_decode_bench`'s arguments (no GPU needed); returns the method names.
    ``ValueError`` naming the argument."""
    names = list(DECODE_METHODS) if methods is None else list(methods)
    unknown = [n for n in names if n not in DECODE_METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; choose from {list(DECODE_METHODS)}")
    for arg, val, lo in (("context", context, 2 * PLAN_QUERIES), ("batch", batch, 1), ("layers", layers, 1),
                         ("steps", steps, 1), ("warmup", warmup, 1)):
        if isinstance(val, bool) or not isinstance(val, int) or val < lo:
            raise ValueError(f"{arg}: must be an int >= {lo}, got {val!r}")
    return names


def run_e2e_decode_bench(out_path: str | Path, *, context: int = 65536, batch: int = 16, layers: int = 4,
                         steps: int = 32, warmup: int = 4, methods: Sequence[str] | None = None,
                         progress: bool = True, model: torch.nn.Module | None = None) -> list[dict[str, Any]]:
    """Decode tokens/s of dense SDPA and of each decode method in one run (see the module docstring).

    ``methods``: names from :data:`DECODE_METHODS` (default: all). Rows (pass ``e2e_decode``,
    baseline ``sdpa``) are added to ``out_path`` as they are measured; returns them. ``model``:
    a bf16 Llama-family causal LM to use instead of the Llama-3-8B-shaped one (``layers`` is then
    ignored; a CPU model runs the reference ops and times with the wall clock, for checks).
    """
    names = check_e2e_decode_args(context=context, batch=batch, layers=layers, steps=steps, warmup=warmup,
                                  methods=methods)
    if model is None and not torch.cuda.is_available():
        raise RuntimeError("run_e2e_decode_bench needs a CUDA GPU")
    from ..integrations.hf import compat  # local: loads transformers

    t_start = time.time()
    res = ResultsFile(out_path)
    if model is None:
        model = build_model(layers, context + warmup + steps + HOST_PROBE_STEPS + PROFILE_STEPS + 64)
    cfg = compat.text_config(model)
    layers = cfg.num_hidden_layers
    device = next(model.parameters()).device
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    shape = {"batch": batch, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim}
    gen = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (batch, 1), device=device, generator=gen)
    dense_bytes = dense_cache_bytes(batch, kv_heads, context, head_dim, torch.bfloat16) * layers

    def report(label: str, r: dict[str, Any], extra: str = "") -> None:
        if progress:
            busy = "n/a" if r["gpu_busy_ms"] is None else f"{r['gpu_busy_ms']:.2f}"
            print(f"{label:<11} {r['ms']:8.2f} ms/step {batch * 1000.0 / r['ms']:9.0f} tok/s  host {r['host_ms']:6.2f} "
                  f"ms  gpu busy {busy} ms{extra}", flush=True)

    # dense baseline: transformers' DynamicCache and the model's SDPA attention
    _peak_gib(device, reset=True)
    cache = compat.dynamic_cache_class()()
    with torch.no_grad():
        for layer in range(layers):
            k, v, _ = _random_kv(layer, batch, kv_heads, context, head_dim, heads, device)
            cache.update(k, v, layer)
            del k, v
    base = _time_decode(model, cache, ids, steps, warmup)
    base["peak_gib"] = _peak_gib(device)
    report("sdpa", base, f"  cache {dense_bytes / 2**30:.2f} GiB")
    del cache
    if device.type == "cuda":
        torch.cuda.empty_cache()

    rows = []
    for name in names:
        row = None
        try:
            row = _decode_row(name, model, ids, base, shape, context, steps, warmup, dense_bytes, report)
        except Exception as exc:  # noqa: BLE001 - one failing configuration must not lose the others
            print(f"{name:<11} FAILED: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        if row is None:
            if device.type == "cuda":
                torch.cuda.empty_cache()     # the failed configuration's cache is unreachable by now
            continue
        res.add(row)
        rows.append(row)
    if progress:
        print(f"done in {time.time() - t_start:.0f} s; rows in {res.path}", flush=True)
    return rows


def _decode_row(name: str, model: torch.nn.Module, ids: torch.Tensor, base: dict[str, Any], shape: dict[str, int],
                context: int, steps: int, warmup: int, dense_bytes: int,
                report: Callable[..., None]) -> dict[str, Any]:
    """Measure one decode configuration of :data:`DECODE_METHODS`; returns its results row."""
    from ..integrations.hf import compat  # local: loads transformers
    batch, heads, kv_heads, head_dim = shape["batch"], shape["heads"], shape["kv_heads"], shape["head_dim"]
    device = ids.device
    layers = compat.text_config(model).num_hidden_layers
    mname, params = DECODE_METHODS[name]
    method = sparsa.get_method(mname, **params)
    _peak_gib(device, reset=True)
    with sparsa.apply(model, decode=method) as handle:
        cache = handle.new_cache()
        t0 = time.perf_counter()
        with torch.no_grad():
            for layer in range(layers):
                k, v, q = _random_kv(layer, batch, kv_heads, context, head_dim, heads, device)
                handle.prefill_cache(cache, layer, k, v, q)
                del k, v, q
        _sync(device)
        build_s = time.perf_counter() - t0
        cache_bytes = cache.nbytes()            # after the prompt, before decoding
        r = _time_decode(model, cache, ids, steps, warmup)
        stats = handle.stats("decode")
        storage = cache.storage(0)
        tokens = float(cache.layer_tokens(0).double().mean())
    del cache
    peak = _peak_gib(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    check = rel_err(r["first_logits"], base["first_logits"]) if name == "full_cache" else None
    report(name, r, f"  x{base['ms'] / r['ms']:.2f}  c={stats.compression:.2f}  cache "
                    f"{cache_bytes / 2**30:.2f} GiB (1/{dense_bytes / cache_bytes:.1f})"
                    + (f"  logits rel err vs sdpa {check:.1e}" if check is not None else ""))
    if not r["finite"]:
        print(f"  WARNING: {name}: non-finite logits", flush=True)
    metrics = {
        "tokens_per_s": batch * 1000.0 / r["ms"], "baseline_tokens_per_s": batch * 1000.0 / base["ms"],
        "host_ms_per_step": r["host_ms"], "baseline_host_ms_per_step": base["host_ms"],
        "gpu_busy_ms_per_step": r["gpu_busy_ms"], "baseline_gpu_busy_ms_per_step": base["gpu_busy_ms"],
        "host_bound": r["host_ms"] >= (r["gpu_busy_ms"] if r["gpu_busy_ms"] is not None else r["ms"]),
        "cache_bytes": cache_bytes, "dense_cache_bytes": dense_bytes, "memory_ratio": dense_bytes / cache_bytes,
        "storage": storage, "tokens_per_head_layer0": tokens, "peak_gib": peak,
        "baseline_peak_gib": base["peak_gib"], "build_s": build_s, "steps": steps, "warmup": warmup,
        "finite": r["finite"], "kv_fill": "random normal keys/values, 32 random prompt queries",
    }
    if check is not None:
        metrics["first_logits_rel_err_vs_sdpa"] = check
    return {"bench": "e2e", "method": name, "pass": "e2e_decode", "shape": dict(shape), "context": context,
            "compression": stats.compression, "params": {"layers": layers, "decode": mname, **params},
            "ms": r["ms"], "baseline": "sdpa", "baseline_ms": base["ms"], "speedup": base["ms"] / r["ms"],
            "metrics": metrics}

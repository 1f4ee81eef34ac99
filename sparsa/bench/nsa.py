"""NSA benchmark: the Triton kernels against dense attention (and fla-core) on the same GPU.

Shapes: the paper's (64 query heads, 4 KV heads, head_dim 128) and 32/8 (head_dim 128),
batch 1 for prefill, batches 1 and 16 for decode; bf16, random normal inputs, sigmoid gates.
Configuration: the paper's (compression 32/16, selection 16 blocks of 64, window 512,
mean-pooled compressed tokens — the learned map would add a few small matrix products).

Timed in one run, ``triton.testing.do_bench`` medians (slow dense baselines, >= 100 ms, take
the median of 3 event-timed runs after a warm-up instead):

* prefill forward: everything online (mean-pool compression, compression attention with the
  fused top-k, window, selection with the gate mix) vs SDPA cuDNN and SDPA FLASH (FA2), causal;
  per-branch times in ``metrics``;
* prefill backward: the autograd backward of the same call vs the dense backward;
  per-branch times in ``metrics``;
* decode: one step over a ``context``-token cache (compressed cache precomputed, as a cache
  keeps it) vs SDPA over the full cache; both captured in a CUDA graph and replayed (the
  launch-bound batch-1 case measures the GPU, not Python), the plain call in ``metrics``, with
  ``read_floor_ms``: a plain kernel reading NSA's bytes once, timed the same way, and
  ``floor_speedup``: the baseline over that floor, the most any NSA decode could reach;
* fla-core (``fla.ops.nsa.parallel_nsa``, when importable): fla's variant (mean pooling,
  block = stride = sel_block = 64, 16 blocks, no window: fla's window needs flash-attn),
  checked against sparsa's kernels on the same inputs and timed in the same run.

Before timing, a correctness check at a size the reference can take (bf16 kernels vs the
float32 reference, relative error <= 1e-2 on outputs and gradients). Rows are written as they
are measured (schema: BENCHMARKS.md), so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..ops.dense.reference import causal_pairs
from ..ops.nsa import NSAConfig, compress_blocks, nsa_attention_ref, nsa_decode_ref, nsa_pairs_per_row
from ..ops.nsa import triton_bwd as tb
from ..ops.nsa import triton_decode as td
from ..ops.nsa import triton_fwd as tf
from ..ops.nsa.triton import nsa_attention_triton, nsa_decode_triton
from .stream_read import stream_read_ms
from .timing import ResultsFile, bench_ms, graph_ms, rel_err

SHAPES: dict[str, dict[str, int]] = {
    "paper": {"batch": 1, "heads": 64, "kv_heads": 4, "head_dim": 128},
    "32/8": {"batch": 1, "heads": 32, "kv_heads": 8, "head_dim": 128},
}
PAPER_CFG = NSAConfig()
FLA_CFG = NSAConfig(block=64, stride=64, sel_block=64, n_select=16, window=0)
CHECK_TOL = 1e-2
SLOW_MS = 100.0
# launch shapes (rows, num_warps, num_stages; keys per tile for the band kernels) tried besides
# the defaults when ``sweep`` is on
SWEEP: dict[str, list[tuple[int, ...]]] = {
    "band_dkdv": [(32, 8, 2, 64), (64, 8, 2, 128), (32, 8, 4, 128), (64, 8, 3, 128)],
    "band_dq": [(64, 8, 2, 32), (128, 8, 4, 64), (64, 4, 3, 64), (128, 8, 2, 32)],
    "slc_dkdv": [(32, 8, 2), (64, 8, 3), (16, 8, 3)],
    "slc": [(16, 4, 2), (32, 8, 2), (64, 8, 2)],
    "slc_dq": [(16, 4, 2), (32, 8, 2)],
    "cmp": [(128, 8, 2), (64, 8, 2)],
}
# decode: ((tokens per compressed sub-tile, window keys per tile, num_warps), selection
# num_warps, most sub-tiles per compressed program)
SWEEP_DECODE: list[tuple[tuple[int, int, int], int, int]] = [
    ((64, 64, 4), 1, 8), ((128, 64, 4), 1, 8), ((128, 128, 8), 1, 8), ((64, 64, 8), 1, 8),
    ((64, 64, 4), 4, 8), ((64, 64, 4), 1, 16), ((64, 64, 4), 1, 4),
]


# ----------------------------------------------------------------------------- helpers

class Budget:
    """Wall-clock budget of a run: measurements are skipped once it is spent."""

    def __init__(self, seconds: float | None) -> None:
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def allows(self, need_s: float) -> bool:
        return self.left() >= need_s


def _ms(fn: Callable[[], Any]) -> float:
    """do_bench median; for slow functions the median of 3 event-timed runs after a warm-up."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once = (time.perf_counter() - t0) * 1000.0
    if once < SLOW_MS:
        return bench_ms(fn, warmup=10.0, rep=max(40.0, 5 * once))
    times = []
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(sorted(times)[1])


def nsa_inputs(length: int, shape: dict[str, int], *, batch: int | None = None, seed: int = 0,
               device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, ...]:
    """Random q (B, H, L, D), k, v (B, Hkv, L, D), gates (B, H, L, 3) = sigmoid(normal), do like q."""
    b = shape["batch"] if batch is None else batch
    h, hkv, d = shape["heads"], shape["kv_heads"], shape["head_dim"]
    gen = torch.Generator(device=device).manual_seed(seed)

    def rnd(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen, device=device, dtype=torch.float32).to(dtype)

    q, k, v = rnd(b, h, length, d), rnd(b, hkv, length, d), rnd(b, hkv, length, d)
    gates = torch.sigmoid(rnd(b, h, length, 3).float()).to(dtype)
    return q, k, v, gates, rnd(b, h, length, d)


def _sdpa_fn(backend: str) -> Callable[..., torch.Tensor]:
    """SDPA forced to one backend ("sdpa_cudnn", "sdpa_flash"); grouped KV heads natively where the
    backend takes them, else repeated (noted by the caller through ``.gqa``)."""
    chosen = {"sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_flash": SDPBackend.FLASH_ATTENTION}[backend]
    state = {"gqa": "native"}

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
        with sdpa_kernel(chosen):
            if state["gqa"] == "native":
                try:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
                except RuntimeError:
                    state["gqa"] = "repeated"
            g = q.shape[1] // k.shape[1]
            return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                                  is_causal=causal)

    fn.state = state  # type: ignore[attr-defined]
    return fn


def prefill_pairs(cfg: NSAConfig, length: int, heads: int, batch: int = 1) -> dict[str, float]:
    """Query-key pairs per branch (all heads), compressed tokens counted as keys."""
    pos = torch.arange(length, dtype=torch.int64)
    cmp, slc, win = (float(x.sum()) * heads * batch for x in nsa_pairs_per_row(cfg, pos))
    return {"cmp": cmp, "slc": slc, "win": win}


def prefill_flops(cfg: NSAConfig, length: int, shape: dict[str, int]) -> tuple[float, float]:
    """(FLOPs the forward kernels compute: Q.K twice and P.V once for the compressed tokens, Q.K and
    P.V for the others; dense causal FLOPs)."""
    d = shape["head_dim"]
    pairs = prefill_pairs(cfg, length, shape["heads"], shape["batch"])
    ours = 6.0 * d * pairs["cmp"] + 4.0 * d * (pairs["slc"] + pairs["win"])
    dense = 4.0 * d * causal_pairs(length, length) * shape["heads"] * shape["batch"]
    return ours, dense


def _compression(cfg: NSAConfig, length: int) -> float:
    pairs = prefill_pairs(cfg, length, 1)
    return causal_pairs(length, length) / sum(pairs.values())


def _cfg_params(cfg: NSAConfig) -> dict[str, Any]:
    return {"block": cfg.block, "stride": cfg.stride, "sel_block": cfg.sel_block, "n_select": cfg.n_select,
            "window": cfg.window, "compress": "mean"}


# ----------------------------------------------------------------------------- correctness

def check_prefill(shape: dict[str, int], length: int, cfg: NSAConfig = PAPER_CFG, *, grads: bool = True,
                  seed: int = 1, device: str = "cuda") -> dict[str, float]:
    """Relative errors of the bf16 kernels against the float32 reference (outputs, and with
    ``grads`` dq, dk, dv, dgates), and the fraction of (query, KV head) block lists that agree."""
    q, k, v, gates, do = nsa_inputs(length, shape, seed=seed, device=device)
    # both sides read the same bf16 compressed tokens (what a bf16 model's cache holds): with
    # float32 ones on one side only, near-tied block scores flip and the check measures that
    kc, vc = compress_blocks(k, cfg).to(k.dtype), compress_blocks(v, cfg).to(v.dtype)
    leaves = [x.clone().requires_grad_(grads) for x in (q, k, v, gates, kc, vc)]
    out, aux = nsa_attention_triton(*leaves[:4], cfg, k_cmp=leaves[4], v_cmp=leaves[5], return_aux=True)
    ref_leaves = [x.float().clone().requires_grad_(grads) for x in (q, k, v, gates, kc, vc)]
    ref, raux = nsa_attention_ref(*ref_leaves[:4], cfg, k_cmp=ref_leaves[4], v_cmp=ref_leaves[5], return_aux=True)
    res = {"out": rel_err(out.detach(), ref.detach()),
           "idx_agree": float((aux.block_indices == raux.block_indices).all(-1).float().mean())}
    if grads:
        g = torch.autograd.grad(out, leaves, do)
        rg = torch.autograd.grad(ref, ref_leaves, do.float())
        for name, a, b in zip(("dq", "dk", "dv", "dgates", "dk_cmp", "dv_cmp"), g, rg):
            res[name] = rel_err(a, b)
    return res


def check_decode(shape: dict[str, int], length: int, batch: int, cfg: NSAConfig = PAPER_CFG,
                 seed: int = 2, device: str = "cuda") -> dict[str, float]:
    """Relative error of the decode kernels against the reference, and block-list agreement."""
    q, k, v, gates, _ = nsa_inputs(length, shape, batch=batch, seed=seed, device=device)
    q, gates = q[:, :, -1], gates[:, :, -1]
    kc, vc = compress_blocks(k, cfg), compress_blocks(v, cfg)
    out = nsa_decode_triton(q, k, v, gates, cfg, k_cmp=kc.to(k.dtype), v_cmp=vc.to(v.dtype))
    ref, _, _ = nsa_decode_ref(q.float(), k.float(), v.float(), gates.float(), cfg, k_cmp=kc.to(k.dtype).float(),
                                 v_cmp=vc.to(v.dtype).float())
    return {"out": rel_err(out, ref)}


def _fla_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """fla's parallel_nsa on sparsa-layout tensors (B, H, T, D) -> (B, H, T, D)."""
    from fla.ops.nsa import parallel_nsa  # local: optional dependency (flash-linear-attention)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    gt = gates.transpose(1, 2)
    o = parallel_nsa(qt, kt, vt, g_cmp=gt[..., 0], g_slc=gt[..., 1], g_swa=None, block_counts=FLA_CFG.n_select,
                     block_size=FLA_CFG.sel_block, window_size=0)
    return o.transpose(1, 2)


def fla_available() -> bool:
    try:
        from fla.ops.nsa import parallel_nsa  # local: optional dependency (flash-linear-attention)
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return callable(parallel_nsa)


# ----------------------------------------------------------------------------- measurements

def _row(method: str, pass_: str, shape: dict[str, int], context: int, compression: float, params: dict[str, Any],
         ms: float, baseline: str, baseline_ms: float, metrics: dict[str, Any]) -> dict[str, Any]:
    return {"bench": "nsa", "method": method, "pass": pass_, "shape": dict(shape), "context": context,
            "compression": round(compression, 3), "params": params, "ms": round(ms, 4), "baseline": baseline,
            "baseline_ms": round(baseline_ms, 4), "speedup": round(baseline_ms / ms, 3), "metrics": metrics}


def forward_branches(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, cfg: NSAConfig, *,
                     scale: float, interpreted: bool = False) -> dict[str, torch.Tensor]:
    """One forward pass of the kernels branch by branch, keeping what the branch timings and the
    backward kernels take: compressed ``kc``/``vc``, ``o_c``/``lse_c``/``idx`` (compression and
    top-k), ``o_w``/``lse_w`` (window), ``out``/``o_s``/``lse_s`` (selection and the gated mix)."""
    length = k.shape[2]
    kc = compress_blocks(k, cfg).to(k.dtype)
    vc = compress_blocks(v, cfg).to(v.dtype)
    o_c, lse_c, idx = tf.cmp_topk_fwd(q, kc, vc, kv_len=length, cfg=cfg, scale=scale, interpreted=interpreted)
    o_w, lse_w = tf.window_fwd(q, k, v, window=cfg.window, scale=scale, interpreted=interpreted)
    out, o_s, lse_s = tf.selection_fwd(q, k, v, idx, gates, o_c, o_w, sel_block=cfg.sel_block, scale=scale,
                                       interpreted=interpreted)
    return dict(kc=kc, vc=vc, o_c=o_c, lse_c=lse_c, idx=idx, o_w=o_w, lse_w=lse_w, out=out, o_s=o_s, lse_s=lse_s)


def bench_prefill(results: ResultsFile, length: int, shape_name: str, *, cfg: NSAConfig = PAPER_CFG,
                  baselines: Sequence[str] = ("sdpa_cudnn", "sdpa_flash"), backward: bool = True,
                  branches: bool = True, budget: Budget | None = None,
                  checks: dict[str, Any] | None = None, log: Callable[[str], None] = print) -> None:
    """Forward (and backward) of the kernels vs the dense baselines at one context length."""
    budget = budget or Budget(None)
    shape = SHAPES[shape_name]
    q, k, v, gates, do = nsa_inputs(length, shape)
    scale = shape["head_dim"] ** -0.5
    flops, dense_flops = prefill_flops(cfg, length, shape)
    comp = _compression(cfg, length)
    params = _cfg_params(cfg)
    metrics: dict[str, Any] = {"flops": flops, "checks": checks or {}}

    ms_fwd = _ms(lambda: nsa_attention_triton(q, k, v, gates, cfg))
    metrics["tflops"] = flops / ms_fwd / 1e9
    if branches:
        fb = forward_branches(q, k, v, gates, cfg, scale=scale)
        kc, vc, o_c, lse_c, idx = fb["kc"], fb["vc"], fb["o_c"], fb["lse_c"], fb["idx"]
        o_w, lse_w, o_s, lse_s = fb["o_w"], fb["lse_w"], fb["o_s"], fb["lse_s"]
        metrics["branch_ms"] = {
            "compress_pool": _ms(lambda: (compress_blocks(k, cfg).to(k.dtype), compress_blocks(v, cfg).to(v.dtype))),
            "cmp_topk": _ms(lambda: tf.cmp_topk_fwd(q, kc, vc, kv_len=length, cfg=cfg, scale=scale,
                                                    interpreted=False)),
            "cmp_without_topk": _ms(lambda: tf.cmp_topk_fwd(q, kc, vc, kv_len=length, cfg=cfg, scale=scale,
                                                            interpreted=False, topk=False)),
            "window": _ms(lambda: tf.window_fwd(q, k, v, window=cfg.window, scale=scale, interpreted=False)),
            "selection_gate": _ms(lambda: tf.selection_fwd(q, k, v, idx, gates, o_c, o_w, sel_block=cfg.sel_block,
                                                           scale=scale, interpreted=False)),
        }
    log(f"  ours fwd {ms_fwd:.2f} ms ({metrics['tflops']:.0f} TFLOP/s) {metrics.get('branch_ms', '')}")

    dense_fwd: dict[str, float] = {}
    for name in baselines:
        if not budget.allows(10):
            break
        fn = _sdpa_fn(name)
        try:
            dense_fwd[name] = _ms(lambda: fn(q, k, v))
        except RuntimeError as e:
            log(f"  {name} fwd failed: {e}")
            continue
        m = dict(metrics, baseline_tflops=dense_flops / dense_fwd[name] / 1e9, gqa=fn.state["gqa"])
        results.add(_row("nsa", "fwd", shape, length, comp, params, ms_fwd, name, dense_fwd[name], m))
        log(f"  {name} fwd {dense_fwd[name]:.2f} ms -> {dense_fwd[name] / ms_fwd:.2f}x")

    if not backward or not budget.allows(20):
        return
    leaves = [x.clone().requires_grad_() for x in (q, k, v, gates)]
    out = nsa_attention_triton(*leaves, cfg)
    ms_bwd = _ms(lambda: torch.autograd.grad(out, leaves, do, retain_graph=True))
    bmetrics: dict[str, Any] = {"checks": checks or {}, "flops": 2.5 * flops}
    bmetrics["tflops"] = bmetrics["flops"] / ms_bwd / 1e9
    if branches:
        gates_c = gates.contiguous()
        dq = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
        dk = torch.zeros(k.shape, device=q.device, dtype=torch.float32)
        dv = torch.zeros_like(dk)
        dkc = torch.zeros(kc.shape, device=q.device, dtype=torch.float32)
        dvc = torch.zeros_like(dkc)
        dg, delta = tb.preprocess(do, o_c, o_s, o_w, gates_c)
        common = dict(kv_len=length, window=cfg.window, cfg=cfg, scale=scale, interpreted=False)
        bmetrics["branch_ms"] = {
            "preprocess": _ms(lambda: tb.preprocess(do, o_c, o_s, o_w, gates_c)),
            "cmp_dq": _ms(lambda: tb.band_dq(q, kc, vc, do, lse_c, delta[0], gates_c, dq, mode=0, branch=0,
                                             accumulate=False, **common)),
            "cmp_dkdv": _ms(lambda: tb.band_dkdv(q, kc, vc, do, lse_c, delta[0], gates_c, dkc, dvc, mode=0,
                                                 branch=0, accumulate=False, **common)),
            "slc_dq": _ms(lambda: tb.selection_dq(q, k, v, idx, do, lse_s, delta[1], gates_c, dq,
                                                  sel_block=cfg.sel_block, scale=scale, accumulate=True,
                                                  interpreted=False)),
            "slc_index": _ms(lambda: tb.inverted_index(idx, -(-length // cfg.sel_block), tb.SEGMENT)),
            "slc_dkdv": _ms(lambda: tb.selection_dkdv(q, k, v, idx, do, lse_s, delta[1], gates_c, dk, dv,
                                                      sel_block=cfg.sel_block, scale=scale, interpreted=False)),
            "win_dq": _ms(lambda: tb.band_dq(q, k, v, do, lse_w, delta[2], gates_c, dq, mode=1, branch=2,
                                             accumulate=True, **common)),
            "win_dkdv": _ms(lambda: tb.band_dkdv(q, k, v, do, lse_w, delta[2], gates_c, dk, dv, mode=1, branch=2,
                                                 accumulate=True, **common)),
        }
    log(f"  ours bwd {ms_bwd:.2f} ms {bmetrics.get('branch_ms', '')}")
    out = None  # free the graph before the baselines
    for name in baselines:
        if not budget.allows(15):
            break
        fn = _sdpa_fn(name)
        dl = [x.clone().requires_grad_() for x in (q, k, v)]
        try:
            dout = fn(*dl)
            ms = _ms(lambda: torch.autograd.grad(dout, dl, do, retain_graph=True))
        except RuntimeError as e:
            log(f"  {name} bwd failed: {e}")
            continue
        m = dict(bmetrics, baseline_tflops=2.5 * dense_flops / ms / 1e9, gqa=fn.state["gqa"])
        results.add(_row("nsa", "bwd", shape, length, comp, params, ms_bwd, name, ms, m))
        log(f"  {name} bwd {ms:.2f} ms -> {ms / ms_bwd:.2f}x")
        dout = None


def decode_inputs(length: int, shape_name: str, batch: int, cfg: NSAConfig = PAPER_CFG
                  ) -> tuple[torch.Tensor, ...]:
    """Random bf16 decode inputs on the GPU (seed 3): q (B, H, D), k, v (B, Hkv, length, D),
    gates (B, H, 3) and the compressed cache k_cmp, v_cmp (B, Hkv, n_cmp, D)."""
    shape = SHAPES[shape_name]
    h, hkv, d = shape["heads"], shape["kv_heads"], shape["head_dim"]
    gen = torch.Generator(device="cuda").manual_seed(3)
    k = torch.randn(batch, hkv, length, d, generator=gen, device="cuda").to(torch.bfloat16)
    v = torch.randn(batch, hkv, length, d, generator=gen, device="cuda").to(torch.bfloat16)
    q = torch.randn(batch, h, d, generator=gen, device="cuda").to(torch.bfloat16)
    gates = torch.sigmoid(torch.randn(batch, h, 3, generator=gen, device="cuda")).to(torch.bfloat16)
    return q, k, v, gates, compress_blocks(k, cfg).to(k.dtype), compress_blocks(v, cfg).to(v.dtype)


def bench_decode(results: ResultsFile, length: int, shape_name: str, batch: int, *, cfg: NSAConfig = PAPER_CFG,
                 baselines: Sequence[str] = ("sdpa_cudnn", "sdpa_flash"), checks: dict[str, Any] | None = None,
                 log: Callable[[str], None] = print) -> None:
    """One decode step over a ``length``-token cache vs SDPA over the whole cache."""
    shape = dict(SHAPES[shape_name], batch=batch)
    hkv, d = shape["kv_heads"], shape["head_dim"]
    q1, k, v, g1, kc, vc = decode_inputs(length, shape_name, batch, cfg)
    read = min(length, cfg.n_compressed(length) + cfg.n_select * cfg.sel_block + cfg.window)
    bytes_read = 2.0 * batch * hkv * read * d * k.element_size()

    def ours() -> torch.Tensor:
        return nsa_decode_triton(q1, k, v, g1, cfg, k_cmp=kc, v_cmp=vc)

    ms_plain = _ms(ours)
    ms_graph = graph_ms(ours)
    ms = ms_plain if ms_graph is None else ms_graph
    metrics = {"plain_ms": ms_plain, "graph": ms_graph is not None, "tokens_read": read,
               "gbps": bytes_read / ms / 1e6, "checks": checks or {}}
    # the fastest a kernel could be that only reads these bytes once (timed the same way)
    floor_ms, _ = stream_read_ms(int(bytes_read))
    metrics["read_floor_ms"] = floor_ms
    log(f"  ours decode b{batch} {ms * 1000:.1f} us (plain {ms_plain * 1000:.1f} us, {metrics['gbps']:.0f} GB/s;"
        f" reading the same bytes alone: {floor_ms * 1000:.1f} us)")
    q4 = q1[:, :, None]
    for name in baselines:
        fn = _sdpa_fn(name)
        try:
            base_plain = _ms(lambda: fn(q4, k, v, causal=False))
        except RuntimeError as e:
            log(f"  {name} decode failed: {str(e)[:200]}")
            continue
        base_graph = graph_ms(lambda: fn(q4, k, v, causal=False)) if ms_graph is not None else None
        if base_graph is None:  # compare like with like: both plain
            ms, base = ms_plain, base_plain
        else:
            ms, base = ms_graph, base_graph
        m = dict(metrics, baseline_plain_ms=base_plain, gqa=fn.state["gqa"], graph=base_graph is not None,
                 baseline_gbps=2.0 * batch * hkv * length * d * k.element_size() / base / 1e6,
                 floor_speedup=base / floor_ms)
        results.add(_row("nsa", "decode", shape, length, length / read, dict(_cfg_params(cfg), batch=batch), ms,
                         name, base, m))
        log(f"  {name} decode b{batch} {base * 1000:.1f} us (plain {base_plain * 1000:.1f}) -> {base / ms:.2f}x")


def bench_fla(results: ResultsFile, length: int, check_length: int = 4096, *, backward: bool = True,
              budget: Budget | None = None, log: Callable[[str], None] = print) -> None:
    """fla-core's parallel_nsa vs sparsa's kernels, fla's variant, paper shape, same inputs."""
    shape = SHAPES["paper"]
    cfg = FLA_CFG
    gate3 = torch.tensor([1.0, 1.0, 0.0], device="cuda")
    q, k, v, gates, do = nsa_inputs(check_length, shape, seed=5)
    gates = gates * gate3.to(gates.dtype)
    ours = nsa_attention_triton(q, k, v, gates, cfg)
    theirs = _fla_call(q, k, v, gates)
    kc, vc = compress_blocks(k, cfg).to(k.dtype).float(), compress_blocks(v, cfg).to(v.dtype).float()
    ref = nsa_attention_ref(q.float(), k.float(), v.float(), gates.float(), cfg, k_cmp=kc, v_cmp=vc)
    # fla scores with q * scale rounded to bf16 first: on about 1% of rows that swaps one nearly
    # tied block, which moves those rows a lot. The same rounding in the reference tells such
    # flips apart from real differences.
    scale = shape["head_dim"] ** -0.5
    q_rounded = (q.float() * scale).to(q.dtype).float()
    ref_rounded = nsa_attention_ref(q_rounded, k.float(), v.float(), gates.float(), cfg, k_cmp=kc, v_cmp=vc,
                                    scale=1.0)
    checks = {"ours_vs_ref": rel_err(ours, ref), "fla_vs_ref": rel_err(theirs, ref),
              "fla_vs_ref_rounded_q": rel_err(theirs, ref_rounded), "ours_vs_fla": rel_err(ours, theirs)}
    log(f"  fla check at {check_length}: {checks}")

    q, k, v, gates, do = nsa_inputs(length, shape, seed=6)
    gates = gates * gate3.to(gates.dtype)
    comp = _compression(cfg, length)
    params = dict(_cfg_params(cfg), variant="fla")
    ms = _ms(lambda: nsa_attention_triton(q, k, v, gates, cfg))
    fla_ms = _ms(lambda: _fla_call(q, k, v, gates))
    results.add(_row("nsa", "fwd", shape, length, comp, params, ms, "fla", fla_ms, {"checks": checks}))
    log(f"  fla variant fwd: ours {ms:.2f} ms, fla {fla_ms:.2f} ms -> {fla_ms / ms:.2f}x")
    if not backward or not (budget or Budget(None)).allows(45):  # fla autotunes its backward kernels
        log("  fla backward not measured (budget)")
        return
    leaves = [x.clone().requires_grad_() for x in (q, k, v, gates)]
    out = nsa_attention_triton(*leaves, cfg)
    ms_b = _ms(lambda: torch.autograd.grad(out, leaves, do, retain_graph=True))
    out = None
    fl = [x.clone().requires_grad_() for x in (q, k, v, gates)]
    fout = _fla_call(*fl)
    fla_b = _ms(lambda: torch.autograd.grad(fout, fl, do, retain_graph=True))
    results.add(_row("nsa", "bwd", shape, length, comp, params, ms_b, "fla", fla_b, {"checks": checks}))
    log(f"  fla variant bwd: ours {ms_b:.2f} ms, fla {fla_b:.2f} ms -> {fla_b / ms_b:.2f}x")


def bench_sweep(length: int, shape_name: str, *, cfg: NSAConfig = PAPER_CFG, budget: Budget | None = None,
                log: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Times (ms) of the branch kernels of :data:`SWEEP` under each launch shape, default first."""
    budget = budget or Budget(None)
    shape = SHAPES[shape_name]
    q, k, v, gates, do = nsa_inputs(length, shape)
    scale = shape["head_dim"] ** -0.5
    fb = forward_branches(q, k, v, gates, cfg, scale=scale)
    kc, vc, o_c, lse_c, idx = fb["kc"], fb["vc"], fb["o_c"], fb["lse_c"], fb["idx"]
    o_w, o_s, lse_s = fb["o_w"], fb["o_s"], fb["lse_s"]
    _, delta = tb.preprocess(do, o_c, o_s, o_w, gates)
    dk = torch.zeros(k.shape, device=q.device, dtype=torch.float32)
    dv = torch.zeros_like(dk)
    dq = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
    dkc = torch.zeros(kc.shape, device=q.device, dtype=torch.float32)
    dvc = torch.zeros_like(dkc)
    common = dict(kv_len=length, window=cfg.window, cfg=cfg, scale=scale, interpreted=False)
    timers = {
        "cmp": lambda: tf.cmp_topk_fwd(q, kc, vc, kv_len=length, cfg=cfg, scale=scale, interpreted=False),
        "slc": lambda: tf.selection_fwd(q, k, v, idx, gates, o_c, o_w, sel_block=cfg.sel_block, scale=scale,
                                        interpreted=False),
        "band_dkdv": lambda: tb.band_dkdv(q, kc, vc, do, lse_c, delta[0], gates, dkc, dvc, mode=0, branch=0,
                                          accumulate=False, **common),
        "band_dq": lambda: tb.band_dq(q, kc, vc, do, lse_c, delta[0], gates, dq, mode=0, branch=0, accumulate=False,
                                      **common),
        "slc_dq": lambda: tb.selection_dq(q, k, v, idx, do, lse_s, delta[1], gates, dq, sel_block=cfg.sel_block,
                                          scale=scale, accumulate=False, interpreted=False),
        "slc_dkdv": lambda: tb.selection_dkdv(q, k, v, idx, do, lse_s, delta[1], gates, dk, dv,
                                              sel_block=cfg.sel_block, scale=scale, interpreted=False),
    }
    found: dict[str, dict[str, float]] = {}
    for key, alts in SWEEP.items():
        default = tf.LAUNCH[key]
        found[key] = {str(default): _ms(timers[key])}
        for alt in [a for a in alts if a != default]:   # as the decode sweep: the default is timed once
            if not budget.allows(10):
                break
            tf.LAUNCH[key] = alt
            try:
                found[key][str(alt)] = _ms(timers[key])
            except Exception as e:  # noqa: BLE001 - a variant that does not compile is reported
                found[key][str(alt)] = float("nan")
                log(f"  sweep {key} {alt}: {type(e).__name__}: {str(e)[:200]}")
            finally:
                tf.LAUNCH[key] = default
        log(f"  sweep {key}: {found[key]}")
    # the compression pass with its top-k taken by torch.topk over stored keys
    default = tf.LAUNCH["cmp"]
    for alt in (default, (64, 8, 2)):
        if not budget.allows(10):
            break
        tf.TOPK_IN_KERNEL, tf.LAUNCH["cmp"] = False, alt
        try:
            found["cmp"][f"stored keys {alt}"] = _ms(timers["cmp"])
        finally:
            tf.TOPK_IN_KERNEL, tf.LAUNCH["cmp"] = True, default
        log(f"  sweep cmp, stored keys {alt}: {found['cmp'][f'stored keys {alt}']:.2f} ms")
    found.update(bench_decode_sweep(length, shape_name, cfg=cfg, budget=budget, log=log))
    return found


def bench_decode_sweep(length: int, shape_name: str, *, cfg: NSAConfig = PAPER_CFG, budget: Budget | None = None,
                       batches: Sequence[int] = (1, 16), log: Callable[[str], None] = print
                       ) -> dict[str, dict[str, float]]:
    """Times (us, CUDA-graph replay where it captures) of one decode step under each launch shape
    of :data:`SWEEP_DECODE`, default first, per batch size."""
    budget = budget or Budget(None)
    default = (td.DEC_CMP_LAUNCH, td.DEC_SPARSE_WARPS, td.DEC_MAX_NSUB)
    found: dict[str, dict[str, float]] = {}
    for batch in batches:
        q, k, v, g, kc, vc = decode_inputs(length, shape_name, batch, cfg)
        key = f"decode_b{batch}"
        found[key] = {}
        for alt in [default] + [a for a in SWEEP_DECODE if a != default]:
            if not budget.allows(5):
                break
            td.DEC_CMP_LAUNCH, td.DEC_SPARSE_WARPS, td.DEC_MAX_NSUB = alt
            try:
                fn = lambda: nsa_decode_triton(q, k, v, g, cfg, k_cmp=kc, v_cmp=vc)  # noqa: E731
                ms = graph_ms(fn)
                found[key][str(alt)] = 1000.0 * (_ms(fn) if ms is None else ms)
            except Exception as e:  # noqa: BLE001 - a variant that does not compile is reported
                found[key][str(alt)] = float("nan")
                log(f"  sweep {key} {alt}: {type(e).__name__}: {str(e)[:200]}")
            finally:
                td.DEC_CMP_LAUNCH, td.DEC_SPARSE_WARPS, td.DEC_MAX_NSUB = default
        log(f"  sweep {key} (us): {found[key]}")
    return found


def run_nsa_bench(contexts: Sequence[int] = (65536,), shapes: Sequence[str] = ("paper",), *,
                  passes: Sequence[str] = ("fwd", "bwd", "decode"), decode_batches: Sequence[int] = (1, 16),
                  baselines: Sequence[str] = ("sdpa_cudnn", "sdpa_flash"), check: bool = True, fla: bool = True,
                  sweep: bool = False, out_path: str | Path = "benchmarks/results/nsa.json",
                  budget_s: float | None = None, skip_checks: Sequence[str] = (),
                  log: Callable[[str], None] = print) -> ResultsFile:
    """The whole benchmark; returns the results file (rows written as they come)."""
    if not torch.cuda.is_available():
        raise RuntimeError("sparsa bench nsa needs a CUDA GPU")
    budget = Budget(budget_s)
    results = ResultsFile(out_path)
    log(f"device: {results.header['device']}, torch {results.header['torch']}, triton {results.header['triton']}")
    checks: dict[str, dict[str, Any]] = {}
    for i, shape_name in enumerate(shapes):
        shape = SHAPES[shape_name]
        if i > 0 and not budget.allows(60):
            log(f"budget spent: shape {shape_name} not measured")
            continue
        if check:
            t0 = time.monotonic()
            c: dict[str, Any] = {}
            chunk, tb.Q_CHUNK = tb.Q_CHUNK, 512      # exercise the split dK/dV path
            for name, run in (("prefill_2048", lambda: check_prefill(shape, 2048)),
                              ("prefill_4097_fwd", lambda: check_prefill(shape, 4097, grads=False)),
                              ("decode_8229_b2", lambda: check_decode(shape, 8229, 2))):
                if name in skip_checks:
                    continue
                try:
                    c[name] = run()
                except Exception as e:  # noqa: BLE001
                    c[name] = {"error": float("nan")}
                    log(f"check {shape_name} {name} FAILED: {type(e).__name__}: {e}")
                tb.Q_CHUNK = chunk
            checks[shape_name] = c
            worst = max(val for part in c.values() for key, val in part.items() if key != "idx_agree")
            log(f"check {shape_name} ({time.monotonic() - t0:.0f} s, compile included): {c}")
            if not worst <= CHECK_TOL:
                log(f"CHECK FAILED for {shape_name}: worst relative error {worst:.3g} > {CHECK_TOL}")
        for length in contexts:
            if not budget.allows(20):
                log(f"budget spent: {shape_name} {length} not measured")
                continue
            log(f"{shape_name} {length}")
            if "fwd" in passes:
                try:
                    bench_prefill(results, length, shape_name, baselines=baselines, backward="bwd" in passes,
                                  budget=budget, checks=checks.get(shape_name), log=log)
                except Exception as e:  # noqa: BLE001 - keep measuring the rest; the log says what failed
                    log(f"  prefill {shape_name} {length} FAILED: {type(e).__name__}: {e}")
            torch.cuda.empty_cache()
            if "decode" in passes:
                for batch in decode_batches:
                    if budget.allows(8):
                        try:
                            bench_decode(results, length, shape_name, batch, baselines=baselines,
                                         checks=checks.get(shape_name), log=log)
                        except Exception as e:  # noqa: BLE001
                            log(f"  decode {shape_name} {length} b{batch} FAILED: {type(e).__name__}: {e}")
            torch.cuda.empty_cache()
        if i == 0 and fla:
            if fla_available() and budget.allows(30):
                log("fla-core comparison")
                try:
                    bench_fla(results, max(contexts), backward="bwd" in passes, budget=budget, log=log)
                except Exception as e:  # noqa: BLE001
                    log(f"  fla FAILED: {type(e).__name__}: {e}")
            else:
                log("fla-core not measured (not importable or budget spent)")
        if i == 0 and sweep and budget.allows(20):
            log("launch-shape sweep")
            try:
                sweep_rows = bench_sweep(max(contexts), shape_name, budget=budget, log=log)
                for row in results.rows:
                    if row["shape"] == shape and row["context"] == max(contexts) and row["pass"] == "bwd":
                        row.setdefault("metrics", {})["sweep"] = sweep_rows
                results.write()
            except Exception as e:  # noqa: BLE001
                log(f"  sweep FAILED: {type(e).__name__}: {e}")
    summary(results.rows, log)
    return results


def summary(rows: Sequence[dict[str, Any]], log: Callable[[str], None] = print) -> None:
    """A short table of the rows."""
    log(f"{'shape':>14} {'ctx':>7} {'pass':>6} {'b':>3} {'ours ms':>10} {'baseline':>11} {'base ms':>10} {'x':>7}")
    for r in rows:
        s = r["shape"]
        log(f"{s['heads']:>4}/{s['kv_heads']}/{s['head_dim']:<5} {r['context']:>7} {r['pass']:>6} {s['batch']:>3} "
            f"{r['ms']:>10.4f} {r['baseline']:>11} {r['baseline_ms']:>10.4f} {r['speedup']:>7.2f}")


def plot_svg(json_path: str | Path, svg_path: str | Path) -> None:
    """Bar chart of the speedups in a results file (one bar per row; of a file that keeps several
    runs under ``runs``, the rows of the latest), as a dependency-free SVG."""
    data = json.loads(Path(json_path).read_text())
    rows = data["rows"]
    if data.get("runs"):
        latest = max(data["runs"], key=data["runs"].get)
        rows = [r for r in rows if r.get("metrics", {}).get("run") == latest] or rows
        data = dict(data, created=data["runs"][latest])
    bar_h, left, width = 18, 430, 520
    height = 60 + bar_h * len(rows)
    top = max([r["speedup"] for r in rows] + [1.0])
    scale = width / math.log10(max(top * 1.5, 2.0) / 0.1)

    def x_of(s: float) -> float:
        return left + scale * math.log10(max(s, 0.1) / 0.1)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
           'font-family="monospace" font-size="11">',
           f'<text x="10" y="20" font-size="13">NSA speedup, same run — {data["device"]}, torch {data["torch"]}, '
           f'triton {data["triton"]}</text>']
    for tick in (0.5, 1, 2, 5, 10, 20):
        if tick <= top * 1.5:
            xt = x_of(tick)
            out.append(f'<line x1="{xt:.1f}" y1="35" x2="{xt:.1f}" y2="{height - 20}" stroke="#ccc"/>')
            out.append(f'<text x="{xt - 8:.1f}" y="{height - 6}">{tick}x</text>')
    for i, r in enumerate(rows):
        y = 40 + i * bar_h
        s = r["shape"]
        label = (f'{s["heads"]}/{s["kv_heads"]} {r["context"] // 1024}K {r["pass"]} b{s["batch"]} '
                 f'{r["params"].get("variant", "paper")} vs {r["baseline"]}')
        color = "#4a7" if r["speedup"] >= 1 else "#c54"
        out.append(f'<text x="10" y="{y + 12}">{label}</text>')
        out.append(f'<rect x="{left}" y="{y + 2}" width="{max(1.0, x_of(r["speedup"]) - left):.1f}" '
                   f'height="{bar_h - 5}" fill="{color}"/>')
        out.append(f'<text x="{x_of(r["speedup"]) + 4:.1f}" y="{y + 12}">{r["speedup"]:.2f}x ({r["ms"]:.3g} ms)</text>')
    out.append("</svg>")
    Path(svg_path).write_text("\n".join(out) + "\n")


__all__ = ["FLA_CFG", "PAPER_CFG", "SHAPES", "bench_decode", "bench_fla", "bench_prefill", "check_decode",
           "check_prefill", "fla_available", "nsa_inputs", "plot_svg", "prefill_flops", "run_nsa_bench", "summary"]


def main(argv: list[str] | None = None) -> None:
    """Command-line entry of the NSA benchmark (`sparsa bench nsa`, `python benchmarks/nsa.py`)."""
    ap = argparse.ArgumentParser(prog="sparsa bench nsa", description="NSA kernels vs SDPA cuDNN / FA2 (and fla-core) on one GPU.", formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, nargs="+", default=[65536])
    ap.add_argument("--shapes", nargs="+", default=["paper"], choices=sorted(SHAPES))
    ap.add_argument("--passes", nargs="+", default=["fwd", "bwd", "decode"], choices=["fwd", "bwd", "decode"])
    ap.add_argument("--decode-batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--baselines", nargs="+", default=["sdpa_cudnn", "sdpa_flash"])
    ap.add_argument("--no-check", action="store_true", help="skip the correctness checks against the reference")
    ap.add_argument("--skip-checks", nargs="*", default=[],
                    choices=["prefill_2048", "prefill_4097_fwd", "decode_8229_b2"], help="checks to leave out")
    ap.add_argument("--no-fla", action="store_true", help="skip the fla-core comparison")
    ap.add_argument("--sweep", action="store_true", help="also time alternative launch shapes of the branch kernels")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting measurements after this many seconds")
    ap.add_argument("--out", default="benchmarks/results/nsa.json")
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args(argv)
    if not args.plot_only:
        run_nsa_bench(args.contexts, args.shapes, passes=args.passes, decode_batches=args.decode_batches,
                      baselines=args.baselines, check=not args.no_check, fla=not args.no_fla, sweep=args.sweep,
                      out_path=args.out, skip_checks=args.skip_checks,
                      budget_s=args.budget_s)
    plot_svg(args.out, args.out.rsplit(".", 1)[0] + ".svg")


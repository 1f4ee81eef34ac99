"""Decode benchmark: one decode step of each method on its compact cache, against dense decoding.

Shapes: 32 query / 8 KV heads and 64 query / 4 KV heads, head_dim 128, bf16, batch 1 and 16,
contexts 16K-128K. Methods: H2O, SnapKV, Ada-SnapKV, StreamingLLM at compression 5/10/20 and
Quest (the paper's 4,096-token budget with 16-token pages, and compression 5/10/20; page
bounds stored as int8 codes, the default on these caches), each on a bf16, int8 or int4
cache. Baselines in the same run: PyTorch SDPA with the cuDNN and FLASH (FA2) backends over
the full bf16 cache (the query group is laid out as query rows, so each KV head is
read once), and sparsa's own kernel over the full cache.

A step is everything the method does online: append the new token (quantizing it), attend, and
H2O's score accumulation and eviction / StreamingLLM's eviction / Quest's page scoring and
selection. Steps and baselines are captured in CUDA graphs and timed with
``triton.testing.do_bench`` (median; the L2 cache is flushed before every replay). Methods whose
cache grows (SnapKV, Ada-SnapKV, Quest) undo the append after each timed step, so every replay
sees the same cache.

The prompt-time selection of the evicting methods is not part of a step and is synthesised here
(kept positions drawn at random with the method's budgets; Ada-SnapKV's per-head budgets from
its own adaptive split of random scores whose spread differs per head): step time depends on
how many tokens each head keeps, not on which.

Reported per row: time, the dense baseline's time and the speedup; achieved compression
(context / tokens read, page bounds counted in token-equivalents of their bytes), bytes read
and achieved GB/s; cache bytes held and the dense bf16 cache's. ``main`` is the command-line
entry (``python benchmarks/decode.py``).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import sparsa

from ..methods import init_cache, method_class
from ..ops.sparse_decode import default_bounds
from ..ops.sparse_decode.reference import paged_decode_ref, quest_page_scores_ref, quest_select_ref, varlen_decode_ref
from .timing import ResultsFile, bench_ms, rel_err

SHAPES = {"32q8kv": (32, 8), "64q4kv": (64, 4)}
HEAD_DIM = 128
CONTEXTS = (16384, 32768, 65536, 131072)
BATCHES = (16, 1)
METHODS = ("quest", "h2o", "snapkv", "ada_snapkv", "streaming")
COMPRESSIONS = (10.0, 5.0, 20.0)
QUANTS = (None, "int8", "int4")
BASELINES = ("sdpa_cudnn", "sdpa_flash")
CHECK_TOL = 1e-2


# ----------------------------------------------------------------------------- decoders

def build_decoder(name: str | None, compression: float | None, k: torch.Tensor, v: torch.Tensor, heads: int,
                  quant: str | None, gen: torch.Generator, *, budget: int | None = None):
    """A decoder of the registered decode method ``name`` (None: dense) at ``compression`` (or
    with its ``budget`` field, e.g. Quest's) over the prompt k, v (B, Hkv, L, D): the method's
    :meth:`~sparsa.methods.DecodeMethod.random_decoder`, whose prompt selection, where planning
    it would be costly, is drawn with ``gen`` (see the module docstring)."""
    b, _, _, d = k.shape
    if name is None:
        q0 = torch.empty(b, heads, 1, d, dtype=k.dtype, device=k.device)
        return init_cache(None, q0, k, v, quant=quant)
    m = sparsa.get_method(name, budget=budget) if budget else sparsa.get_method(name, compression=compression)
    if not m.compacts:
        raise ValueError(f"method: {name} has no compact decoder to benchmark")
    return m.random_decoder(k, v, heads=heads, quant=quant, generator=gen)


# ----------------------------------------------------------------------------- timing helpers

def graph_ms(fn: Callable[[], Any], *, warmup: float = 5.0, rep: float = 25.0) -> float:
    """Median time of ``fn`` replayed from a CUDA graph (fn is run twice first, outside it)."""
    fn()
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    torch.cuda.synchronize()
    return bench_ms(g.replay, warmup=warmup, rep=rep)


def sweep_launch(kind: str, variants: Sequence[dict[str, int]], fn: Callable[[], Any], deadline: float, *,
                 label: str | None = None, required: bool = False) -> tuple[float, dict[str, int]] | None:
    """Time ``fn`` (CUDA graph) under each launch variant of the decode kernel family ``kind``
    until ``time.time()`` passes ``deadline``; make the fastest the default and return (ms,
    variant), or None when the deadline passed before any ran. With ``required`` at least one
    variant runs, a variant that fails (compiler limits on some cards) is reported and skipped,
    and an error is raised when every one fails."""
    from ..ops.sparse_decode import triton as kt  # local: defers triton
    best = None
    for var in variants:
        if time.time() > deadline and (best is not None or not required):
            break
        kt.set_launch_defaults(kind, **var)
        try:
            t = graph_ms(fn)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other variants
            if not required:
                raise
            print(f"  {label or kind} {var}: failed ({type(exc).__name__}: {str(exc)[:120]})", flush=True)
            torch.cuda.synchronize()
            continue
        print(f"  {label or kind} {var}: {t * 1000:.1f} us", flush=True)
        if best is None or t < best[0]:
            best = (t, var)
    if best is None:
        if required:
            raise RuntimeError(f"every {kind} launch variant failed")
        return None
    kt.set_launch_defaults(kind, **best[1])
    return best


def dense_baselines(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    names: Sequence[str] = BASELINES) -> dict[str, Callable[[], torch.Tensor]]:
    """SDPA decode over the full cache; q (B, H, D) is laid out as (B, Hkv, group, D)."""
    b, h, d = q.shape
    hkv = k.shape[1]
    qg = q.view(b, hkv, h // hkv, d)
    fns = {}
    for name, be in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
        if name not in names:
            continue

        def run(be=be) -> torch.Tensor:
            with sdpa_kernel(be):
                return F.scaled_dot_product_attention(qg, k, v)
        try:
            run()
            torch.cuda.synchronize()
            fns[name] = run
        except Exception as exc:  # noqa: BLE001 - a backend without a kernel for this shape is skipped
            print(f"  {name}: skipped ({type(exc).__name__}: {str(exc)[:100]})", flush=True)
    return fns


def copy_bandwidth_gbps() -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), 1 GiB buffers."""
    x = torch.empty(1 << 29, dtype=torch.int16, device="cuda").random_()
    y = torch.empty_like(x)
    ms = bench_ms(lambda: y.copy_(x), warmup=5, rep=30)
    return 2 * x.numel() * 2 / ms / 1e6


# ----------------------------------------------------------------------------- checks

def check_decoder(dec, q: torch.Tensor) -> dict[str, float]:
    """Compare the kernels with the reference ops on this decoder's cache (no state change)."""
    # local: defers triton
    from ..ops.sparse_decode.triton import (paged_decode_triton, quest_page_scores_triton, quest_select_triton,
                                            varlen_decode_triton)
    c = dec.cache
    if dec.storage == "paged":
        ps = c.page_size
        bound = (max(c.seq_lens_host) - 1) // ps + 1
        nsel = [bound if n is None else min(n, bound) for n in dec.n_select_host]
        s_tri = quest_page_scores_triton(q, c.kmin, c.kmax, c.page_table, c.seq_lens, ps, max_pages=bound,
                                         scale=c.kscale)
        s_ref = quest_page_scores_ref(q, c.kmin, c.kmax, c.page_table[:, :bound], c.seq_lens, ps, scale=c.kscale)
        fin = torch.isfinite(s_ref)
        score_err = float(((s_tri - s_ref).abs()[fin]).max() / s_ref[fin].abs().max())
        plist, nlist = quest_select_triton(s_tri, c.seq_lens, ps, dec.n_select, max(nsel) + 1)
        same = bool(torch.equal(plist, quest_select_ref(s_tri, c.seq_lens, ps, torch.tensor(nsel, device=q.device))))
        out = paged_decode_triton(q, c.k, c.v, c.page_table, c.seq_lens, plist, nlist, page_size=ps)
        ref = paged_decode_ref(q, c.k, c.v, c.page_table, c.seq_lens, plist, page_size=ps)
        return {"rel_err": rel_err(out, ref), "score_rel_err": score_err, "select_equal": float(same)}
    out, _ = varlen_decode_triton(q, c.k, c.v, c.start, c.length, max_len=c.max_len_bound)
    ref = varlen_decode_ref(q, c.k, c.v, c.start, c.length)
    return {"rel_err": rel_err(out, ref)}


def check_step(dec, q: torch.Tensor, kn: torch.Tensor, vn: torch.Tensor) -> dict[str, float]:
    """One whole step (append with quantization, attention, eviction / page selection) through the
    kernels and through the reference ops, on two copies of the decoder's state."""
    a, b = copy.deepcopy(dec), copy.deepcopy(dec)
    a.backend, b.backend = "triton", "reference"
    out_a, _ = a.step(q, kn, vn)
    out_b, _ = b.step(q, kn, vn)
    res = {"step_rel_err": rel_err(out_a, out_b)}
    if a.storage == "paged":
        res["step_same_pages"] = float((a.last_page_list == b.last_page_list).double().mean())
    else:
        pa, pb = a.cache.positions(), b.cache.positions()
        w = max(pa.shape[-1], pb.shape[-1])
        pa = F.pad(pa, (0, w - pa.shape[-1]), value=-1)
        pb = F.pad(pb, (0, w - pb.shape[-1]), value=-1)
        res["step_same_kept"] = float((pa == pb).all(-1).double().mean())
    del a, b
    return res


# ----------------------------------------------------------------------------- runner

class DecodeBench:
    """Runs settings (shape, context, batch) and writes rows as they are measured."""

    def __init__(self, out_path: str | Path, deadline: float, check: bool = True) -> None:
        self.file = ResultsFile(out_path)
        self.deadline = deadline
        self.check = check
        self.table: list[str] = []
        self.done = {ResultsFile._key(r) for r in self.file.rows}
        self.base_cache: dict[tuple, dict[str, float]] = {}
        self.checked: set[tuple] = set()
        self.copy_gbps = copy_bandwidth_gbps()
        print(f"device {self.file.header['device']}: copy bandwidth {self.copy_gbps:.0f} GB/s", flush=True)

    def out_of_time(self) -> bool:
        return time.time() > self.deadline

    def _row(self, method: str, shape: dict, context: int, compression: float, params: dict, ms: float,
             baseline: str, base_ms: float, metrics: dict) -> dict:
        return {"bench": "decode", "method": method, "pass": "decode", "shape": shape, "context": context,
                "compression": round(compression, 3), "params": params, "ms": round(ms, 5), "baseline": baseline,
                "baseline_ms": round(base_ms, 5), "speedup": round(base_ms / ms, 3), "metrics": metrics}

    def _seen(self, method: str, shape: dict, context: int, params: dict) -> bool:
        probe = {"bench": "decode", "method": method, "pass": "decode", "context": context, "params": params,
                 "baseline": "sdpa_cudnn", "shape": shape}
        return ResultsFile._key(probe) in self.done

    def setting(self, shape_name: str, context: int, batch: int, jobs: Sequence[tuple[str | None, Any, Any]],
                seed: int = 0) -> None:
        """Measure ``jobs`` (method, compression or ("budget", n), quant) at one setting."""
        heads, hkv = SHAPES[shape_name]
        shape = {"batch": batch, "heads": heads, "kv_heads": hkv, "head_dim": HEAD_DIM}
        todo = []
        for name, comp, quant in jobs:
            params = _params(name, comp, quant)
            if not self._seen(name or "dense", shape, context, params):
                todo.append((name, comp, quant, params))
        if not todo or self.out_of_time():
            return
        dev = torch.device("cuda")
        gen = torch.Generator(device=dev).manual_seed(seed)
        k = torch.randn(batch, hkv, context, HEAD_DIM, generator=gen, device=dev, dtype=torch.bfloat16)
        v = torch.randn(batch, hkv, context, HEAD_DIM, generator=gen, device=dev, dtype=torch.bfloat16)
        q = torch.randn(batch, heads, HEAD_DIM, generator=gen, device=dev, dtype=torch.bfloat16)
        kn = torch.randn(batch, hkv, HEAD_DIM, generator=gen, device=dev, dtype=torch.bfloat16)
        vn = torch.randn(batch, hkv, HEAD_DIM, generator=gen, device=dev, dtype=torch.bfloat16)
        dense_bytes = 2 * batch * hkv * context * HEAD_DIM * 2
        key = (shape_name, context, batch)
        if key not in self.base_cache:
            kf = torch.cat([k, kn[:, :, None]], 2)           # the dense cache after the append
            vf = torch.cat([v, vn[:, :, None]], 2)
            self.base_cache[key] = {bname: graph_ms(fn) for bname, fn in dense_baselines(q, kf, vf).items()}
            del kf, vf
            torch.cuda.empty_cache()
        base = self.base_cache[key]
        label = f"{shape_name} ctx={context // 1024}K B={batch}"
        print(f"{label}: " + ", ".join(f"{n} {t * 1000:.0f} us" for n, t in base.items()), flush=True)
        if not base:
            return
        for name, comp, quant, params in todo:
            if self.out_of_time():
                print("  deadline reached", flush=True)
                break
            try:
                self._one(name, comp, quant, params, shape, context, q, k, v, kn, vn, gen, base, dense_bytes, label)
            except torch.cuda.OutOfMemoryError as exc:
                print(f"  {name} {params}: out of memory ({str(exc)[:80]})", flush=True)
            torch.cuda.empty_cache()

    def _one(self, name, comp, quant, params, shape, context, q, k, v, kn, vn, gen, base, dense_bytes, label):
        budget = comp[1] if isinstance(comp, tuple) else None
        target = None if isinstance(comp, tuple) else comp
        dec = build_decoder(name, target, k, v, q.shape[1], quant, gen, budget=budget)
        metrics: dict[str, Any] = {}
        ckey = (name, params.get("quant"), shape["kv_heads"])
        if self.check and ckey not in self.checked:
            self.checked.add(ckey)
            res = check_decoder(dec, q)
            if name is not None:
                res.update(check_step(dec, q, kn, vn))
            metrics.update({f"check_{a}": round(b, 6) for a, b in res.items()})
            bad = res["rel_err"] > CHECK_TOL or res.get("step_rel_err", 0.0) > CHECK_TOL
            print(f"  {'CHECK FAILED' if bad else 'check'} {name} {params}: "
                  + ", ".join(f"{a}={b:.2e}" for a, b in res.items()), flush=True)
        _, stats = dec.step(q, kn, vn)                    # compile, and the stats of one step
        grows = dec.rewindable          # steps that only append are undone between replays
        if grows:
            dec.rewind(1)
        if hasattr(dec.cache, "refresh_bounds"):
            dec.cache.refresh_bounds()

        def step() -> None:
            dec.step(q, kn, vn)
            if grows:
                dec.rewind(1)

        ms = graph_ms(step)
        comp_ach = stats.compression
        nbytes = stats.bytes_read
        metrics.update({"gbps": round(nbytes / ms / 1e6, 1), "bytes_read": int(nbytes),
                        "pct_copy_bw": round(100 * nbytes / ms / 1e6 / self.copy_gbps, 1),
                        "cache_bytes": dec.nbytes(), "dense_cache_bytes": dense_bytes,
                        "memory_ratio": round(dense_bytes / dec.nbytes(), 3), "cuda_graph": True})
        method = name or "dense"
        for bname, bms in base.items():
            self.file.add(self._row(method, shape, context, comp_ach, params, ms, bname, bms, metrics))
        self.done.add(ResultsFile._key({"bench": "decode", "method": method, "pass": "decode", "context": context,
                                        "params": params, "baseline": "sdpa_cudnn", "shape": shape}))
        best = min(base.values())
        line = (f"{label:<22} {method:<11} {str(params.get('quant')):<5} "
                f"{params.get('target') or params.get('budget')!s:>6} c={comp_ach:6.2f} {ms * 1000:8.1f} us "
                f"x{best / ms:5.2f} {nbytes / ms / 1e6:6.0f} GB/s mem 1/{dense_bytes / dec.nbytes():5.2f}"
                + (f" err {metrics['check_rel_err']:.1e}" if "check_rel_err" in metrics else ""))
        print(line, flush=True)
        self.table.append(line)


def _params(name: str | None, comp: Any, quant: str | None) -> dict[str, Any]:
    p: dict[str, Any] = {"quant": quant or "bf16"}
    if isinstance(comp, tuple):
        p["budget"] = comp[1]
        p["page_size"] = 16
    elif comp is not None:
        p["target"] = comp
    if name is not None and method_class(name).decode_store == "paged":       # page bounds' storage
        p["bounds"] = default_bounds(torch.bfloat16, quant is not None)
    return p


# Quest scoring launches tried by the tuning (pages per program, bytes of bounds per loop step)
QUEST_SCORE_VARIANTS = [dict(pages_per_prog=64, tile_bytes=16384, num_warps=4, num_stages=1),
                        dict(pages_per_prog=256, tile_bytes=16384, num_warps=4, num_stages=3),
                        dict(pages_per_prog=512, tile_bytes=16384, num_warps=8, num_stages=3),
                        dict(pages_per_prog=128, tile_bytes=8192, num_warps=4, num_stages=2),
                        dict(pages_per_prog=64, tile_bytes=16384, num_warps=4, num_stages=1)]


def tune_kernels(deadline: float) -> dict[str, Any]:
    """Pick the decode kernels' launch parameters on this card (a few variants, one size each)."""
    from ..ops.sparse_decode import triton as kt  # local: defers triton
    gen = torch.Generator(device="cuda").manual_seed(1)
    chosen: dict[str, Any] = {}
    k = torch.randn(16, 8, 65536, HEAD_DIM, generator=gen, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(16, 32, HEAD_DIM, generator=gen, device="cuda", dtype=torch.bfloat16)
    dec = build_decoder("snapkv", 10.0, k, k, 32, None, gen)
    c = dec.cache
    variants = [dict(block_n=64, num_warps=4, num_stages=3, split_factor=2),
                dict(block_n=128, num_warps=8, num_stages=3, split_factor=2),
                dict(block_n=64, num_warps=4, num_stages=4, split_factor=4)]
    best = sweep_launch("varlen", variants, lambda: kt.varlen_decode_triton(
        q, c.k, c.v, c.start, c.length, max_len=c.max_len_bound), deadline, label="tune varlen")
    if best:
        chosen["varlen"] = best[1]
    dec = build_decoder("quest", None, k, k, 32, None, gen, budget=4096)
    c = dec.cache
    ps = c.page_size
    bound = max((max(c.seq_lens_host) - 1) // ps, 1)        # as the decoder's step scores
    s = kt.quest_page_scores_triton(q, c.kmin, c.kmax, c.page_table, c.seq_lens, ps, max_pages=bound,
                                    scale=c.kscale)
    plist, nlist = kt.quest_select_triton(s, c.seq_lens, ps, dec.n_select, 257)
    variants = [dict(block_n=64, num_warps=4, num_stages=3, split_factor=2),
                dict(block_n=64, num_warps=4, num_stages=2, split_factor=4),
                dict(block_n=128, num_warps=8, num_stages=3, split_factor=2)]
    best = sweep_launch("paged", variants, lambda: kt.paged_decode_triton(
        q, c.k, c.v, c.page_table, c.seq_lens, plist, nlist, page_size=ps), deadline, label="tune paged")
    if best:
        chosen["paged"] = best[1]
    kind = "quest_scores" if c.bounds == "int8" else "quest_scores_native"
    best = sweep_launch(kind, QUEST_SCORE_VARIANTS, lambda: kt.quest_page_scores_triton(
        q, c.kmin, c.kmax, c.page_table, c.seq_lens, ps, max_pages=bound, scale=c.kscale), deadline,
        label=f"tune {kind} ({c.bounds} bounds)")
    if best:
        chosen[kind] = best[1]
    t_score = best[0] if best else graph_ms(lambda: kt.quest_page_scores_triton(
        q, c.kmin, c.kmax, c.page_table, c.seq_lens, ps, max_pages=bound, scale=c.kscale))
    t_sel = graph_ms(lambda: kt.quest_select_triton(s, c.seq_lens, ps, dec.n_select, 257))
    print(f"  quest parts at 64K B16 ({c.bounds} bounds): scores {t_score * 1000:.1f} us, "
          f"select {t_sel * 1000:.1f} us", flush=True)
    chosen["quest_parts_us"] = {"bounds": c.bounds, "scores": round(t_score * 1000, 1),
                                "select": round(t_sel * 1000, 1)}
    return chosen


def plan(contexts: Sequence[int], batches: Sequence[int], shapes: Sequence[str], methods: Sequence[str],
         compressions: Sequence[float], quants: Sequence[str | None]) -> list[tuple[str, int, int, list]]:
    """(shape, context, batch, jobs) in priority order: compression 10 and Quest's 4,096 budget
    on every cache format at the target setting (32q8kv, 64K, batch 16); every other setting at
    compression 10 on bf16 caches (with dense and Quest's budget); the other compressions at the
    target setting; compression 10 on int8/int4 elsewhere; then the rest."""
    settings = sorted(((s, c, b) for s in shapes for c in contexts for b in batches),
                      key=lambda x: (x[1] != 65536, x[2] != 16, x[0] != "32q8kv", -x[1], x[2]))
    first_q = [q for q in quants if q is None][:1]
    other_q = [q for q in quants if q is not None]
    c10 = [c for c in compressions if c == 10.0] or list(compressions[:1])
    rest_c = [c for c in compressions if c not in c10]

    def jobs(comps, qs, extra: bool) -> list:
        out: list = []
        if extra:
            out.append((None, None, None))                      # sparsa's kernel over the full cache
            if "quest" in methods:
                out += [("quest", ("budget", 4096), qq) for qq in qs]
        out += [(m, c, qq) for c in comps for qq in qs for m in methods]
        return out

    quest_b = [("quest", ("budget", 4096), qq) for qq in other_q if "quest" in methods]
    tiers = [[(settings[0], jobs(c10, first_q + other_q, True))]] if settings else []
    tiers.append([(st, jobs(c10, first_q, True)) for st in settings[1:]])
    tiers.append([(settings[0], jobs(rest_c, first_q + other_q, False))] if settings else [])
    tiers.append([(st, jobs(c10, other_q, False) + quest_b) for st in settings[1:]])
    tiers.append([(st, jobs(rest_c, first_q + other_q, False)) for st in settings[1:]])
    return [(st[0], st[1], st[2], js) for tier in tiers for st, js in tier if js]


def run_decode_bench(*, contexts: Sequence[int] = CONTEXTS, batches: Sequence[int] = BATCHES,
                     shapes: Sequence[str] = tuple(SHAPES), methods: Sequence[str] = METHODS,
                     compressions: Sequence[float] = COMPRESSIONS, quants: Sequence[str | None] = QUANTS,
                     out_path: str | Path = "benchmarks/results/decode.json", budget_s: float = 1e9,
                     check: bool = True, tune: bool = True) -> DecodeBench:
    """Run the benchmark until done or ``budget_s`` seconds have passed; rows already in the results
    file (same device) are skipped, so a second call continues the first."""
    if not torch.cuda.is_available():
        raise SystemExit("the decode benchmark needs a CUDA GPU")
    t0 = time.time()
    deadline = t0 + budget_s
    bench = DecodeBench(out_path, deadline, check=check)
    if tune:
        bench.file.header["tuning"] = tune_kernels(t0 + 0.25 * budget_s)
    for shape, ctx, batch, jobs in plan(contexts, batches, shapes, methods, compressions, quants):
        if bench.out_of_time():
            break
        bench.setting(shape, ctx, batch, jobs)
    print(f"\n{len(bench.table)} rows in {time.time() - t0:.0f} s", flush=True)
    return bench


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="sparsa bench decode", description="Decode benchmark: sparse methods on compact caches vs dense decode.")
    ap.add_argument("--contexts", type=int, nargs="+", default=list(CONTEXTS))
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--compressions", type=float, nargs="+", default=list(COMPRESSIONS))
    ap.add_argument("--quants", nargs="+", default=["bf16", "int8", "int4"])
    ap.add_argument("--out", default="benchmarks/results/decode.json")
    ap.add_argument("--budget-s", type=float, default=1e9, help="stop starting new measurements after this")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--no-tune", action="store_true")
    args = ap.parse_args(argv)
    quants = [None if qq in ("bf16", "none") else qq for qq in args.quants]
    run_decode_bench(contexts=args.contexts, batches=args.batches, shapes=args.shapes, methods=args.methods,
                     compressions=args.compressions, quants=quants, out_path=args.out, budget_s=args.budget_s,
                     check=not args.no_check, tune=not args.no_tune)


# ----------------------------------------------------------------------------- plot

def plot_svg(results: str | Path, out: str | Path) -> None:
    """Speedup over SDPA cuDNN against context, batch 16, per method at compression 10 (bf16
    caches) and Quest's 4,096-token budget, one panel per shape; a plain SVG file."""
    data = json.loads(Path(results).read_text())
    rows = [r for r in data["rows"] if r["baseline"] == "sdpa_cudnn" and r["shape"]["batch"] == 16
            and r["params"].get("quant") == "bf16"]
    colors = {"quest": "#d62728", "h2o": "#1f77b4", "snapkv": "#2ca02c", "ada_snapkv": "#9467bd",
              "streaming": "#ff7f0e", "dense": "#7f7f7f"}
    panels = [(s, h, kv) for s, (h, kv) in SHAPES.items()]
    w, h, pad = 420, 300, 50
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * len(panels)}" height="{h + 40}" '
             'font-family="sans-serif" font-size="11">']
    ymax = max([r["speedup"] for r in rows] + [8.0])
    xs = list(CONTEXTS)
    for pi, (sname, hq, hk) in enumerate(panels):
        ox = pi * w
        sel = [r for r in rows if r["shape"]["heads"] == hq and r["shape"]["kv_heads"] == hk]
        parts.append(f'<text x="{ox + pad}" y="15">{sname}, batch 16, bf16 cache: speedup vs SDPA cuDNN '
                     f'({data.get("device", "")})</text>')
        x0, y0, x1, y1 = ox + pad, h - 10, ox + w - 20, 30

        def px(c: int) -> float:
            return x0 + (x1 - x0) * xs.index(c) / max(1, len(xs) - 1)

        def py(val: float) -> float:
            return y0 - (y0 - y1) * val / ymax

        parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>')
        parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>')
        for c in xs:
            parts.append(f'<text x="{px(c) - 10}" y="{y0 + 14}">{c // 1024}K</text>')
        for t in range(0, int(ymax) + 1, 2):
            parts.append(f'<text x="{x0 - 20}" y="{py(t) + 4}">{t}x</text>')
            parts.append(f'<line x1="{x0}" y1="{py(t)}" x2="{x1}" y2="{py(t)}" stroke="#ddd"/>')
        series: dict[str, list[tuple[int, float]]] = {}
        for r in sel:
            key = None
            if r["method"] == "quest" and r["params"].get("budget") == 4096:
                key = "quest (4096)"
            elif r["params"].get("target") == 10.0 and r["method"] != "quest":
                key = f"{r['method']} (c=10)"
            if key and r["context"] in xs:
                series.setdefault(key, []).append((r["context"], r["speedup"]))
        for li, (key, pts) in enumerate(sorted(series.items())):
            pts.sort()
            col = colors.get(key.split(" ")[0], "black")
            path = " ".join(f"{'M' if i == 0 else 'L'}{px(c):.1f},{py(s):.1f}" for i, (c, s) in enumerate(pts))
            parts.append(f'<path d="{path}" fill="none" stroke="{col}" stroke-width="2"/>')
            parts.append(f'<text x="{x0 + 10}" y="{y1 + 12 * li + 5}" fill="{col}">{key}</text>')
    parts.append("</svg>")
    Path(out).write_text("\n".join(parts) + "\n")


__all__ = ["build_decoder", "check_decoder", "dense_baselines", "main", "plot_svg", "run_decode_bench"]

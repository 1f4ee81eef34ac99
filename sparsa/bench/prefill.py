"""Prefill benchmark: sparse kernels and methods against dense attention on the same GPU.

Shape: "Llama-3-8B attention" (32 query heads, 8 KV heads, head_dim 128, batch 1), bf16.
Baselines, timed in the same run: SDPA with the cuDNN backend, SDPA FLASH (FA2) and
FlexAttention (causal block mask, compiled) where they run. Times are
``triton.testing.do_bench`` medians. Rows are written to the results file as they are
measured, so an interruption loses nothing.

Inputs (:func:`banded_qkv`) have the structure of real long-context attention: most mass on
a band of recent keys a few thousand wide, attention sinks and a few heavy columns. The
estimate of the vertical-slash method then picks mostly contiguous diagonals, as it does on
real models; the kernel's cost is the number of 64-key tiles those diagonals need, so
scattered diagonals cost more (the ``lines="scattered"`` rows measure that case).

Measured per context and method:

* ``block_sparse``: the kernel alone on random sorted lists at the given compression (block
  density 1/compression among causal blocks, first and diagonal blocks forced), lists per KV
  head and per query head; and the ``block_sparse`` method end to end (pooled estimation,
  top-k, kernel) with lists per KV head.
* ``vertical_slash``: the method end to end (estimation from the last 64 queries, selection,
  conversion, kernel, pair count); the conversion alone (Triton, and the torch spec once);
  the attention kernel alone with exact semantics and with the superset semantics; and the
  kernel on scattered lines.
* ``sliding_window`` (Longformer: window + the global positions of :func:`longformer_globals`),
  ``streaming`` (A-shape: 4 sinks + window, prefill reading of the target) and ``bigbird``
  (64-blocks: window, global, random): the method end to end at each compression target
  (list building on the GPU, block-sparse kernel with the element mask, pair count), with
  its planning and kernel times in ``metrics``; and FlexAttention (compiled) with a
  ``BlockMask`` of the same pattern (128-blocks; blocks wholly inside the pattern are "full",
  the others run the pattern's ``mask_mod``), as its own row (``params.impl = "flex"``, the
  mask build time in ``metrics.block_mask_ms``) and as the ``flex_pattern`` baseline of the
  method's row.
* ``flexprefill``: the method end to end (estimation, per-head budgets by the alpha search
  for the target, vertical-slash kernel); ``None`` = the paper's alpha 0.9.

TFLOP/s are given two ways in ``metrics``: over the pairs attended (``tflops_pairs``) and
over the tile elements the kernel computes (``tflops_computed``), both 4·head_dim FLOPs per
query-key pair.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..methods.registry import get_method, list_methods
from ..ops.block_sparse import (LocalMask, block_mask_from_indices, block_sparse_attention_ref, local_block_lists,
                                normalize_block_indices, num_blocks)
from ..ops.dense.reference import causal_pairs, masked_attention, query_positions
from ..ops.vertical_slash import vertical_slash_attention_ref
from ..ops.vertical_slash.convert import (START_MASK, VS_TILE, computed_tile_elements, default_block_q,
                                          prepare_vertical_slash, vertical_slash_pairs)
from .timing import ResultsFile, attention_flops, bench_ms, once_ms, rel_err

SHAPE = {"batch": 1, "heads": 32, "kv_heads": 8, "head_dim": 128}
BASELINES = ("sdpa_cudnn", "sdpa_flash", "flex")
STATIC_METHODS = ("sliding_window", "streaming", "bigbird")
METHODS = ("block_sparse", "vertical_slash", *STATIC_METHODS, "flexprefill")
STREAMING_SINK = 4
FLEX_BLOCK = 128
CHECK_ROWS = 256
CHECK_TOL = 1e-2


# ----------------------------------------------------------------------------- inputs

def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    half = x.shape[-1] // 2
    freq = theta ** (-torch.arange(half, device=x.device, dtype=torch.float64) / half)
    ang = positions.double()[:, None] * freq[None, :]
    cos, sin = ang.cos().float(), ang.sin().float()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def banded_qkv(length: int, *, batch: int = 1, heads: int = 32, kv_heads: int = 8, head_dim: int = 128,
               band: int = 8192, strength: float = 3.0, n_sinks: int = 4, n_vertical: int = 64,
               theta: float = 500000.0, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cuda",
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random inputs whose attention favours the last ~``band`` keys, sinks and a few columns.

    A per-KV-head direction in the RoPE channels whose wavelength is about ``band`` is added
    to queries and keys: after rotary embedding their dot product decays with distance over
    about ``band`` positions. ``n_sinks`` first keys and ``n_vertical`` random keys get a
    boost in the slowest channels, which every later query sees. Generated on ``device``.
    Returns q (batch, heads, length, head_dim), k/v (batch, kv_heads, length, head_dim).
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    half = head_dim // 2
    group = heads // kv_heads
    freq = theta ** (-torch.arange(half, dtype=torch.float64) / half)
    local = ((freq * band > 0.3) & (freq * band < 3.0)).float()
    slow = torch.zeros(half)
    slow[-4:] = 1.0
    def direction(channels: torch.Tensor) -> torch.Tensor:
        u = torch.cat([channels, channels])
        return (u / u.norm().clamp_min(1e-9)).to(device)
    u_local = direction(local) * strength * head_dim ** 0.25
    u_slow = direction(slow) * strength * head_dim ** 0.25
    sign = torch.where(torch.rand(batch, kv_heads, 1, head_dim, generator=gen, device=device) < 0.5, -1.0, 1.0)
    pos = torch.arange(length, device=device)
    k = torch.randn(batch, kv_heads, length, head_dim, generator=gen, device=device)
    k += sign * u_local
    special = torch.cat([torch.arange(min(n_sinks, length), device=device),
                         torch.randint(0, length, (n_vertical,), generator=gen, device=device)])
    k[:, :, special] += u_slow
    q = torch.randn(batch, heads, length, head_dim, generator=gen, device=device)
    q += (sign * u_local).repeat_interleave(group, 1) + 0.5 * u_slow
    q = _rope(q, pos, theta).to(dtype)
    k = _rope(k, pos, theta).to(dtype)
    v = torch.randn(batch, kv_heads, length, head_dim, generator=gen, device=device).to(dtype)
    return q, k, v


def random_block_indices(batch: int, heads_x: int, length: int, block: int, compression: float,
                         gen: torch.Generator) -> torch.Tensor:
    """Sorted random key-block lists (q_len = kv_len = length) keeping 1/compression of the
    causal blocks of each query block, the first and diagonal blocks always included."""
    device = gen.device
    n = math.ceil(length / block)
    qb = torch.arange(n, device=device)
    keep = torch.clamp(torch.round((qb + 1) / compression), min=2).long().clamp(max=qb + 1)
    scores = torch.rand(batch, heads_x, n, n, generator=gen, device=device)
    kb = torch.arange(n, device=device)
    scores = torch.where((kb[None, :] == 0) | (kb[None, :] == qb[:, None]), torch.full_like(scores, 2.0), scores)
    scores = torch.where(kb[None, :] > qb[:, None], torch.full_like(scores, -1.0), scores)
    width = int(keep.max())
    top = scores.topk(width, dim=-1)
    chosen = torch.where(torch.arange(width, device=device) < keep[:, None], top.indices,
                         torch.full_like(top.indices, -1))
    return normalize_block_indices(chosen)


def line_sets(kind: str, batch: int, heads: int, length: int, n_vertical: int, n_slash: int,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical/slash index lists without estimation (B, heads, n), int32.

    ``kind="band"``: the first 30 columns + random columns; the ``n_slash`` most recent
    diagonals. ``kind="scattered"``: random columns; 100 recent diagonals + random offsets.
    """
    device = gen.device
    cols = torch.rand(batch, heads, length, generator=gen, device=device)
    cols[..., :30] = 2.0
    vertical = cols.topk(min(n_vertical, length), dim=-1).indices.sort(-1).values.to(torch.int32)
    if kind == "band":
        slash = torch.arange(min(n_slash, length), device=device).expand(batch, heads, -1)
    elif kind == "scattered":
        diag = torch.rand(batch, heads, length, generator=gen, device=device)
        diag[..., :100] = 2.0
        slash = diag.topk(min(n_slash, length), dim=-1).indices.sort(-1).values
    else:
        raise ValueError(f"kind: must be 'band' or 'scattered', got {kind!r}")
    return vertical, slash.to(torch.int32).contiguous()


# ----------------------------------------------------------------------------- baselines

def dense_baselines(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    names: Sequence[str] = BASELINES) -> dict[str, Callable[[], torch.Tensor]]:
    """Callables of the dense causal baselines that run on this device (others are skipped)."""
    group = q.shape[1] // k.shape[1]
    ke = k.repeat_interleave(group, 1)
    ve = v.repeat_interleave(group, 1)
    fns: dict[str, Callable[[], torch.Tensor]] = {}

    def sdpa(backend: Any) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, ke, ve, is_causal=True)
        return run

    if "sdpa_cudnn" in names:
        fns["sdpa_cudnn"] = sdpa(SDPBackend.CUDNN_ATTENTION)
    if "sdpa_flash" in names:
        fns["sdpa_flash"] = sdpa(SDPBackend.FLASH_ATTENTION)
    if "flex" in names:
        try:
            from torch.nn.attention.flex_attention import flex_attention  # local: defers torch's compile machinery
            mask = flex_causal_mask(q.shape[2], q.device)
            compiled = torch.compile(flex_attention, dynamic=False)
            fns["flex"] = lambda: compiled(q, k, v, block_mask=mask, enable_gqa=True)
        except Exception as exc:  # noqa: BLE001 - a baseline that cannot be built is skipped
            print(f"  flex: skipped ({type(exc).__name__}: {str(exc)[:120]})")
    usable = {}
    for name, fn in fns.items():
        try:
            fn()
            if q.is_cuda:
                torch.cuda.synchronize()
            usable[name] = fn
        except Exception as exc:  # noqa: BLE001 - e.g. no cuDNN kernel for this shape, out of memory
            print(f"  {name}: skipped ({type(exc).__name__}: {str(exc)[:120]})")
            torch.cuda.empty_cache()
    return usable


# ----------------------------------------------------------------------------- checks

def _window(length: int, where: str) -> tuple[int, int]:
    end = length if where == "end" else (length // 2 // 64) * 64
    return end - CHECK_ROWS, end


def check_block_sparse(q, k, v, idx, out, block: int) -> float:
    """Largest rel. error of ``out`` against the reference on two windows of query rows."""
    worst = 0.0
    for where in ("middle", "end"):
        s, e = _window(q.shape[2], where)
        nk = math.ceil(e / block)
        sub = idx[:, :, s // block:e // block].to(torch.int64)
        sub = normalize_block_indices(torch.where(sub < nk, sub, torch.full_like(sub, -1)))
        ref, _ = block_sparse_attention_ref(q[:, :, s:e], k[:, :, :e], v[:, :, :e], sub, block_q=block, block_k=block)
        worst = max(worst, rel_err(out[:, :, s:e], ref))
    return worst


def check_vertical_slash(q, k, v, vi, si, out) -> float:
    """Largest rel. error of ``out`` against the reference on two windows of query rows."""
    worst = 0.0
    for where in ("middle", "end"):
        s, e = _window(q.shape[2], where)
        vv = torch.where(vi < e, vi, torch.full_like(vi, -1))
        ss = torch.where(si < e, si, torch.full_like(si, -1))
        ref, _ = vertical_slash_attention_ref(q[:, :, s:e], k[:, :, :e], v[:, :, :e], vv, ss)
        worst = max(worst, rel_err(out[:, :, s:e], ref))
    return worst


def check_vertical_slash_superset(q, k, v, layout, out) -> float:
    """Rel. error of a superset-semantics ``out`` on the last window of query rows."""
    lq, lk = q.shape[2], k.shape[2]
    s, e = _window(lq, "end")
    bq = layout.block_q
    first = s // bq
    tiles = layout.tiles[:, :, first:(e + bq - 1) // bq].to(torch.int64)                # (B, Hx, nb, W)
    b, hx, nb, _ = tiles.shape
    keys = (tiles & START_MASK)[..., None] + torch.arange(VS_TILE, device=q.device)
    keys = torch.where(tiles[..., None] >= 0, keys, torch.full_like(keys, lk + VS_TILE)).clamp(max=lk + VS_TILE)
    cover = torch.zeros(b, hx, nb, lk + VS_TILE + 1, dtype=torch.bool, device=q.device)
    cover.scatter_(-1, keys.flatten(-2), True)
    cover = cover[..., :lk] | layout.column_table.bool()[:, :, None, :]
    cols = torch.arange(lk, device=q.device)

    def mask_fn(a: int, z: int) -> torch.Tensor:
        rows = torch.arange(s + a, s + z, device=q.device)
        causal = cols[None, :] <= query_positions(lq, lk, s + a, s + z, q.device)[:, None]
        return cover[:, :, rows // bq - first] & causal

    ref, _ = masked_attention(q[:, :, s:e], k, v, mask_fn)
    return rel_err(out[:, :, s:e], ref)


# ----------------------------------------------------------------------------- runner

class _Recorder:
    def __init__(self, out_path: str | Path, progress: bool) -> None:
        self.file = ResultsFile(out_path)
        self.progress = progress
        self.table: list[tuple[str, ...]] = []

    def log(self, msg: str) -> None:
        if self.progress:
            print(msg, flush=True)

    def emit(self, method: str, context: int, compression: float | None, params: dict[str, Any], ms: float,
             baselines: dict[str, float], metrics: dict[str, Any], pass_: str = "fwd") -> None:
        label = f"{method} {params}"
        for base, base_ms in baselines.items():
            self.file.add({"bench": "prefill", "method": method, "pass": pass_, "shape": dict(SHAPE),
                           "context": context, "compression": compression, "params": params, "ms": round(ms, 4),
                           "baseline": base, "baseline_ms": round(base_ms, 4),
                           "speedup": round(base_ms / ms, 3), "metrics": metrics})
        cud = baselines.get("sdpa_cudnn")
        self.table.append((str(context), label[:86], f"{ms:9.3f}",
                           f"{cud / ms:6.2f}x" if cud else "   -  ",
                           f"{compression:6.2f}" if compression else "   -  ",
                           f"{metrics.get('tflops_computed', float('nan')):6.0f}"))
        self.log(f"  {context:>7} {label[:90]:<90} {ms:9.3f} ms  "
                 + (f"{cud / ms:5.2f}x vs cuDNN" if cud else ""))

    def print_table(self) -> None:
        print(f"\n{'ctx':>7} | {'method / params':<86} | {'ms':>9} | {'vs cuDNN':>7} | {'compr':>6} | TF/s comp")
        for row in self.table:
            print(f"{row[0]:>7} | {row[1]:<86} | {row[2]} | {row[3]:>7} | {row[4]} | {row[5]}")


def _bs_rows(rec: _Recorder, q, k, v, context: int, compression: float, base_ms: dict[str, float],
             check: bool, gen: torch.Generator, configs: Sequence[tuple[int, int]] | None,
             detail: bool = True) -> None:
    # local: defers triton
    from ..ops.block_sparse.triton import block_counts, block_sparse_attention_triton, block_sparse_pairs
    b, h, _, d = q.shape
    hkv = k.shape[1]
    dense = causal_pairs(context, context) * b * h
    for lists, hx in (("kv_head", hkv), ("head", h))[:2 if detail else 1]:
        idx = random_block_indices(b, hx, context, 64, compression, gen)
        pairs = float(block_sparse_pairs(idx, h, context, context, 64, 64).sum())
        _, n_all = block_counts(idx, context, context, 64, 64)
        computed = float(n_all.sum()) * 64 * 64 * (h // hx)
        tried = configs if configs else [None]
        for i_cfg, cfg in enumerate(tried):
            kw = {} if cfg is None else {"num_warps": cfg[0], "num_stages": cfg[1]}

            def run(kw=kw) -> torch.Tensor:
                return block_sparse_attention_triton(q, k, v, idx, check_indices=False, **kw)
            out = run()
            metrics: dict[str, Any] = {}
            if check and i_cfg == 0:
                metrics["rel_err"] = check_block_sparse(q, k, v, idx, out, 64)
                rec.log(f"  check block_sparse lists={lists}: rel err {metrics['rel_err']:.2e}")
                if not metrics["rel_err"] <= CHECK_TOL:
                    raise AssertionError(f"block_sparse kernel rel err {metrics['rel_err']:.3e} > {CHECK_TOL}")
            ms = bench_ms(run)
            metrics.update(tflops_pairs=attention_flops(pairs, d) / ms / 1e9,
                           tflops_computed=attention_flops(computed, d) / ms / 1e9)
            params = {"lists": lists, "block": 64, "indices": "random", "estimation": False}
            if cfg is not None:
                params.update(num_warps=cfg[0], num_stages=cfg[1])
            rec.emit("block_sparse", context, dense / pairs, params, ms, base_ms, metrics)
    # the method end to end: pooled estimation + top-k + kernel
    if "block_sparse" not in list_methods():
        rec.log("  block_sparse method not registered: end-to-end row skipped")
        return
    m = get_method("block_sparse", compression=compression, per_kv_head=True)
    out, stats = m(q, k, v)
    metrics = {}
    if check:
        idx = m.plan(q, k)
        metrics["rel_err"] = check_block_sparse(q, k, v, idx, out, m.block_size)
        rec.log(f"  check block_sparse method: rel err {metrics['rel_err']:.2e}")
    ms = bench_ms(lambda: m(q, k, v))
    plan_ms = bench_ms(lambda: m.plan(q, k))
    metrics.update(plan_ms=plan_ms, tflops_pairs=attention_flops(stats.computed, d) / ms / 1e9)
    rec.emit("block_sparse", context, stats.compression,
             {"target": compression, "lists": "kv_head", "block": m.block_size, "indices": "planned",
              "estimation": True,
              "top_k": stats.info.get("top_k")}, ms, base_ms, metrics)


def _vs_rows(rec: _Recorder, q, k, v, context: int, compression: float | None, base_ms: dict[str, float],
             check: bool, gen: torch.Generator, vs_configs: Sequence[tuple[int, int, int]] | None = None,
             line_sets_to_time: Sequence[str] = ("band", "scattered"), detail: bool = True) -> None:
    # local: defers triton
    from ..ops.vertical_slash.triton import vertical_slash_attention_triton, vertical_slash_layout
    b, h, _, d = q.shape
    dense = causal_pairs(context, context) * b * h
    nv, ns = 1000, 6096
    budget = {"vertical": nv, "slash": ns} if compression is None else {"compression": compression}
    have_method = "vertical_slash" in list_methods()
    if have_method:
        m = get_method("vertical_slash", **budget)
        out, stats = m(q, k, v)
        vi, si = m.plan(q, k)
        metrics: dict[str, Any] = {}
        if check:
            metrics["rel_err"] = check_vertical_slash(q, k, v, vi, si, out)
            rec.log(f"  check vertical_slash method: rel err {metrics['rel_err']:.2e}")
            if not metrics["rel_err"] <= CHECK_TOL:
                raise AssertionError(f"vertical_slash rel err {metrics['rel_err']:.3e} > {CHECK_TOL}")
        ms = bench_ms(lambda: m(q, k, v))
        plan_ms = bench_ms(lambda: m.plan(q, k))
        layout = vertical_slash_layout(q, k, vi, si)
        computed = computed_tile_elements(layout, h)
        metrics.update(plan_ms=plan_ms, tflops_pairs=attention_flops(stats.computed, d) / ms / 1e9,
                       tflops_computed=attention_flops(computed, d) / ms / 1e9,
                       mean_tiles_per_query_block=float(layout.tile_count.double().mean()))
        rec.emit("vertical_slash", context, stats.compression,
                 {**budget, "target": compression, "lines": "planned", "estimation": True, "exact": True}, ms,
                 base_ms, metrics)
        line_kinds = [("planned", vi, si)]
    else:
        rec.log("  vertical_slash method not registered: timing the kernel on banded lines only")
        line_kinds = []
    for kind in ("band", "scattered"):
        if (kind == "band" and have_method) or kind not in line_sets_to_time:
            continue
        vi_k, si_k = line_sets(kind, b, h, context, nv, ns, gen)
        line_kinds.append((kind, vi_k, si_k))
    for kind, vi_k, si_k in line_kinds:
        conv_ms = bench_ms(lambda: vertical_slash_layout(q, k, vi_k, si_k))
        extra: dict[str, Any] = {"conversion_ms": conv_ms}
        if kind in ("planned", "band") and detail:
            # the torch spec of the conversion, once (a Python loop over the diagonals)
            extra["conversion_torch_spec_ms"] = once_ms(
                lambda: prepare_vertical_slash(vi_k, si_k, context, context, use_triton=False))
        layouts: dict[tuple[bool, int], Any] = {}
        variants: list[tuple[bool, int, tuple[int, int] | None]] = [(True, default_block_q(True), None)]
        if detail:
            variants.append((False, default_block_q(False), None))
        if vs_configs and kind == line_kinds[0][0]:
            variants += [(True, cfg[0], (cfg[1], cfg[2])) for cfg in vs_configs]
        for exact, bq, cfg in variants:
            if (exact, bq) not in layouts:
                layouts[(exact, bq)] = vertical_slash_layout(q, k, vi_k, si_k, block_q=bq, exact=exact)
            layout = layouts[(exact, bq)]
            pairs = float(vertical_slash_pairs(layout, h).sum())
            computed = computed_tile_elements(layout, h)
            kw = {} if cfg is None else {"num_warps": cfg[0], "num_stages": cfg[1]}

            def run(layout=layout, kw=kw) -> torch.Tensor:
                return vertical_slash_attention_triton(q, k, v, layout=layout, **kw)
            metrics = {}
            if check and cfg is None and kind != "planned":
                metrics["rel_err"] = (check_vertical_slash(q, k, v, vi_k, si_k, run()) if exact else
                                      check_vertical_slash_superset(q, k, v, layout, run()))
                rec.log(f"  check vertical_slash kernel lines={kind} exact={exact}: rel err {metrics['rel_err']:.2e}")
                if not metrics["rel_err"] <= CHECK_TOL:
                    raise AssertionError(f"vertical_slash kernel rel err {metrics['rel_err']:.3e} > {CHECK_TOL}")
            ms = bench_ms(run)
            metrics.update(extra, tflops_pairs=attention_flops(pairs, d) / ms / 1e9,
                           tflops_computed=attention_flops(computed, d) / ms / 1e9,
                           tiles_per_query_block=float(layout.tile_count.double().mean()),
                           clean_tile_fraction=float(layout.clean_count.double().sum()
                                                     / layout.tile_count.double().sum().clamp_min(1)))
            lines_budget = budget if kind == "planned" else {"vertical": nv, "slash": ns}
            params = {**lines_budget, "lines": kind, "estimation": False, "exact": exact, "part": "kernel",
                      "block_q": bq}
            if cfg is not None:
                params.update(num_warps=cfg[0], num_stages=cfg[1])
            rec.emit("vertical_slash", context, dense / pairs, params, ms, base_ms, metrics)


# ----------------------------------------------------------------------------- static patterns

def longformer_globals(length: int) -> tuple[int, ...]:
    """Global positions of the benchmarked sliding window: the first 4 tokens and 4 spread over
    the sequence (one inside each check window), so global columns and global query rows (which
    see every earlier key) are both exercised."""
    spread = (length // 4, length // 2 - 100, 3 * length // 4, length - 100)
    return tuple(sorted({p for p in (0, 1, 2, 3, *spread) if 0 <= p < length}))


def static_method(name: str, length: int, compression: float) -> Any:
    """The benchmarked configuration of a static method at a compression target."""
    if name == "sliding_window":
        return get_method(name, compression=compression, global_positions=longformer_globals(length))
    if name == "streaming":
        return get_method(name, compression=compression, sink=STREAMING_SINK, mode="prefill")
    if name == "bigbird":
        return get_method(name, compression=compression)
    raise ValueError(f"name: not a static method: {name!r}; choose from {STATIC_METHODS}")


def pinned_method(method: Any, stats: Any) -> Any:
    """``method`` with the budget it resolved fixed, so it gives the same pattern on a window of
    rows (query blocks stay aligned when the window starts at a multiple of the block)."""
    if method.name in ("sliding_window", "streaming"):
        return dataclasses.replace(method, compression=None, window=stats.info["window"])
    if method.name == "bigbird":
        return dataclasses.replace(method, compression=None, global_blocks=stats.info["global_blocks"],
                                   window_blocks=stats.info["window_blocks"],
                                   random_blocks=stats.info["random_blocks"])
    raise ValueError(f"method: not a static method: {method.name!r}")


def pattern_params(method: Any, stats: Any) -> dict[str, Any]:
    """The resolved pattern, for a row's ``params``."""
    if method.name == "sliding_window":
        return {"window": stats.info["window"], "global_positions": list(method.global_positions)}
    if method.name == "streaming":
        return {"sink": method.sink, "window": stats.info["window"], "mode": method.mode}
    return {"block_size": method.block_size, "seed": method.seed,
            **{k_: stats.info[k_] for k_ in ("global_blocks", "window_blocks", "random_blocks")}}


def reference_windows(q, k, v, method: Any) -> list[tuple[int, int, torch.Tensor]]:
    """The method's reference output on two windows of query rows: [(start, end, out)]."""
    refs = []
    for where in ("middle", "end"):
        s, e = _window(q.shape[2], where)
        ref, _ = method(q[:, :, s:e], k[:, :, :e], v[:, :, :e], backend="reference")
        refs.append((s, e, ref))
    return refs


def worst_error(out: torch.Tensor, refs: list[tuple[int, int, torch.Tensor]]) -> float:
    return max(rel_err(out[:, :, s:e], ref) for s, e, ref in refs)


def _flex_ordered(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense block table (..., NQ, NK) -> (counts int32 (..., NQ), indices int32 (..., NQ, NK))."""
    t = table.to(torch.int32)
    return t.sum(-1, dtype=torch.int32), torch.argsort(t, dim=-1, descending=True, stable=True).to(torch.int32)


def flex_block_mask(full: torch.Tensor, partial: torch.Tensor, length: int, block: int, mask_mod: Callable) -> Any:
    """A FlexAttention ``BlockMask`` from block tables (B|1, H|1, NQ, NK): ``full`` blocks skip
    ``mask_mod``, ``partial`` ones apply it. Built directly, without evaluating the mask on
    every pair (which ``create_block_mask`` would do over ``length**2`` elements)."""
    from torch.nn.attention.flex_attention import BlockMask  # local: defers torch's compile machinery
    kv_num, kv_idx = _flex_ordered(partial)
    full_num, full_idx = _flex_ordered(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(length, length))


def flex_causal_mask(length: int, device: torch.device | str, block: int = FLEX_BLOCK) -> Any:
    """Causal ``BlockMask`` (q_len = kv_len = length) from its block tables: blocks below the
    diagonal full, diagonal blocks masked. ``create_block_mask`` would evaluate the mask on
    every pair first: 128 GiB at 128K tokens."""
    n = (length + block - 1) // block
    r = torch.arange(n, device=device)
    full = (r[None, :] < r[:, None])[None, None]
    partial = (r[None, :] == r[:, None])[None, None]
    return flex_block_mask(full, partial, length, block, lambda b, h, q_idx, kv_idx: q_idx >= kv_idx)


def flex_local_tables(local: Any, length: int, block: int,
                      device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(full, partial) block tables, bool (1, 1, NQ, NK), of a local pattern at ``block`` granularity.

    Full blocks hold only kept pairs (for every row); partial ones hold some. q_len = kv_len.
    """
    idx, n_clean, n_vis = local_block_lists(local, length, length, block, block, device)
    nq, width = idx.shape
    nk = num_blocks(length, block)
    slot = torch.arange(width, device=idx.device)[None, :]
    ids = idx.long().clamp_min(0)

    def table(sel: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(nq, nk + 1, dtype=torch.bool, device=idx.device)
        t.scatter_(1, torch.where(sel, ids, torch.full_like(ids, nk)), True)
        return t[:, :nk][None, None]

    return (table(slot < n_clean[:, None]),
            table((slot >= n_clean[:, None]) & (slot < n_vis[:, None])))


def flex_local_mask(local: Any, length: int, device: torch.device | str, block: int = FLEX_BLOCK) -> Any:
    """``BlockMask`` of a :class:`~sparsa.ops.block_sparse.LocalMask` pattern (q_len = kv_len = length)."""
    full, partial = flex_local_tables(local, length, block, device)
    window = torch.tensor(local.window if local.active else length, device=device)
    sink = torch.tensor(local.sink, device=device)
    flags = torch.zeros(length, dtype=torch.bool, device=device)
    if local.globals:
        flags[torch.tensor(local.globals, dtype=torch.int64, device=device)] = True

    def mask_mod(b, h, q_idx, kv_idx):
        keep = ((q_idx - kv_idx) < window) | (kv_idx < sink) | flags[kv_idx] | flags[q_idx]
        return (q_idx >= kv_idx) & keep

    return flex_block_mask(full, partial, length, block, mask_mod)


def flex_bigbird_tables(indices: torch.Tensor, length: int, block_size: int,
                        block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BigBird's lists (B, H, NQ, W) of ``block_size`` blocks at ``block`` granularity (a
    multiple of ``block_size``): (full, partial) bool (B, H, n, n) and the fine table
    (B, H, NQ, NK) the mask reads. q_len = kv_len = length."""
    if block % block_size:
        raise ValueError(f"block: must be a multiple of block_size ({block_size}), got {block}")
    f = block // block_size
    nb = num_blocks(length, block_size)
    fine = block_mask_from_indices(indices, nb)                                # (B, H, nb, nb)
    n = num_blocks(length, block)
    b, h = fine.shape[:2]
    padded = torch.zeros(b, h, n * f, n * f, dtype=torch.bool, device=fine.device)
    padded[:, :, :nb, :nb] = fine
    tiles = padded.view(b, h, n, f, n, f)
    listed = tiles.any(5).any(3)
    every = tiles.all(5).all(3)
    qi = torch.arange(n, device=fine.device)[:, None]
    kj = torch.arange(n, device=fine.device)[None, :]
    # a full block lies wholly before the first row of its query block and inside the sequence
    whole = ((kj + 1) * block - 1 <= qi * block) & ((kj + 1) * block <= length)
    full = every & whole
    return full, listed & ~full, fine


def flex_bigbird_mask(indices: torch.Tensor, length: int, block_size: int, block: int = FLEX_BLOCK) -> Any:
    """``BlockMask`` of BigBird's key-block lists (B, H, NQ, W) (q_len = kv_len = length)."""
    full, partial, fine = flex_bigbird_tables(indices, length, block_size, block)

    def mask_mod(bi, hi, q_idx, kv_idx):
        return (q_idx >= kv_idx) & fine[bi, hi, q_idx // block_size, kv_idx // block_size]

    return flex_block_mask(full, partial, length, block, mask_mod)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), wall milliseconds of that one call, device synchronised)."""
    result: list[Any] = []
    ms = once_ms(lambda: result.append(fn()))
    return result[0], ms


_COMPILED_FLEX: list[Callable] = []


def compiled_flex() -> Callable:
    """``flex_attention`` compiled once per process (static shapes)."""
    if not _COMPILED_FLEX:
        import torch._dynamo  # local: defers torch's compile machinery
        from torch.nn.attention.flex_attention import flex_attention  # local: defers torch's compile machinery
        # one compilation per (context, mask family); keep them all cached
        for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
        _COMPILED_FLEX.append(torch.compile(flex_attention, dynamic=False))
    return _COMPILED_FLEX[0]


def _static_rows(rec: _Recorder, q, k, v, context: int, name: str, compression: float, base_ms: dict[str, float],
                 check: bool, flex: bool) -> None:
    # local: defers triton
    from ..ops.block_sparse.triton import block_counts, block_sparse_attention_triton, launch_block_sparse
    b, h, _, d = q.shape
    m = static_method(name, context, compression)

    def run_method() -> tuple[torch.Tensor, Any]:
        # the kernel path by name: a silent fallback to the reference would pass the check
        return m(q, k, v, backend="triton")

    out, stats = run_method()
    params = {"target": compression, **pattern_params(m, stats)}
    metrics: dict[str, Any] = {}
    refs = reference_windows(q, k, v, pinned_method(m, stats)) if check else []
    if check:
        metrics["rel_err"] = worst_error(out, refs)
        rec.log(f"  check {name} (compression {stats.compression:.2f}): rel err {metrics['rel_err']:.2e}")
        if not metrics["rel_err"] <= CHECK_TOL:
            raise AssertionError(f"{name} rel err {metrics['rel_err']:.3e} > {CHECK_TOL}")
    del out
    # the parts: planning (key-block lists on the GPU) and the kernel alone
    if name == "bigbird":
        bs = m.block_size
        idx = m.plan(q, k)
        n_all = block_counts(idx, context, context, bs, bs)[1]
        computed = float(n_all.double().sum()) * bs * bs * (h // idx.shape[1])

        def plan() -> Any:
            return m.plan(q, k)

        def kernel() -> torch.Tensor:
            return block_sparse_attention_triton(q, k, v, idx, block_q=bs, block_k=bs, check_indices=False)
    else:
        window = stats.info["window"]
        sink = m.sink if name == "streaming" else 0
        glob = m.global_positions if name == "sliding_window" else ()
        local = LocalMask.build(min(window, context), sink, glob, context)
        lists, n_full, n_all = local_block_lists(local, context, context, 64, 64, q.device)
        nq, width = lists.shape
        hkv = k.shape[1]
        computed = float(n_all.double().sum()) * 64 * 64 * b * h

        def plan() -> Any:
            return local_block_lists(local, context, context, 64, 64, q.device)

        def kernel() -> torch.Tensor:
            return launch_block_sparse(q, k, v, lists[None, None].expand(b, hkv, nq, width),
                                       n_full[None, None].expand(b, hkv, nq), n_all[None, None].expand(b, hkv, nq),
                                       block_q=64, block_k=64, scale=d ** -0.5, local=local)
    baselines = dict(base_ms)
    if flex:
        try:
            if name == "bigbird":
                block_mask, mask_ms = timed(lambda: flex_bigbird_mask(idx, context, m.block_size))
            else:
                block_mask, mask_ms = timed(lambda: flex_local_mask(local, context, q.device))
            fn = compiled_flex()

            def run_flex() -> torch.Tensor:
                return fn(q, k, v, block_mask=block_mask, enable_gqa=True)
            flex_out = run_flex()
            flex_metrics: dict[str, Any] = {"block_mask_ms": mask_ms}
            ok = True
            if check:
                flex_metrics["rel_err"] = worst_error(flex_out, refs)
                rec.log(f"  check flex {name}: rel err {flex_metrics['rel_err']:.2e}")
                ok = flex_metrics["rel_err"] <= CHECK_TOL
            del flex_out
            if ok:
                flex_ms = bench_ms(run_flex)
                flex_metrics["tflops_pairs"] = attention_flops(stats.computed, d) / flex_ms / 1e9
                rec.emit(name, context, stats.compression, {"impl": "flex", **params, "block": FLEX_BLOCK},
                         flex_ms, base_ms, flex_metrics)
                baselines["flex_pattern"] = flex_ms
            else:
                rec.log(f"  flex {name}: output differs from the reference; not timed")
            del block_mask
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run here is reported and skipped
            rec.log(f"  flex {name}: skipped ({type(exc).__name__}: {str(exc)[:160]})")
    ms = bench_ms(run_method)
    metrics.update(plan_ms=bench_ms(plan), kernel_ms=bench_ms(kernel),
                   tflops_pairs=attention_flops(stats.computed, d) / ms / 1e9,
                   tflops_computed=attention_flops(computed, d) / ms / 1e9)
    rec.emit(name, context, stats.compression, {"impl": "triton", **params}, ms, baselines, metrics)


def _flexprefill_rows(rec: _Recorder, q, k, v, context: int, compression: float | None, base_ms: dict[str, float],
                      check: bool) -> None:
    b, h, _, d = q.shape
    budget = {} if compression is None else {"compression": compression}
    m = get_method("flexprefill", **budget)
    out, stats = m(q, k, v)
    metrics: dict[str, Any] = {"alpha": stats.info["alpha"]}
    if check:
        vi, si = m.plan(q, k)
        metrics["rel_err"] = check_vertical_slash(q, k, v, vi, si, out)
        rec.log(f"  check flexprefill: rel err {metrics['rel_err']:.2e}")
        if not metrics["rel_err"] <= CHECK_TOL:
            raise AssertionError(f"flexprefill rel err {metrics['rel_err']:.3e} > {CHECK_TOL}")
    del out
    ms = bench_ms(lambda: m(q, k, v))
    metrics.update(plan_ms=bench_ms(lambda: m.plan(q, k)),
                   tflops_pairs=attention_flops(stats.computed, d) / ms / 1e9,
                   mean_vertical=float(stats.info["vertical_budget"].double().mean()),
                   mean_slash=float(stats.info["slash_budget"].double().mean()))
    params = {**(budget or {"alpha": 0.9}), "target": compression, "estimation": True,
              "exact": bool(getattr(m, "exact", True))}
    rec.emit("flexprefill", context, stats.compression, params, ms, base_ms, metrics)


def run_prefill_bench(contexts: Sequence[int], methods: Sequence[str], compressions: Sequence[float | None],
                      check: bool, out_path: str | Path, progress: bool = True, *,
                      baselines: Sequence[str] = BASELINES, seed: int = 0,
                      bs_configs: Sequence[tuple[int, int]] | None = None,
                      vs_configs: Sequence[tuple[int, int, int]] | None = None,
                      vs_lines: Sequence[str] = ("band", "scattered"),
                      flex_patterns: bool = True, detail: bool = True, resume: bool = False,
                      device: str = "cuda") -> list[dict[str, Any]]:
    """Time sparse prefill against the dense baselines; write rows to ``out_path`` as they come.

    Args:
        contexts: sequence lengths (q_len = kv_len).
        methods: any of "block_sparse", "vertical_slash", "sliding_window", "streaming",
            "bigbird", "flexprefill".
        compressions: block-sparse: targets (block density 1/c among causal blocks; ``None``
            entries are skipped); vertical-slash: ``None`` = the paper budgets (1000 vertical +
            6096 slash), a number = the method's compression target; static methods: targets
            (``None`` skipped); flexprefill: targets, ``None`` = alpha 0.9.
        check: compare each kernel with the reference on two windows of 256 query rows
            (rel. error <= 1e-2 in bf16) before timing it; a failure raises (a FlexAttention
            pattern that fails is reported and not timed).
        out_path: results JSON (BENCHMARKS.md schema); rows are added as they are measured.
        baselines: dense baselines to time ("sdpa_cudnn", "sdpa_flash", "flex").
        bs_configs: (num_warps, num_stages) pairs to try for the block-sparse kernel.
        vs_configs: (block_q, num_warps, num_stages) triples to try for the vertical-slash
            attention kernel (exact semantics, first line set).
        vs_lines: synthetic line sets timed besides the planned ones ("band" is used only
            when the vertical_slash method is not registered, "scattered").
        flex_patterns: also time FlexAttention with a ``BlockMask`` of each static pattern.
        detail: the profiling rows too (block-sparse lists per query head, the vertical-slash
            superset kernel and the torch spec of its conversion); ``False`` keeps the grid's
            rows: each method end to end and its main kernel alone.
        resume: skip the (method, context, compression) cells whose end-to-end row is already in
            ``out_path`` (same device and shape), and a context's dense baselines when none of its
            cells is left. A cell cut short after its end-to-end row keeps its other rows as they are.
        device: "cuda"; "cpu" only as a smoke test under ``TRITON_INTERPRET=1`` (tiny contexts).

    Returns the rows of the results file.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run_prefill_bench needs a CUDA GPU (device='cuda')")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"methods: unknown {sorted(unknown)}; choose from {', '.join(METHODS)}")
    rec = _Recorder(out_path, progress)
    rec.log(f"device: {rec.file.header['device']}, torch {rec.file.header['torch']}, "
            f"triton {rec.file.header['triton']}")
    gen = torch.Generator(device=device).manual_seed(seed)
    failures: list[str] = []
    done = done_cells(rec.file.rows) if resume else set()
    for context in contexts:
        todo = [(m, c) for m in methods for c in compressions if cell_key(m, context, c) not in done
                and not (c is None and m in ("block_sparse", *STATIC_METHODS))]
        if not todo:
            rec.log(f"  {context:>7}: every cell already in {out_path}")
            continue
        q, k, v = banded_qkv(context, seed=seed, device=device,
                             **{k_: SHAPE[k_] for k_ in ("batch", "heads", "kv_heads", "head_dim")})
        fns = dense_baselines(q, k, v, baselines)
        base_ms = {}
        for name, fn in fns.items():
            base_ms[name] = bench_ms(fn)
            rec.log(f"  {context:>7} dense {name}: {base_ms[name]:.3f} ms "
                    f"({attention_flops(causal_pairs(context, context) * SHAPE['heads'], SHAPE['head_dim']) / base_ms[name] / 1e9:.0f} TFLOP/s)")
        del fns
        if "sdpa_cudnn" in base_ms:
            for name, ms in base_ms.items():
                if name != "sdpa_cudnn":
                    rec.emit(name, context, 1.0, {}, ms, {"sdpa_cudnn": base_ms["sdpa_cudnn"]}, {})
        for method, c in todo:
            try:
                _method_rows(rec, q, k, v, context, method, c, base_ms, check, gen, bs_configs, vs_configs,
                             vs_lines, flex_patterns, detail)
            except (torch.cuda.OutOfMemoryError, RuntimeError, AssertionError) as exc:
                # one failing cell must not lose the rest of a long grid; reported at the end
                failures.append(f"{method} at {context} (compression {c}): {type(exc).__name__}: {exc}")
                rec.log(f"  FAILED {failures[-1][:300]}")
                torch.cuda.empty_cache()
        del q, k, v
    if progress:
        rec.print_table()
    if failures:
        raise RuntimeError(f"{len(failures)} benchmark cell(s) failed:\n" + "\n".join(failures))
    return rec.file.rows


def cell_key(method: str, context: int, compression: float | None) -> tuple[str, int, float | None]:
    """A grid cell: method, context and compression target (None: the method's default budget)."""
    return method, int(context), None if compression is None else float(compression)


def end_to_end(row: dict[str, Any]) -> bool:
    """A method's row with its planning included (not a kernel-alone, FlexAttention or dense row)."""
    p = row.get("params", {})
    return p.get("estimation") is True or p.get("impl") == "triton"


def done_cells(rows: Sequence[dict[str, Any]]) -> set[tuple[str, int, float | None]]:
    """Cells of a results file that have their end-to-end row for this shape."""
    out = set()
    for r in rows:
        p = r.get("params", {})
        if r.get("bench") == "prefill" and r.get("shape") == SHAPE and end_to_end(r) and "target" in p:
            out.add(cell_key(r["method"], r["context"], p["target"]))
    return out


def _method_rows(rec: _Recorder, q, k, v, context: int, method: str, c: float | None, base_ms: dict[str, float],
                 check: bool, gen: torch.Generator, bs_configs, vs_configs, vs_lines, flex_patterns: bool,
                 detail: bool) -> None:
    """The rows of one (method, compression) cell of the grid (``None``: see run_prefill_bench;
    the block-sparse and static methods get no ``None`` cell)."""
    if method == "block_sparse":
        _bs_rows(rec, q, k, v, context, float(c), base_ms, check, gen, bs_configs, detail)
    elif method == "vertical_slash":
        _vs_rows(rec, q, k, v, context, c, base_ms, check, gen, vs_configs, vs_lines if detail else (), detail)
    elif method in STATIC_METHODS:
        _static_rows(rec, q, k, v, context, method, float(c), base_ms, check, flex_patterns)
    else:
        _flexprefill_rows(rec, q, k, v, context, None if c is None else float(c), base_ms, check)


__all__ = ["BASELINES", "METHODS", "SHAPE", "STATIC_METHODS", "banded_qkv", "check_block_sparse",
           "cell_key", "check_vertical_slash", "dense_baselines", "done_cells", "end_to_end", "flex_bigbird_mask", "flex_bigbird_tables", "flex_causal_mask", "flex_local_mask",
           "flex_local_tables", "line_sets",
           "longformer_globals", "pinned_method", "random_block_indices", "run_prefill_bench", "static_method"]

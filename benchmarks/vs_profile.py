"""Vertical-Slash profile (1000 vertical + 6096 slash lines) against SDPA cuDNN in the same run.

Llama-3-8B attention shape (32 q / 8 KV heads, head_dim 128, bf16, batch 1). Inputs: banded
q/k/v (``sparsa.bench.prefill.banded_qkv``: planned lines mostly contiguous) and scattered
lines (100 recent + random diagonals, random columns). A check at 8K against the references
(rel. err <= 1e-2), then per context: planning parts, conversions, kernels (exact / superset,
block_q, warps), the method end to end and dense cuDNN. Prints a table and writes
``<out>/vs_profile.json`` (BENCHMARKS.md schema).

    python benchmarks/vs_profile.py --out benchmarks/results
"""
import argparse
import statistics
import time
from pathlib import Path

import torch
import triton.testing

from sparsa.bench.prefill import SHAPE, banded_qkv, dense_baselines, line_sets
from sparsa.bench.timing import ResultsFile, rel_err
from sparsa.methods._estimate import top_lines
from sparsa.methods.vertical_slash import VerticalSlash
from sparsa.ops.dense.reference import causal_pairs, dense_attention
from sparsa.ops.vertical_slash import estimate_triton, vertical_slash_attention, vertical_slash_attention_ref
from sparsa.ops.vertical_slash.convert import (GATHER_BIT, superset_pairs, superset_routes_dense,
                                               vertical_slash_pairs, vertical_slash_superset_ref)
from sparsa.ops.vertical_slash.estimate import line_mass_reference
from sparsa.ops.vertical_slash.triton import vertical_slash_attention_triton, vertical_slash_layout

H, SCALE = SHAPE["heads"], SHAPE["head_dim"] ** -0.5
TOL = 1e-2


def bench(fn) -> float:
    """do_bench median (ms); a path slower than 300 ms after warm-up: median of 3 timed calls."""
    def wall() -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) * 1e3
    fn()
    first = wall()
    if first < 300:
        return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))
    return statistics.median([first, wall(), wall()])


def same(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of the lines of ``a`` that ``b`` chose too (per head, averaged)."""
    return float((a[..., :, None] == b[..., None, :]).any(-1).float().mean())


def check(gen: torch.Generator) -> dict:
    """Method (both semantics) and scattered-lines kernel against the references at 8K."""
    n = 8192
    q, k, v = banded_qkv(n, device="cuda")
    budget = dict(vertical=100, slash=600)
    m = VerticalSlash(**budget)
    vi, si, _ = m._plan(q, k, SCALE)
    vi_r, si_r, _ = m._plan(q, k, SCALE, "reference")
    fast, ref = estimate_triton.line_mass_triton(q, k, SCALE, 64), line_mass_reference(q, k, SCALE, 64)
    res = {"estimate_max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(fast, ref)),
           "same_vertical": same(vi, vi_r), "same_slash": same(si, si_r), "diagonal_path": estimate_triton.diagonal_path()}
    ref, _ = vertical_slash_attention_ref(q, k, v, vi, si)
    res["exact_default"] = rel_err(m(q, k, v)[0], ref)
    res["exact_bq128"] = rel_err(VerticalSlash(block_q=128, **budget)(q, k, v)[0], ref)
    lay = vertical_slash_layout(q, k, vi, si, exact=False)
    sref = vertical_slash_superset_ref(q, k, v, lay)[0]
    res["superset_kernel"] = rel_err(vertical_slash_attention_triton(q, k, v, layout=lay), sref)
    sref = dense_attention(q, k, v) if superset_routes_dense(lay) else sref
    res["superset_method"] = rel_err(VerticalSlash(exact=False, **budget)(q, k, v)[0], sref)
    vx, sx = line_sets("scattered", 1, H, n, 100, 600, gen)
    res["scattered_exact"] = rel_err(vertical_slash_attention(q, k, v, vx, sx)[0],
                                     vertical_slash_attention_ref(q, k, v, vx, sx)[0])
    print("check at 8K:", {key: (f"{x:.2e}" if isinstance(x, float) else x) for key, x in res.items()})
    bad = {key: x for key, x in res.items() if key.startswith(("exact", "superset", "scattered")) and not x <= TOL}
    assert not bad, f"rel. error above {TOL}: {bad}"
    return res


def layout_metrics(lay) -> dict:
    """Tiles per query block, fraction of unmasked tiles, fraction that take the offset bit test."""
    tiles = lay.tile_count.double().sum().clamp_min(1)
    return {"tiles_per_block": float(lay.tile_count.double().mean()),
            "clean_fraction": float(lay.clean_count.double().sum() / tiles),
            "bit_test_fraction": float((lay.tiles >= GATHER_BIT).sum() / tiles)}


def profile(n: int, rec: ResultsFile, table: list, gen: torch.Generator) -> None:
    q, k, v = banded_qkv(n, device="cuda")
    dense_pairs = causal_pairs(n, n) * H
    fns = dense_baselines(q, k, v, ("sdpa_cudnn",))
    base = bench(fns["sdpa_cudnn"])
    del fns

    def add(lines: str, part: str, ms: float, params: dict | None = None, pairs: float | None = None, **metrics):
        comp = dense_pairs / pairs if pairs else 1.0
        rec.add({"bench": "prefill", "method": "vertical_slash", "pass": "fwd", "shape": SHAPE, "context": n,
                 "compression": comp, "params": {"lines": lines, "part": part, **(params or {})}, "ms": ms,
                 "baseline": "sdpa_cudnn", "baseline_ms": base, "speedup": base / ms, "metrics": metrics})
        notes = " ".join(f"{key}={x:.3g}" if isinstance(x, float) else f"{key}={x}" for key, x in metrics.items())
        table.append((n, lines, part, str(params or ""), ms, base / ms, f"{comp:.2f}" if pairs else "", notes))

    table.append((n, "-", "sdpa cuDNN (dense)", "", base, 1.0, "1.00", ""))
    m = VerticalSlash()
    vi, si, _ = m._plan(q, k, SCALE)
    col, diag = estimate_triton.line_mass_triton(q, k, SCALE, 64)
    add("planned", "estimate (Triton)", bench(lambda: estimate_triton.line_mass_triton(q, k, SCALE, 64)),
        path=estimate_triton.diagonal_path())
    add("planned", "estimate (torch reference)", bench(lambda: line_mass_reference(q, k, SCALE, 64)))
    add("planned", "select (topk)", bench(lambda: (top_lines(col, 30, 1000), top_lines(diag, 100, 6096))))
    add("planned", "plan = estimate + select", bench(lambda: m._plan(q, k, SCALE)))
    scattered = line_sets("scattered", 1, H, n, 1000, 6096, gen)
    configs = {"planned": [(True, 64, 4), (True, 128, 4), (True, 128, 8), (False, 128, 4), (False, 64, 4)],
               "scattered": [(True, 64, 4), (False, 128, 4)]}
    for kind, (v_idx, s_idx) in (("planned", (vi, si)), ("scattered", scattered)):
        for exact, bq, warps in configs[kind]:
            p = {"exact": exact, "block_q": bq}
            lay = vertical_slash_layout(q, k, v_idx, s_idx, block_q=bq, exact=exact, check_indices=False)
            if warps == 4:
                add(kind, "convert", bench(lambda: vertical_slash_layout(q, k, v_idx, s_idx, block_q=bq, exact=exact,
                                                                         check_indices=False)), p)
            pairs = float((vertical_slash_pairs(lay, H) if exact else superset_pairs(lay, H)).sum())
            ms = bench(lambda: vertical_slash_attention_triton(q, k, v, layout=lay, num_warps=warps))
            add(kind, "kernel", ms, {**p, "num_warps": warps}, pairs, routes_dense=superset_routes_dense(lay),
                **layout_metrics(lay))
            if kind == "scattered" and not exact:     # the op as the method calls it: routes to cuDNN
                add(kind, "op dispatch", bench(lambda: vertical_slash_attention(
                    q, k, v, v_idx, s_idx, exact=exact, block_q=bq, check_indices=False)), p)
    for params in ({}, {"block_q": 128}, {"exact": False}):
        method = VerticalSlash(**params)
        _, stats = method(q, k, v)
        add("planned", "method end to end", bench(lambda: method(q, k, v)), params, stats.computed)
    del q, k, v
    torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for vs_profile.json")
    ap.add_argument("--contexts", type=int, nargs="+", default=[32768, 131072])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("vs_profile needs a CUDA GPU")
    rec = ResultsFile(Path(args.out) / "vs_profile.json")
    gen = torch.Generator(device="cuda").manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {rec.header['torch']}, triton {rec.header['triton']}")
    t0 = time.perf_counter()
    rec.header["check_8k"] = check(gen)
    table: list = []
    for n in args.contexts:
        profile(n, rec, table, gen)
    print(f"\n{'ctx':>7} {'lines':<9} {'part':<27} {'params':<47} {'ms':>9} {'vs cuDNN':>9} {'compr':>6}  notes")
    for n, lines, part, params, ms, sp, comp, notes in table:
        print(f"{n:>7} {lines:<9} {part:<27} {params:<47} {ms:>9.3f} {sp:>8.2f}x {comp:>6}  {notes}")
    print(f"\nwrote {rec.path} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

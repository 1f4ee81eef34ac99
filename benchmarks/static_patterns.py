"""Static sparse patterns on one GPU: sparsa's block-sparse kernel vs FlexAttention vs SDPA cuDNN.

    python benchmarks/static_patterns.py --out benchmarks/results

Sliding window with global tokens (Longformer), A-shape / StreamingLLM (4 sinks + window) and
BigBird (64-blocks: window, global, random) at compression 10, contexts 32K and 128K, in the
Llama-3-8B attention shape (32 query heads, 8 KV heads, head_dim 128, batch 1), bf16. Each
method runs end to end (key-block lists built on the GPU, kernel, pair count); FlexAttention
runs compiled with a ``BlockMask`` of the same pattern (its mask build is not in its time).
Correctness comes first: a few small odd shapes (GQA 1/4/8, q_len < kv_len, head_dim 64/128,
bf16 and fp32) run the compiled kernels against the references, then every timed output is
compared with the method's reference on two windows of 256 query rows (relative error
<= 1e-2); a failing sparsa kernel stops the run, a failing FlexAttention output is reported
and not timed. Prints a table and writes ``<out>/static_patterns.json`` (the BENCHMARKS.md
schema; rows are written as they are measured).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from sparsa import BigBird, SlidingWindow, Streaming
from sparsa.bench.prefill import STATIC_METHODS, run_prefill_bench
from sparsa.bench.timing import rel_err

TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
SMALL_CASES = [
    # method, (batch, heads, kv_heads, q_len, kv_len, head_dim), dtype
    (SlidingWindow(window=37, global_positions=(0, 5, 96, 150, 160)), (2, 8, 2, 133, 250, 128), torch.bfloat16),
    (Streaming(sink=4, window=30, mode="prefill"), (2, 8, 1, 201, 201, 64), torch.bfloat16),
    (BigBird(block_size=64, seed=3), (2, 4, 4, 197, 300, 128), torch.bfloat16),
    (SlidingWindow(window=100, global_positions=(7, 2000)), (1, 32, 8, 2900, 3001, 128), torch.float32),
    (Streaming(sink=4, window=333, mode="prefill"), (1, 32, 8, 2900, 3001, 128), torch.float32),
    (BigBird(block_size=32, window_blocks=2, global_blocks=1, random_blocks=2), (2, 8, 8, 301, 301, 64),
     torch.float32),
]


def small_checks() -> bool:
    """The compiled kernels against the method references on small odd shapes; True if all pass."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    ok = True
    for method, (b, h, hkv, lq, lk, d), dtype in SMALL_CASES:
        q = torch.randn(b, h, lq, d, device="cuda", generator=gen).to(dtype)
        k = torch.randn(b, hkv, lk, d, device="cuda", generator=gen).to(dtype)
        v = torch.randn(b, hkv, lk, d, device="cuda", generator=gen).to(dtype)
        out, stats = method(q, k, v, backend="triton")
        ref, ref_stats = method(q.float(), k.float(), v.float(), backend="reference")
        err = rel_err(out, ref)
        good = err <= TOL[dtype] and stats.computed == ref_stats.computed and bool(torch.isfinite(out).all())
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {method.name} {(b, h, hkv, lq, lk, d)} {str(dtype)[6:]}: "
              f"rel err {err:.1e}, pairs {stats.computed:.0f} (reference {ref_stats.computed:.0f})", flush=True)
    return ok


def summary(rows: Sequence[dict[str, Any]], contexts: Sequence[int], methods: Sequence[str],
            compression: float) -> str:
    """One line per (context, method): sparsa, FlexAttention and cuDNN times and ratios."""
    picked: dict[tuple[int, str, str], dict[str, Any]] = {}
    for r in rows:
        params = r.get("params", {})
        if r.get("bench") == "prefill" and r.get("method") in methods and r.get("context") in contexts \
                and params.get("target") == compression and r.get("baseline") == "sdpa_cudnn":
            picked[(r["context"], r["method"], params.get("impl", ""))] = r
    head = (f"{'context':>8} | {'method':<15} | {'compr':>5} | {'sparsa ms':>9} | {'kernel ms':>9} | "
            f"{'flex ms':>8} | {'cuDNN ms':>8} | {'vs cuDNN':>8} | {'flex vs cuDNN':>13} | {'vs flex':>7} | "
            "rel err (sparsa / flex)")
    lines = [head, "-" * len(head)]
    for context in contexts:
        for method in methods:
            ours = picked.get((context, method, "triton"))
            flex = picked.get((context, method, "flex"))
            if ours is None:
                continue
            cud = ours["baseline_ms"]
            f_ms = flex["ms"] if flex else float("nan")
            errs = f"{ours['metrics'].get('rel_err', float('nan')):.1e} / " + \
                (f"{flex['metrics'].get('rel_err', float('nan')):.1e}" if flex else "-")
            kernel_ms = ours["metrics"].get("kernel_ms", float("nan"))
            lines.append(f"{context:>8} | {method:<15} | {ours['compression']:5.2f} | {ours['ms']:9.3f} | "
                         f"{kernel_ms:9.3f} | {f_ms:8.3f} | {cud:8.3f} | {cud / ours['ms']:7.2f}x | "
                         f"{cud / f_ms:12.2f}x | {f_ms / ours['ms']:6.2f}x | {errs}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for static_patterns.json (created if missing)")
    ap.add_argument("--contexts", type=int, nargs="+", default=[32768, 131072])
    ap.add_argument("--compression", type=float, default=10.0)
    ap.add_argument("--methods", nargs="+", default=list(STATIC_METHODS), choices=STATIC_METHODS)
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compilation is most of the time)")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness checks")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "static_patterns.json"
    t0 = time.perf_counter()
    if not args.no_check and not small_checks():
        print("error: a kernel differs from its reference", file=sys.stderr)
        return 1
    rows = run_prefill_bench(args.contexts, args.methods, [args.compression], check=not args.no_check,
                             out_path=path, progress=True, baselines=("sdpa_cudnn",),
                             flex_patterns=not args.no_flex)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}. Medians of triton.testing.do_bench; "
          "'sparsa ms' is the method end to end (key-block lists, kernel, pair count), 'kernel ms' the kernel "
          "alone; FlexAttention's BlockMask is built beforehand (not timed). Ratios over SDPA cuDNN, same run.\n")
    print(summary(rows, args.contexts, args.methods, args.compression))
    print(f"\nelapsed {time.perf_counter() - t0:.0f} s; results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

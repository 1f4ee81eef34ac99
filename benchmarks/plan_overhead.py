"""Time one layer's prefill planning (estimation + index building) per method, and count the
device-to-host synchronisations it makes.

Shapes are SmolLM2-135M's: 9 query / 3 KV heads of 64, bfloat16, batch 1. Per method and
context the script reports the planning wall time (GPU included: CUDA events around the
call), the host time until the call returns (no final synchronisation), and the number of
synchronising CUDA calls PyTorch reports under ``torch.cuda.set_sync_debug_mode("warn")``.

    python benchmarks/plan_overhead.py OUT.json                 # CUDA, 32K and 128K
    python benchmarks/plan_overhead.py OUT.json --smoke         # CPU, tiny size (a check)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # the repository's sparsa, uninstalled too

from sparsa.methods.block_sparse import BlockSparse
from sparsa.methods.flexprefill import FlexPrefill
from sparsa.methods.streaming import Streaming
from sparsa.methods.vertical_slash import VerticalSlash
from sparsa.ops.block_sparse import LocalMask, local_block_lists
from sparsa.ops.vertical_slash.convert import prepare_vertical_slash

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64


def planners(q: torch.Tensor, k: torch.Tensor, use_triton: bool) -> dict[str, Callable[[], Any]]:
    """One zero-argument callable per method: its planning for (q, k), index building included."""
    lq, lk = q.shape[2], k.shape[2]
    scale = HEAD_DIM ** -0.5
    backend = "triton" if use_triton else "reference"

    def lines(method: Any) -> Callable[[], Any]:
        def run() -> Any:
            vi, si, _ = method._plan(q, k, scale, backend)
            return prepare_vertical_slash(vi, si, lq, lk, use_triton=use_triton, exact=method.exact,
                                          block_q=method.block_q, check_indices=False)
        return run

    def block_sparse() -> Any:
        m = BlockSparse(compression=10.0)
        return m.plan(q, k, m.resolve_top_k(lq, lk))

    def streaming() -> Any:
        m = Streaming(compression=10.0, mode="prefill")
        local = LocalMask.build(min(m.resolve_window(lk, lq), lk), m.sink, None, lk)
        return local_block_lists(local, lq, lk, 64, 64, q.device)

    return {"vertical_slash": lines(VerticalSlash()),
            "vertical_slash_c10": lines(VerticalSlash(compression=10.0)),
            "flexprefill": lines(FlexPrefill()),
            "block_sparse_c10": block_sparse,
            "streaming_c10": streaming}


def count_syncs(fn: Callable[[], Any]) -> int | None:
    """Synchronising CUDA calls one run of ``fn`` makes (None off CUDA)."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def time_plan(fn: Callable[[], Any], reps: int, cuda: bool) -> dict[str, float]:
    """Median wall ms (GPU work included) and host ms (until the call returns) of ``fn``."""
    fn()                                          # warm-up: compilation, caches
    walls, hosts = [], []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        fn()
        hosts.append((time.perf_counter() - t0) * 1e3)
        if cuda:
            end.record()
            torch.cuda.synchronize()
            walls.append(start.elapsed_time(end))
        else:
            walls.append(hosts[-1])
    return {"wall_ms": sorted(walls)[len(walls) // 2], "host_ms": sorted(hosts)[len(hosts) // 2]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="JSON file to write")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny context: check that the script runs")
    ap.add_argument("--contexts", type=int, nargs="*", default=None, help="context lengths (default 32768 131072)")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    contexts = args.contexts or ([320] if args.smoke else [32768, 131072])
    reps = args.reps or (1 if args.smoke else 10)
    dtype = torch.bfloat16 if cuda else torch.float32
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    for n in contexts:
        q = torch.randn(1, HEADS, n, HEAD_DIM, device=device, dtype=dtype, generator=gen)
        k = torch.randn(1, KV_HEADS, n, HEAD_DIM, device=device, dtype=dtype, generator=gen)
        for name, fn in planners(q, k, use_triton=cuda).items():
            row = {"method": name, "context": n, **time_plan(fn, reps, cuda), "syncs": count_syncs(fn) if cuda else None}
            rows.append(row)
            print(f"{name:20s} {n:>7d}  wall {row['wall_ms']:9.3f} ms  host {row['host_ms']:9.3f} ms  "
                  f"syncs {row['syncs']}", flush=True)
        del q, k
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(dtype).replace("torch.", ""),
              "heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "torch": torch.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

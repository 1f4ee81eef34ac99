"""Timing helpers and the results-file writer shared by the benchmarks.

Results follow one schema (see BENCHMARKS.md)::

    {"device": ..., "torch": ..., "triton": ..., "created": ISO date,
     "rows": [{"bench", "method", "pass", "shape", "context", "compression", "params",
               "ms", "baseline", "baseline_ms", "speedup", "metrics"}]}

``metrics`` (optional) holds measured extras: achieved TFLOP/s, component times.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

PASSES = ("fwd", "bwd", "fwd_bwd", "decode", "e2e_prefill", "e2e_decode")


def device_info() -> dict[str, str]:
    """Card, library versions and the creation time, for a results file's header."""
    try:
        import triton  # local: defers triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"device": device, "torch": torch.__version__.split("+")[0], "triton": triton_version,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


SLOW_MS = 250.0      # above this (one warm call), bench_ms takes the median of 3 synchronised calls


def bench_ms(fn: Callable[[], Any], *, warmup: float = 25.0, rep: float = 100.0) -> float:
    """Median time of ``fn()`` in milliseconds.

    On CUDA: ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs; ``warmup``
    and ``rep`` are milliseconds of device time); a call slower than ``SLOW_MS`` after one
    warm-up: the median of three synchronised wall-clock calls. On the CPU: wall clock over a
    few runs.
    """
    if torch.cuda.is_available():
        import triton.testing  # local: defers triton
        fn()
        first = once_ms(fn)
        if first > SLOW_MS:
            # do_bench would make 5 estimation calls before its first timed one: seconds at 512K
            return float(statistics.median([first, once_ms(fn), once_ms(fn)]))
        return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    fn()
    times = []
    deadline = time.perf_counter() + rep / 1000.0
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 100):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


def graph_ms(fn: Callable[[], Any]) -> float | None:
    """Median time of a CUDA-graph replay of ``fn`` (captured after two warm-up calls), or None
    if it cannot be captured."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return bench_ms(graph.replay, warmup=10.0, rep=50.0)
    except RuntimeError:
        torch.cuda.synchronize()
        return None


def once_ms(fn: Callable[[], Any]) -> float:
    """Wall time of one call of ``fn()`` in milliseconds (device synchronised); for slow paths."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - t0) * 1000.0


def attention_flops(pairs: float, head_dim: int) -> float:
    """FLOPs of forward attention over ``pairs`` query-key pairs: Q·K^T and P·V, 2 each per MAC."""
    return 4.0 * float(pairs) * head_dim


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


class ResultsFile:
    """A results JSON file rewritten atomically after every added row.

    Rows already in the file from an earlier run on the same device are kept unless they
    describe the same measurement (same bench, method, pass, context, params and baseline),
    which the new row replaces.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.header = device_info()
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            try:
                old = json.loads(self.path.read_text())
            except (OSError, ValueError):
                old = {}
            if old.get("device") == self.header["device"]:
                self.rows = list(old.get("rows", []))

    @staticmethod
    def _key(row: dict[str, Any]) -> str:
        return json.dumps([row.get(k) for k in ("bench", "method", "pass", "context", "params", "baseline",
                                                 "shape")], sort_keys=True, default=str)

    def add(self, row: dict[str, Any]) -> None:
        if row.get("pass") not in PASSES:
            raise ValueError(f"row: pass must be one of {PASSES}, got {row.get('pass')!r}")
        key = self._key(row)
        self.rows = [r for r in self.rows if self._key(r) != key] + [row]
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps({**self.header, "rows": self.rows}, indent=1, default=float) + "\n")
        os.replace(tmp, self.path)


__all__ = ["ResultsFile", "attention_flops", "bench_ms", "device_info", "once_ms", "rel_err"]

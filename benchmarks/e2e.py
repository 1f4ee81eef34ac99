"""End-to-end prefill benchmark entry point (same as `sparsa bench e2e`).

    python benchmarks/e2e.py --context 32768 131072 --layers 32
"""
from __future__ import annotations

import argparse

from sparsa.bench.e2e import run_e2e_bench

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--context", type=int, nargs="+", default=[32768, 131072])
    ap.add_argument("--method", nargs="+", default=["vertical_slash"])
    ap.add_argument("--compression", type=float, default=None)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/e2e.json")
    a = ap.parse_args()
    run_e2e_bench(a.context, a.method, a.out, layers=a.layers, reps=a.reps, compression=a.compression)

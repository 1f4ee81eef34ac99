"""NSA benchmark entry point: Triton kernels vs SDPA cuDNN / FA2 (and fla-core) on one GPU.

    python benchmarks/nsa.py                                  # 64K, paper shape, fwd/bwd/decode
    python benchmarks/nsa.py --contexts 8192 32768 65536 131072 --shapes paper 32/8
    python benchmarks/nsa.py --plot-only                      # redraw the chart from the JSON

Results: benchmarks/results/nsa.json (schema in BENCHMARKS.md), written row by row, and
benchmarks/results/nsa.svg.
"""
from __future__ import annotations

from sparsa.bench.nsa import main

if __name__ == "__main__":
    main()

"""Decode benchmark entry point: every decode method on its compact cache vs dense decode, one GPU.

    python benchmarks/decode.py                                  # the whole grid
    python benchmarks/decode.py --contexts 65536 --batches 16 --shapes 32q8kv --budget-s 300

Results: benchmarks/results/decode.json (schema in BENCHMARKS.md), written row by row; rows
already there from the same device are skipped, so an interrupted run can be continued.
``--plot`` only redraws benchmarks/results/decode.svg from the results file.
"""
from __future__ import annotations

import sys

from sparsa.bench.decode import main, plot_svg

if __name__ == "__main__":
    if "--plot" in sys.argv:
        plot_svg("benchmarks/results/decode.json", "benchmarks/results/decode.svg")
    else:
        main(sys.argv[1:])

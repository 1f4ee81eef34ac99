"""Cost estimator: dollars per day dense vs sparse from measured speedups.

``estimate_cost(gpu_cost_per_day, speedup)`` is the core formula; ``lookup_speedup`` reads a
speedup for a method and context length from ``benchmarks/results/*.json``.
"""
from __future__ import annotations

from .bench import (DEFAULT_BASELINE, PASS_PREFERENCE, BenchRow, SpeedupCurve, SpeedupLookup, available_methods,
                    describe_lookup, load_bench_rows, lookup_speedup, plot_cost_vs_context, speedup_curves)
from .estimate import (DAYS_PER_MONTH, CostEstimate, Workload, describe_cost, estimate_cost, format_usd,
                       gpu_cost_per_day, workload)

__all__ = ["DAYS_PER_MONTH", "DEFAULT_BASELINE", "PASS_PREFERENCE", "BenchRow", "CostEstimate", "SpeedupCurve",
           "SpeedupLookup", "Workload", "available_methods", "describe_cost", "describe_lookup", "estimate_cost",
           "format_usd", "gpu_cost_per_day", "load_bench_rows", "lookup_speedup", "plot_cost_vs_context",
           "speedup_curves", "workload"]

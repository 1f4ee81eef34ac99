"""Prefill benchmark entry point: sparse kernels/methods vs dense attention on one GPU.

    python benchmarks/prefill.py                       # 64K block-sparse, 128K vertical-slash
    python benchmarks/prefill.py --contexts 65536 131072 --methods vertical_slash --no-check

Results: benchmarks/results/prefill.json (schema in BENCHMARKS.md), written row by row.
"""
from __future__ import annotations

import argparse

from sparsa.bench.prefill import BASELINES, run_prefill_bench


def _compression(text: str) -> float | None:
    return None if text.lower() in ("none", "paper") else float(text)


def _config(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.lower().split("x"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, nargs="+", default=None,
                    help="context lengths (default: 65536 for block_sparse, 131072 for vertical_slash, "
                         "32768 and 131072 for the others)")
    ap.add_argument("--methods", nargs="+", default=["block_sparse", "vertical_slash"],
                    help="block_sparse, vertical_slash, flexprefill, sliding_window, streaming, bigbird")
    ap.add_argument("--compressions", type=_compression, nargs="+", default=None,
                    help="targets; 'paper' = vertical-slash 1000/6096 budgets "
                         "(default: 10 for block_sparse, paper for vertical_slash, 5 10 20 for the others)")
    ap.add_argument("--baselines", nargs="+", default=list(BASELINES))
    ap.add_argument("--bs-configs", type=_config, nargs="+", default=None,
                    help="block-sparse kernel (num_warps)x(num_stages) variants to time, e.g. 8x2 8x3")
    ap.add_argument("--vs-configs", type=_config, nargs="+", default=None,
                    help="vertical-slash kernel variants (block_q)x(num_warps)x(num_stages), e.g. 128x4x2 64x4x3")
    ap.add_argument("--vs-lines", nargs="*", default=["band", "scattered"],
                    help="synthetic vertical-slash line sets to time besides the planned ones")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness checks at real size")
    ap.add_argument("--out", default="benchmarks/results/prefill.json")
    args = ap.parse_args()
    defaults = {"block_sparse": ([65536], [10.0]), "vertical_slash": ([131072], [None])}
    for name in ("flexprefill", "sliding_window", "streaming", "bigbird"):
        defaults[name] = ([32768, 131072], [5.0, 10.0, 20.0])
    for method in args.methods:
        contexts = args.contexts or defaults[method][0]
        compressions = args.compressions if args.compressions is not None else defaults[method][1]
        run_prefill_bench(contexts, [method], compressions, check=not args.no_check, out_path=args.out,
                          baselines=args.baselines, bs_configs=args.bs_configs,
                          vs_configs=args.vs_configs, vs_lines=args.vs_lines)


if __name__ == "__main__":
    main()

"""NSA benchmark entry point: Triton kernels vs SDPA cuDNN / FA2 (and fla-core) on one GPU.

    python benchmarks/nsa.py                                  # 64K, paper shape, fwd/bwd/decode
    python benchmarks/nsa.py --contexts 8192 32768 65536 131072 --shapes paper 32/8
    python benchmarks/nsa.py --plot-only                      # redraw the chart from the JSON

Results: benchmarks/results/nsa.json (schema in BENCHMARKS.md), written row by row, and
benchmarks/results/nsa.svg.
"""
from __future__ import annotations

import argparse

from sparsa.bench.nsa import SHAPES, plot_svg, run_nsa_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, nargs="+", default=[65536])
    ap.add_argument("--shapes", nargs="+", default=["paper"], choices=sorted(SHAPES))
    ap.add_argument("--passes", nargs="+", default=["fwd", "bwd", "decode"], choices=["fwd", "bwd", "decode"])
    ap.add_argument("--decode-batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--baselines", nargs="+", default=["sdpa_cudnn", "sdpa_flash"])
    ap.add_argument("--no-check", action="store_true", help="skip the correctness checks against the reference")
    ap.add_argument("--skip-checks", nargs="*", default=[],
                    choices=["prefill_2048", "prefill_4097_fwd", "decode_8229_b2"], help="checks to leave out")
    ap.add_argument("--no-fla", action="store_true", help="skip the fla-core comparison")
    ap.add_argument("--sweep", action="store_true", help="also time alternative launch shapes of the branch kernels")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting measurements after this many seconds")
    ap.add_argument("--out", default="benchmarks/results/nsa.json")
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    if not args.plot_only:
        run_nsa_bench(args.contexts, args.shapes, passes=args.passes, decode_batches=args.decode_batches,
                      baselines=args.baselines, check=not args.no_check, fla=not args.no_fla, sweep=args.sweep,
                      out_path=args.out, skip_checks=args.skip_checks,
                      budget_s=args.budget_s)
    plot_svg(args.out, args.out.rsplit(".", 1)[0] + ".svg")


if __name__ == "__main__":
    main()

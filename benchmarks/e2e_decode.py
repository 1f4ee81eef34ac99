"""End-to-end decode tokens/s, dense SDPA vs sparsa's decode methods, one GPU, one run.

    python benchmarks/e2e_decode.py --out results/        # writes results/e2e.json and results/e2e_decode.txt

A Llama-3-8B-shaped model with random bf16 weights (4 layers by default), a 64K-token context
per sequence filled directly with random keys and values, batch 16; see
:mod:`sparsa.bench.e2e` for what is timed. The same as ``sparsa bench e2e --phase decode``
with the results file placed in ``--out``. About 2-3 minutes on one H100.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

try:
    import sparsa  # noqa: F401
except ImportError:  # run from a checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparsa.bench.e2e import DECODE_METHODS, run_e2e_decode_bench  # noqa: E402


class _Tee(io.TextIOBase):
    def __init__(self, *streams: io.TextIOBase) -> None:
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
            st.flush()
        return len(s)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="End-to-end decode: dense SDPA vs sparsa decode methods.")
    ap.add_argument("--out", required=True, help="folder for e2e.json (results rows) and e2e_decode.txt (log)")
    ap.add_argument("--context", type=int, default=65536)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--methods", nargs="+", default=list(DECODE_METHODS), choices=list(DECODE_METHODS))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "e2e_decode.txt", "w") as log, contextlib.redirect_stdout(_Tee(sys.stdout, log)):
        print(f"context {args.context}, batch {args.batch}, layers {args.layers}, steps {args.steps} "
              f"(+{args.warmup} warm-up)", flush=True)
        run_e2e_decode_bench(out / "e2e.json", context=args.context, batch=args.batch, layers=args.layers,
                             steps=args.steps, warmup=args.warmup, methods=args.methods)


if __name__ == "__main__":
    main()

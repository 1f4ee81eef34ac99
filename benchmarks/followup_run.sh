#!/usr/bin/env bash
# One GPU call: re-measure the prefill methods end to end (planning included) and the
# end-to-end model prefill. Results land in $OUT (or benchmarks/results when OUT is unset).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
python - <<'PY'
import os, shutil
from sparsa.bench.prefill import run_prefill_bench
out = os.environ.get("OUT", "benchmarks/results")
shutil.copy("benchmarks/results/prefill.json", f"{out}/prefill.json") if out != "benchmarks/results" else None
run_prefill_bench([65536], ["block_sparse"], [10.0], False, f"{out}/prefill.json", bs_configs=None)
run_prefill_bench([131072], ["vertical_slash"], [None], False, f"{out}/prefill.json", vs_lines=(), baselines=("sdpa_cudnn",))
PY
timeout 300 python benchmarks/e2e.py --context 32768 131072 --layers 4 --reps 2 --out "$OUT/e2e.json"

#!/usr/bin/env bash
# Prefill methods end to end (planning included) and the end-to-end model prefill, on one GPU.
# Each command stays under about 10 minutes on an H100.
#   bash benchmarks/prefill_methods.sh [RESULTS_DIR]
set -euo pipefail
RESULTS=${1:-benchmarks/results}
mkdir -p "$RESULTS"
sparsa bench prefill -n 65536 -m block_sparse -c 10 --no-check --out "$RESULTS/prefill.json"
sparsa bench prefill -n 131072 -m vertical_slash -c paper --no-check --out "$RESULTS/prefill.json"
for m in sliding_window streaming bigbird flexprefill; do
  sparsa bench prefill -n 32768 -n 131072 -m "$m" -c 5 -c 10 -c 20 --out "$RESULTS/prefill.json"
done
python benchmarks/static_patterns.py --out "$RESULTS"
python benchmarks/vs_profile.py --out "$RESULTS"
sparsa bench e2e -n 32768 -n 131072 --layers 4 --reps 2 --out "$RESULTS/e2e.json"

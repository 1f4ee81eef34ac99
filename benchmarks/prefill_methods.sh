#!/usr/bin/env bash
# Prefill methods end to end (planning included) and the end-to-end model prefill, on one GPU.
#   bash benchmarks/prefill_methods.sh [RESULTS_DIR]
set -euo pipefail
RESULTS=${1:-benchmarks/results}
mkdir -p "$RESULTS"
sparsa bench prefill -n 65536 -m block_sparse -c 10 --no-check --out "$RESULTS/prefill.json"
sparsa bench prefill -n 131072 -m vertical_slash -c paper --no-check --out "$RESULTS/prefill.json"
sparsa bench e2e -n 32768 -n 131072 --layers 4 --reps 2 --out "$RESULTS/e2e.json"

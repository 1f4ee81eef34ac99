#!/usr/bin/env bash
# The prefill grid (every prefill method x compression 5/10/20, vertical-slash's paper budget,
# 8K-512K, FA2 and FlexAttention in the same runs), then the profiles and the model prefill, on
# one GPU. Each command stays under about 10 minutes on an H100; with --resume a command that
# was cut short continues where it stopped when run again.
#   bash benchmarks/prefill_methods.sh [RESULTS_DIR]
set -euo pipefail
RESULTS=${1:-benchmarks/results}
mkdir -p "$RESULTS"
ALL="-m block_sparse -m vertical_slash -m sliding_window -m streaming -m bigbird -m flexprefill"
GRID="-c 5 -c 10 -c 20 -c paper --no-detail --resume --out $RESULTS/prefill.json"
python -m sparsa bench prefill -n 8192 -n 32768 -n 131072 $ALL $GRID
python -m sparsa bench prefill -n 524288 -m vertical_slash -m streaming -m sliding_window -m block_sparse $GRID
python -m sparsa bench prefill -n 524288 -m bigbird -m flexprefill $GRID
# kernel variants and profiles
python -m sparsa bench prefill -n 65536 -m block_sparse -c 10 --out "$RESULTS/prefill.json"
python benchmarks/static_patterns.py --out "$RESULTS"
python benchmarks/vs_profile.py --out "$RESULTS"
python -m sparsa bench e2e -n 32768 -n 131072 --layers 4 --reps 2 --out "$RESULTS/e2e.json"
python benchmarks/plot_prefill.py "$RESULTS/prefill.json"

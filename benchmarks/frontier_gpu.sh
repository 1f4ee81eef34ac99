#!/usr/bin/env bash
# The frontier grid on one GPU, in commands of under ten minutes that resume each other.
#   bash benchmarks/frontier_gpu.sh MODEL OUT_DIR MINUTES [extra sparsa-eval options]
# MODEL: a .gguf file or model directory; OUT_DIR is continued if it exists.
set -euo pipefail
model=$1; out=$2; minutes=$3; shift 3
# retrieval tasks at the shorter lengths come first (the sweep orders them so)
python -m sparsa eval --model "$model" --out "$out" --time-limit "$minutes" \
  -t niah_single -t niah_multikey -t niah_multiquery -t variable_tracking \
  --batch-size 64 --no-report "$@"

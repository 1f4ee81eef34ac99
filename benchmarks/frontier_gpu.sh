#!/usr/bin/env bash
# The frontier grid on one GPU, in commands of under ten minutes that resume each other.
#   [NPROC=N] [TASKS="niah_single ..."] bash benchmarks/frontier_gpu.sh MODEL OUT_DIR MINUTES [sparsa-eval options]
# MODEL: a .gguf file or model directory; OUT_DIR is continued if it exists.
# NPROC > 1 runs N ranks on the one card (torchrun, cells sharded, rows.rank<i>.jsonl each): a
# small model leaves the GPU mostly idle between kernel launches, so ranks side by side add up.
set -euo pipefail
model=$1; out=$2; minutes=$3; shift 3
nproc=${NPROC:-1}
# retrieval tasks at the shorter lengths come first (the sweep orders them so)
args=(eval --model "$model" --out "$out" --time-limit "$minutes" --batch-size 64 --no-report)
for t in ${TASKS:-niah_single niah_multikey niah_multiquery variable_tracking}; do args+=(-t "$t"); done
args+=("$@")
if [ "$nproc" -gt 1 ]; then
  torchrun --standalone --nproc-per-node "$nproc" -m sparsa "${args[@]}" --device cuda
else
  python -m sparsa "${args[@]}"
fi

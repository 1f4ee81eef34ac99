#!/usr/bin/env bash
# GPU command once the SmolLM2 GGUF is on the machine (gpu_burst.sh joins it): the evaluation
# throughput at 8K (dense, both prefill paths, batch 16 and 64; three sparse methods at batch 32),
# then the frontier grid for the minutes left (smollm2_frontier_tail.sh); $OUT gets one tarball.
#   bash benchmarks/smollm2_gpu_call.sh THROUGHPUT_SECONDS FRONTIER_MINUTES [extra sparsa-eval options]
set -u
tp_s=$1; fr_min=$2; shift 2
bash benchmarks/gpu_burst.sh
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
g=/root/x/SmolLM2-135M-Instruct.Q4_1.gguf
if [ "$tp_s" -gt 0 ]; then
  timeout "$tp_s" python benchmarks/eval_throughput.py "$g" "$OUT/eval_throughput_dense.json" --length 8192 \
    --samples 64 --batch 16 --batch 64 --method dense > "$OUT/throughput.log" 2>&1
  timeout "$tp_s" python benchmarks/eval_throughput.py "$g" "$OUT/eval_throughput_sparse.json" --length 8192 \
    --samples 32 --batch 32 --method vertical_slash:10 --method block_sparse:10 --method snapkv:10 \
    >> "$OUT/throughput.log" 2>&1
  grep -v -i "warn\|Converting\|Loading" "$OUT/throughput.log" | tail -12
fi
bash benchmarks/smollm2_frontier_tail.sh "$fr_min" "$@"

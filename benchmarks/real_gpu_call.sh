#!/usr/bin/env bash
# GPU command for the real-model runs once the SmolLM2 GGUF is on the machine (gpu_burst.sh):
# the planning overhead, the in-model prefill profile at 32K and 128K, then the frontier grid
# (smollm2_frontier_tail.sh) for the minutes left; $OUT gets one tarball.
#   bash benchmarks/real_gpu_call.sh E2E_SECONDS FRONTIER_MINUTES [extra sparsa-eval options]
set -u
e2e_s=$1; fr_min=$2; shift 2
bash benchmarks/gpu_burst.sh
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
g=/root/x/SmolLM2-135M-Instruct.Q4_1.gguf
timeout 60 python benchmarks/plan_overhead.py "$OUT/plan_overhead.json" > "$OUT/plan_overhead.log" 2>&1
tail -15 "$OUT/plan_overhead.log"
timeout "$e2e_s" python -m sparsa bench e2e --model "$g" --profile -n 32768 -n 131072 \
  --out "$OUT/e2e_real.json" > "$OUT/e2e.log" 2>&1
grep -v Warning "$OUT/e2e.log" | tail -30
bash benchmarks/smollm2_frontier_tail.sh "$fr_min" "$@"

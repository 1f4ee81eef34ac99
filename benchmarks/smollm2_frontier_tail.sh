#!/usr/bin/env bash
# The end of a SmolLM2 GPU call (after gpu_burst.sh): the frontier grid for the minutes left,
# continued from benchmarks/results/frontier/smollm2 (or from /root/frontier-smollm2 when
# that exists), and everything under $OUT packed into one tarball (the results travel
# as a single file). NPROC and TASKS pass through to frontier_gpu.sh.
#   bash benchmarks/smollm2_frontier_tail.sh MINUTES [sparsa-eval options]
set -u
fr_min=$1; shift
g=/root/x/SmolLM2-135M-Instruct.Q4_1.gguf
fr=/root/frontier-smollm2
if [ ! -d "$fr" ]; then
  mkdir -p "$fr"
  cp benchmarks/results/frontier/smollm2/config.json benchmarks/results/frontier/smollm2/rows.*.jsonl "$fr/"
fi
bash benchmarks/frontier_gpu.sh "$g" "$fr" "$fr_min" "$@" > "$OUT/frontier.log" 2>&1
tail -c 400 "$OUT/frontier.log"
cp -r "$fr" "$OUT/frontier"
cd "$OUT" && tar czf /root/out.tgz . && rm -rf "$OUT"/* && mv /root/out.tgz "$OUT/"

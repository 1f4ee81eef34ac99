#!/usr/bin/env bash
# One GPU call of about nine minutes: the SmolLM2 frontier grid (resumed from the committed rows)
# in the background, and the NSA pair's training (benchmarks/nsa_training.sh) in the foreground.
# Needs the GGUF parts (see gpu_burst.sh). Results are packed into $OUT/round.tgz.
#   bash benchmarks/gpu_round.sh FRONTIER_MINUTES NSA_MINUTES_PER_MODEL
set -u
fr_min=$1; nsa_min=$2
bash benchmarks/gpu_burst.sh
export PYTHONPATH=$PWD
fr=/root/frontier/smollm2
mkdir -p "$fr" /root/runs
[ -f "$fr/config.json" ] || cp benchmarks/results/frontier/smollm2/config.json benchmarks/results/frontier/smollm2/rows.*.jsonl "$fr/"
bash benchmarks/frontier_gpu.sh /root/x/SmolLM2-135M-Instruct.Q4_1.gguf "$fr" "$fr_min" \
  -n 4096 -n 8192 -c 2 -c 5 -c 10 -c 20 --samples 16 > /root/frontier.log 2>&1 &
fr_pid=$!
bash benchmarks/nsa_training.sh /root/runs "$nsa_min"
wait $fr_pid
tail -3 /root/frontier.log
tar czf "$OUT/round.tgz" -C /root frontier runs/sparsa-tiny-nsa/log.jsonl runs/sparsa-tiny-nsa-dense/log.jsonl \
  $(cd /root && ls runs/*/card_eval.jsonl runs/*/model/README.md 2>/dev/null) frontier.log
ls -la "$OUT"

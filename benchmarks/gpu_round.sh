#!/usr/bin/env bash
# One GPU call of under ten minutes: the SmolLM2 frontier grid (resumed from the committed rows)
# in the background, the NSA pair's training (benchmarks/nsa_training.sh) in the foreground,
# then the pair's speed and the planning overhead alone on the card. Everything lands in $OUT
# as it is written. Needs the GGUF parts (see gpu_burst.sh).
#   bash benchmarks/gpu_round.sh FRONTIER_MINUTES NSA_MINUTES_PER_MODEL
set -u
fr_min=$1; nsa_min=$2
bash benchmarks/gpu_burst.sh
export PYTHONPATH=$PWD
fr=$OUT/frontier
mkdir -p "$fr" /root/runs "$OUT/runs"
cp benchmarks/results/frontier/smollm2/config.json benchmarks/results/frontier/smollm2/rows.*.jsonl "$fr/"
bash benchmarks/frontier_gpu.sh /root/x/SmolLM2-135M-Instruct.Q4_1.gguf "$fr" "$fr_min" \
  -n 4096 -n 8192 -c 2 -c 5 -c 10 -c 20 --samples 16 > "$OUT/frontier.log" 2>&1 &
fr_pid=$!
bash benchmarks/nsa_training.sh /root/runs "$nsa_min" "$OUT/runs"
for r in /root/runs/*/; do
  n=$(basename "$r"); mkdir -p "$OUT/runs/$n"
  cp "$r"/log.jsonl "$r"/card_eval.jsonl "$OUT/runs/$n/" 2>/dev/null
done
wait $fr_pid
tail -2 "$OUT/frontier.log"
python -m sparsa bench nsa-train speed --out "$OUT/nsa_speed.json" --reps 3 --decode-steps 32
timeout 60 python benchmarks/plan_overhead.py "$OUT/plan_overhead.json" 2>&1 | tail -12

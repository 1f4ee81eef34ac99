#!/usr/bin/env bash
# One GPU command of under ten minutes for the NSA questions, with a frontier sweep filling the card:
#   1. the NSA twins' whole-model speed, alone on the card (dense timed with PyTorch's SDPA choice
#      and pinned to cuDNN) and where a batch-1 decode step spends its time, at 16K;
#   2. the four 1K learnability trainings of recipes/nsa-1k/ side by side (resumed from
#      /root/runs when that exists), next to a sparsa-tiny frontier sweep with NPROC ranks, continued
#      from benchmarks/results/frontier/sparsa-tiny-h100 (or from /root/frontier-tiny when that exists).
# Step 1 runs only when SPEED_S > 0, the frontier sweep only when FRONTIER_MIN > 0. Everything lands in $OUT as one tarball, so the results
# travel as a single file; tokens/s of the trainings are not speed figures (they share the card).
#   NPROC=2 bash benchmarks/learnability_gpu_call.sh SPEED_S TRAIN_MIN FRONTIER_MIN [sparsa-eval options]
set -u
speed_s=$1; train_min=$2; fr_min=$3; shift 3
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p "$OUT/runs" /root/runs
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "$speed_s" -gt 0 ]; then
  timeout "$speed_s" python -m sparsa bench nsa-train speed --out "$OUT/nsa_speed.json" --reps 3 \
    --decode-steps 32 > "$OUT/nsa_speed.log" 2>&1
  grep -v Warning "$OUT/nsa_speed.log" | tail -8
  timeout 60 python benchmarks/nsa_decode_profile.py "$OUT/nsa_decode_profile.json" > "$OUT/nsa_profile.log" 2>&1
  tail -20 "$OUT/nsa_profile.log"
fi
pids=()
for r in dense nsa-full nsa-sparse nsa-sparse-gated; do
  python -m sparsa train --recipe "recipes/nsa-1k/$r.toml" --out "/root/runs/nsa-1k-$r" --resume \
    --time-limit "$train_min" > "$OUT/runs/nsa-1k-$r.log" 2>&1 &
  pids+=($!)
done
if [ "$fr_min" != 0 ]; then
  fr=/root/frontier-tiny   # kept outside $OUT, so a rerun on the same machine continues it
  if [ ! -d "$fr" ]; then
    mkdir -p "$fr"
    cp benchmarks/results/frontier/sparsa-tiny-h100/config.json benchmarks/results/frontier/sparsa-tiny-h100/rows.*.jsonl "$fr/"
  fi
  bash benchmarks/frontier_gpu.sh sparsa-tiny "$fr" "$fr_min" "$@" > "$OUT/frontier.log" 2>&1
  cp -r "$fr" "$OUT/frontier-tiny"
  tail -c 300 "$OUT/frontier.log"; echo
fi
wait "${pids[@]}"
for r in dense nsa-full nsa-sparse nsa-sparse-gated; do
  tail -c 200 "$OUT/runs/nsa-1k-$r.log"; echo
  cp "/root/runs/nsa-1k-$r/log.jsonl" "$OUT/runs/nsa-1k-$r.log.jsonl" 2>/dev/null
  grep quick_eval "/root/runs/nsa-1k-$r/log.jsonl" | tail -3
done
cd "$OUT" && tar czf /root/out.tgz . && rm -rf "$OUT"/* && mv /root/out.tgz "$OUT/"

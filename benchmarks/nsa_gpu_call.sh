#!/usr/bin/env bash
# One GPU command for the NSA comparison, under ten minutes, everything written to $OUT as
# it happens: the twins' whole-model speed, then the pair's training (dense first: it is the
# short one) and each run's log, loss rows and card rows. Rerun on the same machine to
# continue the training (the runs live in /root/runs).
#   bash benchmarks/nsa_gpu_call.sh SPEED_SECONDS DENSE_MINUTES NSA_MINUTES
set -u
speed_s=$1; dense_min=$2; nsa_min=$3
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p "$OUT/runs" /root/runs
nvidia-smi --query-gpu=name --format=csv,noheader
if [ ! -f "$OUT/nsa_speed.json" ] && [ "$speed_s" -gt 0 ]; then
  timeout "$speed_s" python -m sparsa bench nsa-train speed --out "$OUT/nsa_speed.json" --reps 3 \
    --decode-steps 32 > "$OUT/nsa_speed.log" 2>&1
  cat "$OUT/nsa_speed.log" | grep -v Warning
fi
for pair in "sparsa-tiny-nsa-dense $dense_min" "sparsa-tiny-nsa $nsa_min"; do
  set -- $pair
  python -m sparsa train --recipe "recipes/$1.toml" --out "/root/runs/$1" --resume --time-limit "$2" \
    > "$OUT/runs/$1.log" 2>&1
  tail -c 300 "$OUT/runs/$1.log"; echo
  cp "/root/runs/$1/log.jsonl" "$OUT/runs/$1.log.jsonl" 2>/dev/null
  cp "/root/runs/$1/card_eval.jsonl" "$OUT/runs/$1.card.jsonl" 2>/dev/null
done

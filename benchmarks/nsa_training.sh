#!/usr/bin/env bash
# sparsa-tiny-nsa and its dense twin, trained one after the other on one GPU, each for at most
# MINUTES per call (training, then the card's task suite); rerun the same command to continue.
# Each run's console output goes to LOG_DIR/<name>.log as it is written.
#   [RECIPES="sparsa-tiny-nsa-gated ..."] bash benchmarks/nsa_training.sh RUNS_DIR MINUTES [LOG_DIR]
# RECIPES: the recipes/ names to train (default: the pair).
# Then: sparsa bench nsa-train speed --out SPEED.json, and
#       sparsa bench nsa-train summarize --dense RUNS_DIR/sparsa-tiny-nsa-dense --nsa RUNS_DIR/sparsa-tiny-nsa ...
set -uo pipefail
runs=$1; minutes=$2; logs=${3:-$runs}
mkdir -p "$logs"
for r in ${RECIPES:-sparsa-tiny-nsa-dense sparsa-tiny-nsa}; do
  python -m sparsa train --recipe "recipes/$r.toml" --out "$runs/$r" --resume --time-limit "$minutes" \
    > "$logs/$r.log" 2>&1
  tail -c 400 "$logs/$r.log"; echo
done

#!/usr/bin/env bash
# GPU machine setup for the real-model runs: joins the SmolLM2 GGUF (carried in three parts,
# the first two copied to /root/x by earlier calls) and installs the gguf reader. The machine
# is offline, so sparsa runs from the checkout: `export PYTHONPATH=$PWD` after sourcing this.
set -e
mkdir -p /root/x
g=/root/x/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f .smol3/p ] && [ ! -f "$g" ]; then cat /root/x/p1 /root/x/p2 .smol3/p > "$g"; fi
md5sum "$g"
python -m pip install -q --no-deps .whl/gguf-*.whl 2>&1 | tail -1
nvidia-smi --query-gpu=name --format=csv,noheader

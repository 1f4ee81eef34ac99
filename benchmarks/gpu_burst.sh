#!/usr/bin/env bash
# GPU machine setup for the real-model runs: joins the SmolLM2 GGUF and installs the gguf reader.
# The GGUF is larger than one command may carry, so it travels in parts, in ignored folders
# .smol1, .smol2, ... (file `p` in each), over commands on the same machine; every command
# that carries a part copies it to /root/x (`bash benchmarks/gguf_part.sh`), and the file is
# joined once all the bytes are there. The machine is offline, so sparsa runs from the
# checkout: `export PYTHONPATH=$PWD` after this.
set -e
bash benchmarks/gguf_part.sh
g=/root/x/SmolLM2-135M-Instruct.Q4_1.gguf
md5sum "$g"
python -m pip install -q --no-deps .whl/gguf-*.whl 2>&1 | tail -1
nvidia-smi --query-gpu=name --format=csv,noheader

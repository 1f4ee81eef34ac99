#!/usr/bin/env bash
# Run the test suite on the CPU. Triton kernels run under the Triton interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
export TRITON_INTERPRET=1
python -m pytest -p no:cacheprovider "$@"

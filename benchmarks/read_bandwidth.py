"""Read bandwidth of this GPU from a buffer that stays in L2 and from one that does not.

The ceiling the NSA selection kernels run against: on random inputs every query reads its own
selected blocks (at 64K on the paper shape, 137 GB of keys and values per forward), and the
blocks come from L2. Each program sums ``reps`` scattered 8 KB tiles of the buffer (bf16).

    python benchmarks/read_bandwidth.py [--out benchmarks/results/read_bandwidth.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.testing import do_bench


@triton.jit
def _read_kernel(X, OUT, n_tiles, REPS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for r in range(REPS):
        tile = (pid + r * 7919) % n_tiles            # a prime stride: programs spread over the buffer
        acc += tl.load(X + tile * BLOCK + tl.arange(0, BLOCK)).to(tl.float32)
    tl.store(OUT + pid * BLOCK + tl.arange(0, BLOCK), acc)


def read_tbps(buffer_mb: int, *, block: int = 4096, reps: int = 64, waves: int = 16) -> float:
    """TB/s of the read kernel over a ``buffer_mb`` MiB bf16 buffer."""
    n = buffer_mb * (1 << 20) // 2
    x = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    progs = torch.cuda.get_device_properties(0).multi_processor_count * waves
    out = torch.empty(progs * block, device="cuda")
    ms = do_bench(lambda: _read_kernel[(progs,)](x, out, n // block, REPS=reps, BLOCK=block, num_warps=8),
                  warmup=20, rep=100)
    return progs * reps * block * 2 / ms / 1e9


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/read_bandwidth.json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("read_bandwidth.py needs a CUDA GPU")
    rows = {}
    for mb in (8, 16, 32, 4096):
        rows[f"{mb} MiB"] = read_tbps(mb)
        print(f"buffer {mb:5d} MiB: {rows[f'{mb} MiB']:.2f} TB/s", flush=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "l2_mib": torch.cuda.get_device_properties(0).L2_cache_size >> 20, "read_tbps": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

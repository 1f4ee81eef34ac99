"""The floor under a memory-bound step: how long the card takes to read a given number of
bytes once, with nothing else to do.

A Triton kernel sums a bf16 buffer (each program one contiguous slice), timed as a CUDA-graph
replay with L2 flushed, the way the decode benchmark times NSA and SDPA; the best of a few
launch shapes is kept. NSA decode reads compressed tokens, selected blocks and the window: no
kernel that reads those bytes can beat this time.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .timing import graph_ms


@triton.jit
def _stream_sum_kernel(X, OUT, n, per_prog, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * per_prog
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, per_prog, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        acc += tl.load(X + offs, mask=offs < n, other=0.0).to(tl.float32)
    tl.store(OUT + pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK), acc)


def stream_read_ms(n_bytes: int, *, waves: tuple[int, ...] = (1, 2, 4, 8),
                   blocks: tuple[int, ...] = (2048, 4096, 8192)) -> tuple[float, dict[str, int]]:
    """(ms, launch shape) of the fastest one-pass read of ``n_bytes`` (rounded down to bf16
    elements) over programs = SMs x ``waves`` and tiles of ``blocks`` elements. CUDA only."""
    if n_bytes < 2:
        raise ValueError(f"n_bytes must be at least 2, got {n_bytes}")
    if not torch.cuda.is_available():
        raise RuntimeError("stream_read_ms needs a CUDA GPU")
    n = n_bytes // 2
    x = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    best: tuple[float, dict[str, int]] = (float("inf"), {})
    for w in waves:
        for block in blocks:
            per = triton.cdiv(triton.cdiv(n, sms * w), block) * block
            progs = triton.cdiv(n, per)
            out = torch.empty(progs * block, device="cuda", dtype=torch.float32)
            ms = graph_ms(lambda: _stream_sum_kernel[(progs,)](x, out, n, per, BLOCK=block, num_warps=8))
            if ms is not None and ms < best[0]:
                best = (ms, {"programs": progs, "block": block})
    return best

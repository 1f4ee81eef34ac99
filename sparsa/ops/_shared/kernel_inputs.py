"""Input checks and tile shapes shared by the prefill attention kernels (block-sparse and
vertical-slash). Torch only, so the dispatchers can ask what a kernel takes without triton."""
from __future__ import annotations

import torch

from ..._validation import check_qkv
from ...backend import triton_interpreted

HEAD_DIMS = (64, 128)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_TILE_ROWS = 128
LOG2E = 1.4426950408889634


def check_kernel_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    """Validate q/k/v for a Triton attention kernel; returns check_qkv's shape tuple."""
    dims = check_qkv(q, k, v)
    if q.dtype not in KERNEL_DTYPES:
        raise TypeError(f"q: the Triton kernel takes float16, bfloat16 or float32, got {q.dtype}")
    if dims[5] not in HEAD_DIMS:
        raise ValueError(f"q: the Triton kernel supports head_dim in {HEAD_DIMS}, got {dims[5]}")
    if q.device.type != "cuda" and not triton_interpreted():
        raise ValueError(f"q: the Triton kernel needs CUDA tensors (got {q.device}); "
                         "set TRITON_INTERPRET=1 to run it on the CPU, or use backend='reference'")
    return dims


def last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when its last dimension has stride 1, else a contiguous copy."""
    return x if x.stride(-1) == 1 else x.contiguous()


def heads_per_program(heads: int, heads_x: int, kv_heads: int, block_q: int) -> int:
    """Query heads stacked in one program: 1 for per-head lists, else the largest divisor of
    the group size whose stacked rows fit ``MAX_TILE_ROWS``."""
    group = heads // kv_heads
    if heads_x == heads or group == 1:
        return 1
    best = 1
    for g in range(1, group + 1):
        if group % g == 0 and g * block_q <= MAX_TILE_ROWS:
            best = g
    return best


__all__ = ["HEAD_DIMS", "KERNEL_DTYPES", "LOG2E", "MAX_TILE_ROWS", "check_kernel_inputs", "heads_per_program",
           "last_dim_contiguous"]

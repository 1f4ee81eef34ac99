"""What the sparse-decode Triton kernels share: the inputs they take, the kernel view of a row
store (plain or int8/int4 codes), the launch parameters per kernel family, split-K planning, and
the jit pieces that load and dequantize stored rows.

Supported: head_dim 32, 64, 128 or 256; float16 / bfloat16 (float32 with exact dot products,
for checks); CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ...backend import triton_interpreted
from .._shared.quant_format import QuantizedTensor


HEAD_DIMS = (32, 64, 128, 256)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634
MAX_SELECT_PAGES = 1 << 15


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def group_rows(group: int) -> int:
    """Rows of the query tile: the group size padded to a power of two >= 16 (tl.dot's minimum)."""
    return max(16, _pow2(group))


def check_kernel_query(q: torch.Tensor, kv_heads: int) -> None:
    if q.dtype not in KERNEL_DTYPES:
        raise TypeError(f"q: the Triton decode kernels take float16, bfloat16 or float32, got {q.dtype}")
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"q: the Triton decode kernels support head_dim in {HEAD_DIMS}, got {q.shape[-1]}")
    if q.device.type != "cuda" and not triton_interpreted():
        raise ValueError(f"q: the Triton kernels need CUDA tensors (got {q.device}); set TRITON_INTERPRET=1 "
                         "to run them on the CPU, or use backend='reference'")
    if q.shape[1] % kv_heads:
        raise ValueError(f"q: kv_heads ({kv_heads}) must divide heads ({q.shape[1]})")


class _Store:
    """Kernel view of a row store: data pointer, scale / zero pointers and the quantization mode."""

    def __init__(self, store, head_dim: int, dtype: torch.dtype) -> None:
        if isinstance(store, QuantizedTensor):
            gs, ng = store.spec.groups(head_dim)
            self.data, self.scale = store.data, store.scale
            self.zero = store.zero if store.zero is not None else store.scale
            self.quant, self.ng, self.gs = store.spec.bits, ng, gs
            self.has_zero = store.zero is not None
        else:
            if store.dtype != dtype:
                raise TypeError(f"k, v: dtype must match q ({dtype}), got {store.dtype}")
            self.data = self.scale = self.zero = store
            self.quant, self.ng, self.gs, self.has_zero = 0, 1, head_dim, False
        if not self.data.is_contiguous():
            raise ValueError("k, v: row stores must be contiguous")
        self.width = self.data.shape[-1]
        self.rows = self.data.shape[0]


# launch parameters per kernel family: the decode benchmark's best on Hopper (benchmarks/NOTES.md);
# the benchmark may retune them for the card it runs on
LAUNCH: dict[str, dict[str, int]] = {
    "varlen": {"block_n": 128, "num_warps": 8, "num_stages": 3, "split_factor": 2},
    "paged": {"block_n": 64, "num_warps": 4, "num_stages": 3, "split_factor": 2},
    # Quest scoring: logical pages per program, bytes of bounds per loop step (one step per
    # program by default: many small programs keep more loads in flight than a few long ones),
    # all_heads: one program per (sequence, page range) scores every KV head (1) instead of one
    # program per (sequence, KV head, page range) (0)
    "quest_scores": {"pages_per_prog": 32, "tile_bytes": 8192, "num_warps": 4, "num_stages": 1, "all_heads": 0},
    # the same for bounds stored in the cache's dtype (bf16/fp16/fp32) instead of int8 codes: there
    # one program per sequence over all KV heads is faster
    "quest_scores_native": {"pages_per_prog": 16, "tile_bytes": 32768, "num_warps": 4, "num_stages": 1,
                            "all_heads": 1},
    "quest_select": {"num_warps": 16},
}


def set_launch_defaults(kind: str, **params: int) -> None:
    """Change the default launch parameters of a kernel family: "varlen" or "paged" decode
    (block_n, num_warps, num_stages, split_factor = programs per multiprocessor to aim for),
    "quest_scores" (int8 page bounds) and "quest_scores_native" (bounds in the cache's dtype)
    (pages_per_prog, tile_bytes, num_warps, num_stages, all_heads) or "quest_select" (num_warps)."""
    if kind not in LAUNCH:
        raise ValueError(f"kind: must be one of {tuple(LAUNCH)}, got {kind!r}")
    unknown = set(params) - set(LAUNCH[kind])
    if unknown:
        raise ValueError(f"params: unknown launch parameters {sorted(unknown)}")
    LAUNCH[kind].update({k: int(v) for k, v in params.items()})


def default_splits(rows: int, max_tokens: int, block_n: int, split_factor: int = 2) -> int:
    """Splits per KV head: about ``split_factor`` programs per multiprocessor, each with >= 4 tiles."""
    most = max(1, triton.cdiv(max_tokens, 4 * block_n))
    if device_sms() == 0:
        return min(4, most)
    want = triton.cdiv(split_factor * device_sms(), max(rows, 1))
    return min(_pow2(max(1, want)), _pow2(most), 128)


MAX_SPLITS = 256


def split_plan(rows: int, max_tokens: int, block_n: int, split_factor: int = 2,
               avg_tokens: float | None = None) -> tuple[int, int]:
    """(splits per KV head, tokens per split). The split size is set by the average head (when
    known), so that a head several times longer than the rest is cut into more splits rather
    than holding up the launch; short heads' extra programs exit at once."""
    ref = max_tokens if avg_tokens is None else int(max(1, min(max_tokens, math.ceil(avg_tokens))))
    chunk = triton.cdiv(triton.cdiv(ref, default_splits(rows, ref, block_n, split_factor)), block_n) * block_n
    splits = triton.cdiv(max_tokens, chunk)
    if splits > MAX_SPLITS:
        splits = MAX_SPLITS
        chunk = triton.cdiv(triton.cdiv(max_tokens, splits), block_n) * block_n
        splits = triton.cdiv(max_tokens, chunk)
    return max(1, splits), chunk


_SMS: list[int] = []


def device_sms() -> int:
    if not _SMS:
        _SMS.append(torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
                    if torch.cuda.is_available() else 0)
    return _SMS[0]


@triton.jit
def _load_codes(X, rows, ok, dh, DH: tl.constexpr, DSTORE: tl.constexpr, QUANT: tl.constexpr):
    """The two halves (channels [0, DH) and [DH, 2 DH)) of ``rows``: values as stored for
    float caches, float32 codes for quantized ones."""
    if QUANT == 4:
        byte = tl.load(X + rows[:, None] * DSTORE + dh[None, :], mask=ok[:, None], other=0)
        lo = (byte & 15).to(tl.float32)
        hi = (byte >> 4).to(tl.float32)
    else:
        lo = tl.load(X + rows[:, None] * DSTORE + dh[None, :], mask=ok[:, None], other=0)
        hi = tl.load(X + rows[:, None] * DSTORE + DH + dh[None, :], mask=ok[:, None], other=0)
        if QUANT == 8:
            lo = lo.to(tl.float32)
            hi = hi.to(tl.float32)
    return lo, hi


@triton.jit
def _dequant_groups(code, XS, XZ, rows, ok, ch, NG: tl.constexpr, GS: tl.constexpr, HAS_ZERO: tl.constexpr):
    """code (BLOCK_N, len(ch)) float32 -> values with per-group parameters (NG > 1)."""
    gi = rows[:, None] * NG + (ch // GS)[None, :]
    val = code * tl.load(XS + gi, mask=ok[:, None], other=0.0).to(tl.float32)
    if HAS_ZERO:
        val += tl.load(XZ + gi, mask=ok[:, None], other=0.0).to(tl.float32)
    return val

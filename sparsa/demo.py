"""`sparsa demo`: every registered method on one long synthetic input, on the CPU.

Prefill-phase methods attend with all queries; decode-phase methods are simulated over the
last ``decode_rows`` query rows (each row a decode step). Errors are measured against dense
attention on the same rows: relative Frobenius error ‖out − dense‖ / ‖dense‖.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from .api import attention
from .methods.registry import list_methods, method_class
from .synthetic import synthetic_qkv


# float32 tensors of the input's size alive at once (q, k, v, dense's output and a method's
# output, plus room for its working buffers); a measured run of every method stays below this
_WORKING_COPIES = 8


def physical_memory_bytes() -> int | None:
    """This machine's RAM in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_demo_size(length: int, heads: int, kv_heads: int, head_dim: int) -> None:
    """Refuse, naming the options, a demo whose tensors alone would not fit this machine's RAM."""
    need = _WORKING_COPIES * 4 * length * head_dim * (heads + 2 * kv_heads)
    have = physical_memory_bytes()
    if have is not None and need > have:
        raise ValueError(f"length, heads, kv_heads, head_dim: {length} tokens x ({heads} + 2 x {kv_heads}) heads x "
                         f"{head_dim} needs about {need / 2**30:.0f} GiB of float32 tensors, more than this "
                         f"machine's {have / 2**30:.0f} GiB; lower them")


@dataclass
class DemoRow:
    method: str
    phase: str
    target: float
    achieved: float
    rel_error: float
    seconds: float


def run_demo(length: int = 8192, heads: int = 8, kv_heads: int = 2, head_dim: int = 64, compression: float = 10.0,
             decode_rows: int = 64, seed: int = 0, methods: list[str] | None = None,
             progress: bool = True) -> list[DemoRow]:
    """Run each method once; returns one row per method."""
    from tqdm.auto import tqdm

    check_demo_size(length, heads, kv_heads, head_dim)

    names = methods or list_methods()
    q, k, v = synthetic_qkv(1, heads, kv_heads, length, head_dim, seed=seed)
    dense_full = attention(q, k, v, "dense")
    rows: list[DemoRow] = []
    for name in tqdm(names, desc="methods", disable=not progress):
        decode_only = method_class(name).phase == "decode"
        qq = q[:, :, -decode_rows:] if decode_only else q
        ref = dense_full[:, :, -qq.shape[2]:]
        target = 1.0 if name == "dense" else compression
        t0 = time.perf_counter()
        out, stats = attention(qq, k, v, name, compression=None if name == "dense" else target, return_stats=True)
        dt = time.perf_counter() - t0
        err = float((out.float() - ref.float()).norm() / ref.float().norm())
        rows.append(DemoRow(name, stats.phase, target, stats.compression, err, dt))
    return rows


LEGEND = ("target / achieved: compression asked for / reached (dense pairs or tokens / those computed)\n"
          "rel.err: relative error of the output against dense attention on the same rows, "
          "||out - dense|| / ||dense|| (0 = exact)")


def format_rows(rows: list[DemoRow]) -> str:
    """The table ``sparsa demo`` prints, under a legend of its columns."""
    head = f"{'method':<16}{'phase':<9}{'target':>8}{'achieved':>10}{'rel.err':>10}{'time s':>9}"
    lines = [LEGEND, "", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.method:<16}{r.phase:<9}{r.target:>8.1f}{r.achieved:>10.2f}{r.rel_error:>10.4f}{r.seconds:>9.2f}")
    return "\n".join(lines)

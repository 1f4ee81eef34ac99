"""Synthetic attention inputs with the structure real LLM attention has.

Random normal q/k make every key equally relevant, which no sparse method can exploit and
which real models never show. These inputs add the three patterns sparse methods rely on:
locality (a shared per-head direction rotated by RoPE makes q·k peak at small distances),
attention sinks (the first tokens' keys align with the queries) and a few "vertical" keys
that many queries attend to. Values stay random normal.
"""
from __future__ import annotations

import torch


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotary embedding (half-split convention). x: (..., L, D), positions: (L,)."""
    d = x.shape[-1]
    half = d // 2
    freq = theta ** (-torch.arange(half, dtype=torch.float64) / half)
    ang = positions.double()[:, None] * freq[None, :]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def synthetic_qkv(batch: int, heads: int, kv_heads: int, length: int, head_dim: int, *, q_len: int | None = None,
                  seed: int = 0, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                  n_sinks: int = 4, n_vertical: int = 16, strength: float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (batch, heads, q_len, head_dim), k/v (batch, kv_heads, length, head_dim).

    ``q_len`` defaults to ``length`` (queries are the last ``q_len`` positions).
    ``strength`` scales the structure relative to the noise (0 = plain random normal).
    """
    if heads % kv_heads:
        raise ValueError(f"kv_heads: ({kv_heads}) must divide heads ({heads})")
    q_len = length if q_len is None else q_len
    g = torch.Generator().manual_seed(seed)
    group = heads // kv_heads
    base = torch.randn(batch, kv_heads, 1, head_dim, generator=g)
    base = base / base.norm(dim=-1, keepdim=True) * head_dim ** 0.5
    noise_q = torch.randn(batch, heads, q_len, head_dim, generator=g)
    noise_k = torch.randn(batch, kv_heads, length, head_dim, generator=g)
    pos = torch.arange(length)
    # low-frequency RoPE channels barely rotate over the context: a direction there makes a
    # key attractive to every later query (sinks and vertical keys)
    half = head_dim // 2
    low = torch.zeros(head_dim)
    low[half - 4:half] = 1.0
    low[head_dim - 4:] = 1.0
    anchor = low * (head_dim ** 0.5) / low.norm()
    special = torch.cat([torch.arange(min(n_sinks, length)), torch.randperm(length, generator=g)[:n_vertical]])
    kk = noise_k + 1.4 * strength * base
    kk[:, :, special] += 2.5 * strength * anchor
    qq = noise_q + strength * (1.4 * base.repeat_interleave(group, 1) + 0.5 * anchor)
    q = rope(qq, pos[length - q_len:])
    k = rope(kk, pos)
    v = torch.randn(batch, kv_heads, length, head_dim, generator=g)
    return (q.to(device=device, dtype=dtype), k.to(device=device, dtype=dtype),
            v.to(device=device, dtype=dtype))

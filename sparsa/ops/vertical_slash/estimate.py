"""Line mass of the last queries: the estimate Vertical-Slash and FlexPrefill plan from.

The last ``m = min(last_q, q_len)`` query rows (positions ``kv_len - m .. kv_len - 1``) attend
causally over all keys, per query head; each row's softmax sums to one. Summing the
probabilities down each key column gives the vertical mass, along each diagonal (offset
``o = row position - key position``) the slash mass; both are divided by ``m``.

Two implementations with one result (up to float rounding):

* :func:`line_mass_reference`: torch, chunked over KV heads. The diagonal sums use a strided
  view: with the probabilities padded by ``m - 1`` zero columns on the left (row width
  ``W = kv_len + m - 1``), the view of stride ``W + 1`` along the rows puts offset
  ``kv_len - 1 - j`` of every row in column ``j``, so one sum over the rows gives all
  diagonals (no index tensor, no gather).
* :func:`~sparsa.ops.vertical_slash.estimate_triton.line_mass_triton`: two kernels and no
  (m, kv_len) tensor. Pass 1, per (head, key split), the row maxima and exponential sums of
  the scores (split-K, combined in torch).
  Pass 2, per (head, 64-key tile), the normalised probabilities, their column sums, and the
  sums along the 127 diagonals the tile meets (a register gather that shifts row ``i`` by
  ``i``); neighbouring tiles' diagonal partials are added in torch, in a fixed order.
  Scores are a bf16/fp16 tensor-core product with float32 accumulation (fp32 inputs: exact
  float32 products), as in the attention kernels; the reference computes them in float32.

:func:`line_mass` picks one like the ops' dispatch (Triton on CUDA for head_dim 64/128 and
float16/bfloat16/float32).
"""
from __future__ import annotations

import torch

from ...backend import resolve_backend
from .estimate_shapes import TRITON_DTYPES, TRITON_HEAD_DIMS, last_q_rows

_CHUNK_ELEMENTS = 1 << 25  # score elements per chunk of the reference (~128 MiB in fp32)

def line_mass_reference(q: torch.Tensor, k: torch.Tensor, scale: float,
                        last_q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical and slash mass of the last ``last_q`` queries, in torch.

    q: (B, H, q_len, D); k: (B, Hkv, L, D); ``scale`` multiplies q·k. Returns
    ``(vertical, slash)``, each (B, H, L), float32 (float64 for float64 inputs); each sums to
    1 over its last axis.
    """
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    g = h // hkv
    m = last_q_rows(last_q, lq)
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    qs = q[:, :, lq - m:].to(ct).reshape(b, hkv, g, m, d)
    pos = torch.arange(lk - m, lk, device=q.device)                       # positions of the m rows
    causal = torch.arange(lk, device=q.device)[None, :] <= pos[:, None]   # (m, L)
    vertical = torch.empty(b, hkv, g, lk, dtype=ct, device=q.device)
    slash = torch.empty(b, hkv, g, lk, dtype=ct, device=q.device)
    width = lk + m - 1
    step = max(1, _CHUNK_ELEMENTS // max(1, b * g * m * lk))
    for s in range(0, hkv, step):
        e = min(hkv, s + step)
        scores = torch.einsum("bkgmd,bknd->bkgmn", qs[:, s:e], k[:, s:e].to(ct)) * scale
        probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        vertical[:, s:e] = probs.sum(-2) / m
        padded = torch.nn.functional.pad(probs, (m - 1, 0)).reshape(-1, m, width)
        # row i, column j of this view: probability of key j + i - (m - 1), offset L - 1 - j
        skew = padded.as_strided((padded.shape[0], m, lk), (m * width, width + 1, 1))
        slash[:, s:e] = (skew.sum(1).flip(-1) / m).reshape(b, e - s, g, lk)
    return vertical.reshape(b, h, lk), slash.reshape(b, h, lk)


def line_mass_uses_triton(q: torch.Tensor, backend: str | None = None) -> bool:
    """Whether :func:`line_mass` runs the Triton kernels for ``q`` under ``backend``."""
    if resolve_backend(backend, q.device) != "triton":
        return False
    return q.dtype in TRITON_DTYPES and q.shape[-1] in TRITON_HEAD_DIMS


def line_mass(q: torch.Tensor, k: torch.Tensor, scale: float, last_q: int, *,
              backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical and slash mass of the last ``last_q`` queries (see the module docstring).

    ``backend``: "auto" (Triton on CUDA tensors with head_dim 64/128 and float16/bfloat16/
    float32, else torch), "reference" or "triton" (falls back to torch for other inputs).
    """
    if line_mass_uses_triton(q, backend):
        from .estimate_triton import line_mass_triton   # triton: optional, imported only on this path
        return line_mass_triton(q, k, scale, last_q)
    return line_mass_reference(q, k, scale, last_q)


__all__ = ["TRITON_DTYPES", "TRITON_HEAD_DIMS", "last_q_rows", "line_mass", "line_mass_reference",
           "line_mass_uses_triton"]

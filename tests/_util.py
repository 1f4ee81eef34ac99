"""Independent helpers the tests compare against."""
import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                       scale: float | None = None) -> torch.Tensor:
    """Independent float64 attention under a full (B|1, H|1, Lq, Lk) bool mask; empty rows -> 0."""
    b, h, lq, d = q.shape
    g = h // k.shape[1]
    kk = k.double().repeat_interleave(g, 1)
    vv = v.double().repeat_interleave(g, 1)
    s = q.double() @ kk.transpose(-1, -2) * (scale if scale is not None else d ** -0.5)
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ vv


def causal_mask(lq: int, lk: int) -> torch.Tensor:
    rows = torch.arange(lk - lq, lk)[:, None]
    return torch.arange(lk)[None, :] <= rows

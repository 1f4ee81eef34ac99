"""Reference KV quantization: int8 (symmetric) and int4 (asymmetric), per token or per channel group.

A key or value vector of ``head_dim`` channels is cut into groups of ``group_size`` consecutive
channels (``group_size = head_dim``: one scale per token). Each group keeps float16 parameters:

* **int8**: symmetric. ``scale = absmax / 127``; ``code = round(x / scale)`` in [-127, 127],
  stored as int8; ``x ≈ code * scale``.
* **int4**: asymmetric. ``zero = min``, ``scale = (max - min) / 15``; ``code = round((x - zero)
  / scale)`` in [0, 15]; ``x ≈ code * scale + zero``. Two codes share a byte: byte ``j`` holds
  channel ``j`` in its low nibble and channel ``j + head_dim/2`` in its high nibble, so a kernel
  unpacks the two halves of the head dimension with one shift and one mask each.

The float16 parameters are rounded outwards (the scale up, the int4 zero down) so that every
code stays in range: the error of each element is at most ``scale / 2`` of its group.

Memory per token and head (head_dim 128, per-token scales): bf16 256 bytes, int8 130 bytes,
int4 68 bytes (3.76× less than bf16).
"""
from __future__ import annotations

import torch

from .._shared.quant_format import BITS, PARAM_DTYPE, QuantizedTensor, QuantSpec, dequantize

__all__ = ["BITS", "PARAM_DTYPE", "QuantSpec", "QuantizedTensor", "dequantize", "error_bound", "quantize"]

_F16_MAX = 65504.0
_UP = 1.0 + 2.0 ** -10          # > 1 + half an fp16 ulp: rounding to fp16 cannot undercut the fp32 value
_TINY = 2.0 ** -24              # smallest fp16 subnormal: the scale of an all-equal group


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
    if x.ndim < 1:
        raise ValueError("x: expected at least one dimension (the head dimension)")


def quantize(x: torch.Tensor, spec: QuantSpec | str) -> QuantizedTensor:
    """Quantize vectors x (..., head_dim) along the last dimension (see the module docstring).

    Values must be finite with magnitude below 65504 (float16 parameters); a ValueError says so
    otherwise, which costs one device synchronisation.
    """
    _check_input(x)
    spec = QuantSpec.parse(spec)
    if spec is None:
        raise ValueError("spec: quantize needs 'int8' or 'int4'")
    d = x.shape[-1]
    gs, ng = spec.groups(d)
    xf = x.float()
    if xf.numel():
        amax_all = float(xf.abs().max())
        if not amax_all < _F16_MAX:
            raise ValueError(f"x: values must be finite with magnitude < {_F16_MAX} to be quantized, "
                             f"got max |x| = {amax_all}")
    return _quantize_unchecked(xf, spec, gs, ng)


def _quantize_unchecked(xf: torch.Tensor, spec: QuantSpec, gs: int, ng: int) -> QuantizedTensor:
    d = xf.shape[-1]
    g = xf.reshape(*xf.shape[:-1], ng, gs)
    if spec.bits == 8:
        amax = g.abs().amax(-1)
        scale = (amax / 127.0 * _UP).clamp_min(_TINY).to(PARAM_DTYPE)
        code = torch.round(g / scale.float()[..., None]).clamp_(-127, 127)
        data = code.reshape(xf.shape).to(torch.int8)
        return QuantizedTensor(data, scale, None, spec, d)
    mn, mx = g.amin(-1), g.amax(-1)
    zero = (mn - mn.abs() * 2.0 ** -10).to(PARAM_DTYPE)
    zero = torch.minimum(zero.float(), mn).to(PARAM_DTYPE)       # fp16 rounding must not land above min
    scale = ((mx - zero.float()) / 15.0 * _UP).clamp_min(_TINY).to(PARAM_DTYPE)
    code = torch.round((g - zero.float()[..., None]) / scale.float()[..., None]).clamp_(0, 15)
    code = code.reshape(xf.shape).to(torch.uint8)
    half = d // 2
    data = code[..., :half] | (code[..., half:] << 4)
    return QuantizedTensor(data, scale, zero, spec, d)


def error_bound(qt: QuantizedTensor) -> torch.Tensor:
    """(..., head_dim) largest possible |x - dequantize(qt)| per element: half its group's scale
    (plus float32 rounding)."""
    gs, _ = qt.spec.groups(qt.head_dim)
    half = 0.5 * qt.scale.float().repeat_interleave(gs, dim=-1)
    return half * (1 + 1e-5) + 1e-6 * half.amax(-1, keepdim=True).clamp_min(1.0)

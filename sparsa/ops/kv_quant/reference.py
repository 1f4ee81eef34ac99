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

from dataclasses import dataclass

import torch

BITS = (4, 8)
PARAM_DTYPE = torch.float16
_F16_MAX = 65504.0
_UP = 1.0 + 2.0 ** -10          # > 1 + half an fp16 ulp: rounding to fp16 cannot undercut the fp32 value
_TINY = 2.0 ** -24              # smallest fp16 subnormal: the scale of an all-equal group


@dataclass(frozen=True)
class QuantSpec:
    """How a cache stores keys and values: ``bits`` 8 or 4, ``group_size`` channels per scale
    (None = the whole head dimension, one scale per token)."""

    bits: int
    group_size: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in BITS:
            raise ValueError(f"bits: must be one of {BITS}, got {self.bits!r}")
        if self.group_size is not None and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                            or self.group_size < 1):
            raise ValueError(f"group_size: must be a positive int or None (per token), got {self.group_size!r}")

    def groups(self, head_dim: int) -> tuple[int, int]:
        """(group size, groups per token) for ``head_dim`` channels; raises if they do not fit."""
        gs = head_dim if self.group_size is None else self.group_size
        if head_dim % gs:
            raise ValueError(f"group_size: must divide head_dim ({head_dim}), got {gs}")
        if self.bits == 4:
            if head_dim % 2:
                raise ValueError(f"head_dim: int4 packing needs an even head_dim, got {head_dim}")
            if gs != head_dim and (head_dim // 2) % gs:
                raise ValueError(f"group_size: int4 groups must divide head_dim / 2 ({head_dim // 2}) "
                                 f"or equal head_dim, got {gs}")
        return gs, head_dim // gs

    def stored_dim(self, head_dim: int) -> int:
        """Bytes of codes per token and head."""
        return head_dim if self.bits == 8 else head_dim // 2

    def bytes_per_token(self, head_dim: int) -> int:
        """Bytes per token and head for one of K or V: codes plus float16 parameters."""
        _, ng = self.groups(head_dim)
        per_group = 2 if self.bits == 8 else 4     # int8: scale; int4: scale and zero
        return self.stored_dim(head_dim) + ng * per_group

    @classmethod
    def parse(cls, spec: "QuantSpec | str | None") -> "QuantSpec | None":
        """None / "none" / "int8" / "int4" / "int4:g32" (group of 32 channels) / a QuantSpec."""
        if spec is None or isinstance(spec, QuantSpec):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"quant: expected None, a QuantSpec or a string like 'int8', got {type(spec).__name__}")
        text = spec.lower().strip()
        if text in ("", "none", "bf16", "fp16", "float"):
            return None
        name, _, group = text.partition(":g")
        if name not in ("int8", "int4"):
            raise ValueError(f"quant: must be 'int8', 'int4' (optionally ':g<group_size>') or None, got {spec!r}")
        try:
            gs = int(group) if group else None
        except ValueError:
            raise ValueError(f"quant: bad group size in {spec!r}") from None
        return cls(int(name[3:]), gs)

    def __str__(self) -> str:
        return f"int{self.bits}" + ("" if self.group_size is None else f":g{self.group_size}")


@dataclass
class QuantizedTensor:
    """Codes and float16 parameters of a tensor of vectors ``(..., head_dim)``.

    ``data``: (..., head_dim) int8 for int8, (..., head_dim/2) uint8 for int4;
    ``scale``: (..., groups) float16; ``zero``: (..., groups) float16 (int4) or None.
    """

    data: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    spec: QuantSpec
    head_dim: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.data.shape[:-1], self.head_dim)

    @property
    def device(self) -> torch.device:
        return self.data.device

    def nbytes(self) -> int:
        n = self.data.numel() * self.data.element_size() + self.scale.numel() * self.scale.element_size()
        if self.zero is not None:
            n += self.zero.numel() * self.zero.element_size()
        return n

    def map(self, fn) -> "QuantizedTensor":
        """Apply ``fn`` (indexing along leading dims) to codes and parameters alike."""
        return QuantizedTensor(fn(self.data), fn(self.scale), None if self.zero is None else fn(self.zero),
                               self.spec, self.head_dim)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self, dtype)


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


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(..., head_dim) values of ``qt`` in ``dtype`` (computed in float32)."""
    gs, ng = qt.spec.groups(qt.head_dim)
    if qt.spec.bits == 8:
        code = qt.data.float()
    else:
        lo = (qt.data & 15).float()
        hi = (qt.data >> 4).float()
        code = torch.cat([lo, hi], dim=-1)
    lead = code.shape[:-1]
    g = code.reshape(*lead, ng, gs) * qt.scale.float()[..., None]
    if qt.zero is not None:
        g = g + qt.zero.float()[..., None]
    return g.reshape(*lead, qt.head_dim).to(dtype)


def error_bound(qt: QuantizedTensor) -> torch.Tensor:
    """(..., head_dim) largest possible |x - dequantize(qt)| per element: half its group's scale
    (plus float32 rounding)."""
    gs, _ = qt.spec.groups(qt.head_dim)
    half = 0.5 * qt.scale.float().repeat_interleave(gs, dim=-1)
    return half * (1 + 1e-5) + 1e-6 * half.amax(-1, keepdim=True).clamp_min(1.0)

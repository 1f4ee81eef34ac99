"""The quantized KV format: int8 (symmetric) and int4 (asymmetric) codes with float16 parameters
per token or per channel group, and how to read it back. Quantizing lives in
:mod:`sparsa.ops.kv_quant`; the decode ops read this format directly.

int8: ``x ≈ code * scale``, codes int8 in [-127, 127]. int4: ``x ≈ code * scale + zero``, codes
in [0, 15], two per byte: byte ``j`` holds channel ``j`` in its low nibble and channel
``j + head_dim/2`` in its high nibble.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

BITS = (4, 8)
PARAM_DTYPE = torch.float16


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

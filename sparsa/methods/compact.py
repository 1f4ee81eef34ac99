"""Building a method's compact decoder from a prompt: :func:`init_cache`."""
from __future__ import annotations

from typing import Any

import torch

from .._validation import check_qkv, check_scale
from ..backend import resolve_backend
from ..cache.varlen import check_lengths
from ..ops.kv_quant import QuantSpec
from .base import Method
from .decoder import LayerDecoder
from .registry import get_method, list_methods, method_class


def compacting_methods() -> list[str]:
    """Names of the registered methods that decode on a compact store (``compacts``)."""
    return [n for n in list_methods() if method_class(n).compacts]


def resolve_compacting(method: Any) -> Method:
    """``method`` (a :class:`Method`, its name, or None = dense) as a method that ``compacts``."""
    if method is None:
        method = "dense"
    if isinstance(method, str):
        method = get_method(method)
    if not isinstance(method, Method):
        raise TypeError(f"method: expected a decode method ({', '.join(compacting_methods())}), a name or None, "
                        f"got {type(method).__name__}")
    if not method.compacts:
        raise TypeError(f"method: {method.name} has no compact decoder; methods with one: "
                        f"{', '.join(compacting_methods())}")
    return method


def init_cache(method: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, lengths: Any = None,
               quant: QuantSpec | str | None = None, reserve: int | None = None, scale: float | None = None,
               backend: str | None = None, **options: Any) -> LayerDecoder:
    """Build the compact store a decode method needs from the prompt, and its decoder.

    method: a method whose ``compacts`` is True (or its name; None / "dense" = keep
    everything). q (B, H, Lq, D): the prompt's last Lq queries (H2O accumulates their attention,
    SnapKV scores with its window); k, v (B, Hkv, L, D) with RoPE applied. ``lengths`` (B,):
    real tokens of each right-padded sequence; then q must hold all L positions and every
    sequence is planned on its own tokens. ``quant``: None, "int8", "int4" or a
    :class:`QuantSpec` (keys and values stored as codes; selection at prefill uses the original
    keys, later scores the dequantized ones). ``reserve``: free tokens per head before the
    store grows. ``backend``: as for the ops. ``options``: the method's own decoder settings,
    e.g. Quest's ``page_size`` (must equal the method's) and ``bounds`` ("native" or "int8",
    overriding the method's); None values are ignored. See
    :meth:`~sparsa.methods.base.Method.make_decoder`.
    """
    check_qkv(q, k, v)
    resolve_backend(backend, q.device)
    m = resolve_compacting(method)
    b, _, lq, d = q.shape
    L = k.shape[2]
    seq = check_lengths(lengths, b, L, k.device)
    ragged = lengths is not None and bool((seq != L).any())
    if ragged and lq != L:
        raise ValueError(f"q: with per-sequence lengths, q must hold all {L} prompt positions (got {lq}), "
                         "so that each sequence is planned on its own tokens")
    return m.make_decoder(q, k, v, lengths=seq if ragged else None, scale=check_scale(scale, d),
                          quant=QuantSpec.parse(quant), backend=backend, reserve=reserve,
                          **{key: val for key, val in options.items() if val is not None})


__all__ = ["compacting_methods", "init_cache", "resolve_compacting"]

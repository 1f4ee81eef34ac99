"""The one-call functional API."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ._validation import check_compression, check_tensor
from ._validation import check_finite as _check_finite
from .methods.base import AttentionStats, Method
from .methods.registry import get_method


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    method: str | Method = "dense",
    *,
    compression: float | None = None,
    return_stats: bool = False,
    scale: float | None = None,
    backend: str | None = None,
    check_finite: bool = True,
    **params: Any,
) -> torch.Tensor | tuple[torch.Tensor, AttentionStats]:
    """Causal sparse attention in SDPA layout.

    Args:
        q: (batch, heads, q_len, head_dim) queries, the last ``q_len`` positions of the sequence.
        k, v: (batch, kv_heads, kv_len, head_dim); ``heads`` must be a multiple of ``kv_heads``.
        method: a registered name (see :func:`sparsa.list_methods`) or a method object.
        compression: target compression (>= 1; 1 = dense-equivalent). Explicit
            hyper-parameters in ``params`` override it.
        return_stats: also return an :class:`AttentionStats` whose ``.compression`` is the
            compression actually achieved.
        scale: softmax scale, default ``head_dim ** -0.5``.
        backend: "auto" (default), "reference" or "triton".
        check_finite: check that q, k and v hold no NaN or infinity (default). One reduction
            per input and one device sync per call; pass False in a hot loop whose inputs are
            known to be finite.
        **params: the method's hyper-parameters (e.g. ``vertical=1000, slash=6096``).

    Returns:
        The output, shape and dtype of ``q`` (and the stats if asked).

    Raises:
        ValueError: naming ``q``, ``k`` or ``v`` when it holds a NaN or an infinity, for every
            method and backend. Sparse methods choose keys by their scores, and a NaN score
            would silently change which keys are read (some methods would return zeros, others
            NaN), so non-finite inputs are rejected here rather than given per-method meanings.
            The check runs at this entry only: method objects called directly, ``decode_step``
            and the transformers integration (:func:`sparsa.apply`) do not check, so a decode
            step costs no device sync; their output for non-finite inputs is unspecified.
    """
    compression = check_compression(compression)
    if check_finite:
        for name, x in (("q", q), ("k", k), ("v", v)):
            check_tensor(name, x)
        _check_finite(q=q, k=k, v=v)
    if isinstance(method, Method):
        if params:
            raise TypeError(f"{next(iter(params))}: pass hyper-parameters to the method object, "
                            "not to attention(), when `method` is an object")
        m = dataclasses.replace(method, compression=compression) if compression is not None else method
    else:
        if compression is not None:
            params["compression"] = compression
        m = get_method(method, **params)
    out, stats = m(q, k, v, scale=scale, backend=backend)
    return (out, stats) if return_stats else out

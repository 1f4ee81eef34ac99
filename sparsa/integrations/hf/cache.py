"""The KV cache that carries sparsa's per-layer decode state.

:class:`SparsaCache` is transformers' ``DynamicCache`` (it stores every token; the eviction
decided by H2O / SnapKV / Ada-SnapKV / Streaming lives in the method state as the positions a
step may read) plus, per layer, the state a :class:`~sparsa.DecodeMethod` built from the prompt.

The attention function does not receive the cache, so :meth:`SparsaCache.update` records which
cache and layer produced the key tensor it returns; the attention function, called next with
that very tensor, looks the cache up by identity (:func:`cache_for`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from . import compat

_DynamicCache = compat.dynamic_cache_class()


@dataclass
class LayerState:
    """Decode state of one layer.

    ``batched`` is the method's state for the whole batch (no padding); otherwise ``rows``
    holds one state per batch row, built on that row's real tokens. ``padding`` (B, S) bool
    marks the real tokens of the cached sequence (None = all real); ``length`` is S.
    """

    method: str
    length: int
    batched: Any = None
    rows: list[Any] | None = None
    padding: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


class _Last(threading.local):
    cache: Any = None
    layer: int = -1
    keys: torch.Tensor | None = None


_LAST = _Last()


def cache_for(layer: int, keys: torch.Tensor) -> "SparsaCache | None":
    """The :class:`SparsaCache` whose ``update`` just returned ``keys`` for ``layer``, if any.

    The record is consumed, so no reference to the cache or the keys outlives the call.
    """
    cache = _LAST.cache if _LAST.layer == layer and _LAST.keys is keys else None
    _LAST.cache, _LAST.layer, _LAST.keys = None, -1, None
    return cache


class SparsaCache(_DynamicCache):
    """``DynamicCache`` with per-layer sparsa decode state (``sparsa_states``).

    Create it with the model's config (``SparsaCache(model.config)``) so that sliding-window
    layers keep only their window, as transformers' default cache does. :func:`sparsa.apply`
    makes ``generate()`` and ``model(...)`` use one automatically when no cache is passed.

    Beam search (``reorder_cache``) is not supported once a decode state exists; ``crop`` (used
    by assisted decoding) drops the states, which the next multi-token call rebuilds.
    """

    def __init__(self, config: Any | None = None, **kwargs: Any) -> None:
        if kwargs:
            _DynamicCache.__init__(self, config=config, **kwargs)
        else:
            compat.init_dynamic_cache(self, config)
        self.sparsa_states: dict[int, LayerState] = {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        _LAST.cache, _LAST.layer, _LAST.keys = self, layer_idx, keys
        return keys, values

    def reset(self) -> None:
        super().reset()
        self.sparsa_states.clear()

    def crop(self, *args: Any, **kwargs: Any) -> None:
        super().crop(*args, **kwargs)
        self.sparsa_states.clear()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.sparsa_states:
            names = sorted({s.method for s in self.sparsa_states.values()})
            raise NotImplementedError(f"beam search is not supported with sparsa decode methods ({', '.join(names)}): "
                                      "their per-sequence state cannot be reordered; use num_beams=1")
        super().reorder_cache(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.sparsa_states:
            raise NotImplementedError("selecting batch rows of a SparsaCache with decode state is not supported")
        super().batch_select_indices(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.sparsa_states:
            raise NotImplementedError("repeating batch rows of a SparsaCache with decode state is not supported")
        super().batch_repeat_interleave(repeats)

"""The KV cache that holds what sparsa's decode methods keep.

:class:`SparsaCache` is transformers' ``DynamicCache`` with, per layer, the state of the
layer's :class:`~sparsa.DecodeMethod`:

* **compact layers** (methods whose ``compacts`` is True: H2O, SnapKV, Ada-SnapKV,
  StreamingLLM, Quest): after the prompt, the layer's keys and values move into the store the
  method's decoder reads (built by :func:`sparsa.methods.init_cache`): a per-KV-head
  variable-length store holding only the kept tokens for the evicting methods, a paged store
  with per-page key bounds for Quest. The
  layer's full keys and values are then released, so evicted tokens no longer take memory.
  Each decode step appends the new token to that store and runs the method's step on it
  (Triton kernels on CUDA, the reference ops on the CPU); ``update`` hands the attention
  function only the new token;
* **other stateful layers** (NSA) keep their state next to the full keys and values;
* **layers without a decode method** are plain ``DynamicCache`` layers.

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

    ``length`` is the layer's sequence length as ``DynamicCache`` counts it (padding included).

    Compact layers (see the module docstring): ``decoder`` is the
    :class:`~sparsa.methods.LayerDecoder` of the whole batch (each sequence packed onto its real
    tokens), or ``row_decoders`` one per batch row (None for a row without a real token in the
    last prompt call); until the first decode step builds them, ``pending`` holds what the
    build needs (the last prompt call's queries, padding and scale) and the full keys and values
    stay in the cache. ``released``: the layer's full keys and values have been freed.
    ``store``: the layout of the method's store (its ``decode_store``: "varlen", "paged").

    Other stateful layers: ``batched`` is the method's state for the whole batch (no padding);
    otherwise ``rows`` holds one state per batch row, built on that row's real tokens;
    ``padding`` (B, S) bool marks the real tokens of the cached sequence (None = all real).
    """

    method: str
    length: int
    batched: Any = None
    rows: list[Any] | None = None
    padding: torch.Tensor | None = None
    decoder: Any = None
    row_decoders: list[Any] | None = None
    pending: tuple[torch.Tensor, torch.Tensor | None, float] | None = None
    released: bool = False
    store: str = "varlen"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def compact(self) -> bool:
        return self.decoder is not None or self.row_decoders is not None or self.pending is not None

    def decoders(self) -> list[Any]:
        """The compact decoders of this layer (empty while pending or for other layers)."""
        if self.decoder is not None:
            return [self.decoder]
        return [d for d in self.row_decoders or [] if d is not None]


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


def _nbytes(x: torch.Tensor | None) -> int:
    return 0 if x is None else x.numel() * x.element_size()


class SparsaCache(_DynamicCache):
    """``DynamicCache`` whose decode-method layers hold only what the method keeps (``sparsa_states``).

    Create it with the model's config (``SparsaCache(model.config)``) so that sliding-window
    layers keep only their window, as transformers' default cache does. :func:`sparsa.apply`
    makes ``generate()`` and ``model(...)`` use one automatically when no cache is passed
    (``handle.new_cache()`` builds one explicitly).

    A compact layer's store is built at the end of the prompt call and the layer's full keys
    and values are freed at once. A prompt run in several calls (chunked prefill) needs them
    for the next chunk: with ``defer_release=True`` (what :func:`chunked_prefill` and
    ``apply(prefill_chunk=...)`` use) the store is built, and the full keys and values freed,
    at the first decode step instead. Without it, a multi-token call after a compact layer's
    release raises ``RuntimeError``.

    Memory: :meth:`layer_nbytes` / :meth:`nbytes` report the bytes held, :meth:`layer_tokens`
    the tokens each KV head holds, :meth:`storage` the layout of a layer.

    Beam search (``reorder_cache``) and batch re-selection are not supported once a decode
    state exists. ``crop`` (used by assisted decoding) drops the states of layers that still
    hold their full keys and values (the next multi-token call rebuilds them) and raises for
    compact layers that released them.
    """

    def __init__(self, config: Any | None = None, *, defer_release: bool = False, **kwargs: Any) -> None:
        if kwargs:
            _DynamicCache.__init__(self, config=config, **kwargs)
        else:
            compat.init_dynamic_cache(self, config)
        self.sparsa_states: dict[int, LayerState] = {}
        self.defer_release = bool(defer_release)

    # -- transformers' interface ---------------------------------------------------------------------

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.sparsa_states.get(layer_idx)
        if state is not None and state.compact:
            if key_states.shape[-2] == 1:
                # a decode step: the attention function appends the token to the compact store
                state.length += 1
                _LAST.cache, _LAST.layer, _LAST.keys = self, layer_idx, key_states
                return key_states, value_states
            if state.released:
                raise RuntimeError(
                    f"layer {layer_idx}: {key_states.shape[-2]} new tokens after the prompt, but this layer's cache "
                    f"already holds only what {state.method} kept. Run the whole prompt in one call before decoding, "
                    "or run it in chunks with sparsa.integrations.hf.chunked_prefill / apply(prefill_chunk=...) "
                    "(or a cache made with handle.new_cache(defer_release=True)); speculative or assisted "
                    "decoding is not supported with compact decode caches")
            del self.sparsa_states[layer_idx]   # another prompt chunk: the state is rebuilt after it
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        _LAST.cache, _LAST.layer, _LAST.keys = self, layer_idx, keys
        return keys, values

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        idx = 0 if layer_idx is None else layer_idx
        state = self.sparsa_states.get(idx)
        if state is not None and state.compact:
            return state.length
        return super().get_seq_length(layer_idx)

    def get_mask_sizes(self, query: Any, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[int, int]:
        state = self.sparsa_states.get(layer_idx)
        if state is not None and state.compact:
            # 5.x passes the query length, 4.x the cache positions
            q_len = query if isinstance(query, int) else int(query.shape[0])
            return state.length + q_len, 0
        return super().get_mask_sizes(query, layer_idx, *args, **kwargs)

    def reset(self) -> None:
        super().reset()
        self.sparsa_states.clear()

    def crop(self, max_length: int, *args: Any, **kwargs: Any) -> None:
        released = [i for i, s in self.sparsa_states.items() if s.released]
        if released:
            removed = compat.crop_removes(self.sparsa_states[released[0]].length, max_length)
            if removed:
                raise NotImplementedError(
                    f"crop: layers {released} hold only what their decode method kept, so tokens cannot be "
                    "removed from them (assisted decoding and other rollbacks are not supported with compact "
                    "decode caches)")
            super().crop(max_length, *args, **kwargs)
            return
        super().crop(max_length, *args, **kwargs)
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

    # -- compact layers -----------------------------------------------------------------------------

    def release(self, layer_idx: int) -> None:
        """Free the full keys and values of a compact layer (its store now holds what decoding reads)."""
        state = self.sparsa_states.get(layer_idx)
        if state is None or (state.decoder is None and state.row_decoders is None):
            raise ValueError(f"layer_idx: layer {layer_idx} has no built compact store to decode from")
        compat.release_layer_kv(self, layer_idx)
        state.released = True

    # -- accounting ---------------------------------------------------------------------------------

    def storage(self, layer_idx: int) -> str:
        """How the layer stores its keys and values: "varlen" (per-head variable length, the
        evicting methods), "paged" (Quest), "pending" (compact store built at the first decode
        step) or "dense" (full keys and values); a compact layer's is its decoders' ``storage``."""
        state = self.sparsa_states.get(layer_idx)
        if state is None or not state.compact:
            return "dense"
        if state.pending is not None:
            return "pending"
        decs = state.decoders()
        return decs[0].storage if decs else state.store     # no row has a store

    def layer_nbytes(self, layer_idx: int) -> int:
        """Bytes the cache holds for one layer on its device: the compact store (keys, values,
        free rows or pages kept for growth, positions, scores, page bounds and tables) plus any
        full keys and values still held."""
        self._check_layer(layer_idx)
        keys, values = compat.layer_kv(self, layer_idx)
        n = _nbytes(keys) + _nbytes(values)
        state = self.sparsa_states.get(layer_idx)
        if state is not None:
            n += sum(int(d.nbytes()) for d in state.decoders())
        return n

    def nbytes(self) -> int:
        """Bytes held over all layers (see :meth:`layer_nbytes`)."""
        return sum(self.layer_nbytes(i) for i in range(self._num_layers()))

    def layer_tokens(self, layer_idx: int) -> torch.Tensor:
        """(B, Hkv) int64 on the CPU: the tokens each KV head of each sequence holds.

        Compact layers count each sequence's real tokens only (padding is never stored); dense
        layers hold the padded width for every head.
        """
        self._check_layer(layer_idx)
        state = self.sparsa_states.get(layer_idx)
        if state is not None and state.decoders():
            return torch.cat([dec.tokens() for dec in state.decoders()], 0)
        keys, _ = compat.layer_kv(self, layer_idx)
        if keys is None or keys.ndim != 4:
            return torch.zeros(0, 0, dtype=torch.int64)
        return torch.full(tuple(keys.shape[:2]), keys.shape[2], dtype=torch.int64)

    def _check_layer(self, layer_idx: object) -> None:
        """IndexError (TypeError for a non-int) naming ``layer_idx`` unless it is one of the cache's layers."""
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, int):
            raise TypeError(f"layer_idx: expected an int, got {type(layer_idx).__name__}")
        n = self._num_layers()
        if not 0 <= layer_idx < n:
            raise IndexError(f"layer_idx: {layer_idx} is not a layer of this cache, which holds layers 0..{n - 1}"
                             if n else f"layer_idx: {layer_idx}: the cache holds no layers yet (run the prompt first)")

    def _num_layers(self) -> int:
        layers = self.__dict__.get("layers")
        n = len(layers) if isinstance(layers, list) else len(getattr(self, "key_cache", []))
        return max([n] + [i + 1 for i in self.sparsa_states])

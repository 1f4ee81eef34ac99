"""KV caches that actually save memory: storage only (which tokens they hold is the caller's choice).

* :class:`VarlenKVCache`: per-KV-head variable-length storage (heads may keep different
  numbers of tokens); logical RoPE positions kept per token, optional accumulated scores, and
  one-token-per-head eviction by score or by window.
* :class:`PagedKVCache`: fixed-size pages plus a page table, with per-page per-channel key
  min/max maintained on append.
* Either stores keys and values as bf16/fp16 or as int8/int4 codes (:class:`QuantSpec`).

The decode methods build their per-layer decoders on these stores
(:func:`sparsa.methods.init_cache`).
"""
from ..ops.kv_quant import QuantizedTensor, QuantSpec
from .paged import PagedKVCache
from .varlen import VarlenKVCache, dense_cache_bytes

__all__ = ["PagedKVCache", "QuantSpec", "QuantizedTensor", "VarlenKVCache", "dense_cache_bytes"]

"""KV caches that actually save memory, and the glue that runs decode methods on them.

* :class:`VarlenKVCache`: per-KV-head variable-length storage for the evicting methods (H2O,
  SnapKV, Ada-SnapKV, StreamingLLM); logical RoPE positions kept per token.
* :class:`PagedKVCache`: fixed-size pages plus a page table, with per-page per-channel key
  min/max maintained on append (Quest reads it natively).
* Either stores keys and values as bf16/fp16 or as int8/int4 codes (:class:`QuantSpec`).
* :func:`init_cache` builds the cache a method needs from the prompt and returns a decoder
  whose :meth:`~CacheDecoder.step` runs one decode step and reports what it read.
"""
from ..ops.kv_quant import QuantizedTensor, QuantSpec
from .adapters import CacheDecoder, StepStats, init_cache
from .paged import PagedKVCache
from .varlen import VarlenKVCache, dense_cache_bytes

__all__ = ["CacheDecoder", "PagedKVCache", "QuantSpec", "QuantizedTensor", "StepStats", "VarlenKVCache",
           "dense_cache_bytes", "init_cache"]

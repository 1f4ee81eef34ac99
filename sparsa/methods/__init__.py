"""Sparse attention methods, one file each, registered by name."""
from .base import AttentionStats, CompressionNotReached, DecodeMethod, Method
from .decoder import LayerDecoder, StepStats
from .registry import get_method, list_methods, method_class, register

# Importing a module registers its method; the order here is the order of list_methods().
from . import dense, sliding_window, bigbird, streaming, vertical_slash, block_sparse, flexprefill, h2o, snapkv, ada_snapkv, quest, nsa  # noqa: E402,F401
from .compact import init_cache  # noqa: E402

__all__ = ["AttentionStats", "CompressionNotReached", "DecodeMethod", "LayerDecoder", "Method", "StepStats",
           "get_method", "init_cache", "list_methods", "method_class", "register"]

"""Sparse attention methods, one file each, registered by name."""
from .base import AttentionStats, CompressionNotReached, DecodeMethod, Method
from .registry import get_method, list_methods, method_class, register

# Importing a module registers its method; the order here is the order of list_methods().
from . import dense, sliding_window, bigbird, streaming, vertical_slash, block_sparse, flexprefill, h2o, snapkv, ada_snapkv, quest, nsa  # noqa: E402,F401

__all__ = ["AttentionStats", "CompressionNotReached", "DecodeMethod", "Method", "get_method", "list_methods",
           "method_class", "register"]

"""Trainable attention modules."""
from .nsa import BlockCompressor, NativeSparseAttention, NSACache
from .rope import apply_rope, rope_cos_sin

__all__ = ["BlockCompressor", "NSACache", "NativeSparseAttention", "apply_rope", "rope_cos_sin"]

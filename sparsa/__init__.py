"""sparsa: sparse attention for long-context LLMs."""
from typing import Any

from .api import attention
from . import nn
from .methods import AttentionStats, CompressionNotReached, DecodeMethod, Method, get_method, list_methods, register
from .methods.ada_snapkv import AdaSnapKV
from .methods.bigbird import BigBird
from .methods.block_sparse import BlockSparse
from .methods.dense import Dense
from .methods.flexprefill import FlexPrefill
from .methods.h2o import H2O
from .methods.nsa import NSA
from .methods.per_head import PerHead
from .methods.quest import Quest
from .methods.sliding_window import SlidingWindow
from .methods.snapkv import SnapKV
from .methods.streaming import Streaming
from .methods.vertical_slash import VerticalSlash
from .patterns import load_head_patterns

__version__ = "0.1.0"


def apply(model: Any, prefill: Any = None, *args: Any, **kwargs: Any) -> Any:
    """Run a transformers model's attention through sparsa methods; returns an undo handle.

    ``sparsa.apply(model, prefill="vertical_slash", decode="quest")``. transformers is imported
    on the first call only. Full documentation: :func:`sparsa.integrations.hf.apply`.
    """
    from .integrations.hf import apply as _apply
    return _apply(model, prefill, *args, **kwargs)


__all__ = ["AdaSnapKV", "AttentionStats", "BigBird", "BlockSparse", "CompressionNotReached", "DecodeMethod", "Dense",
           "FlexPrefill", "H2O", "Method", "NSA", "PerHead", "Quest", "SlidingWindow", "SnapKV", "Streaming", "VerticalSlash", "__version__", "apply",
           "attention", "get_method", "list_methods", "load_head_patterns", "register"]
